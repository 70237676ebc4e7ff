"""API users in the database, the tokens logouts ended, and the login throttle that slows password guessing."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from tracker import auth, roles, timefmt
from tracker.config import Settings
from tracker.errors import InvalidUser, UserExists
from tracker.store.engine import unavailable_as_error
from tracker.store.tables import login_failures, revoked_tokens, users

# The PostgreSQL channel a revocation is announced on, in the transaction that records it, as
# "<token id> <expiry in seconds since the epoch>" (the API processes listen: api/revocations.py).
REVOCATION_CHANNEL = "tracker_token_revoked"


@dataclasses.dataclass(frozen=True)
class User:
    username: str
    role: str
    created_at: dt.datetime
    account_id: str  # random and never changed: what tokens name (tracker.auth.Claims)


_COLUMNS = (users.c.username, users.c.role, users.c.created_at, users.c.account_id)


class UserStore:
    """Users, their roles and password hashes."""

    def __init__(self, engine: Engine, passwords: auth.Passwords | None = None) -> None:
        self._engine = engine
        self._passwords = passwords or auth.Passwords()

    def add(self, username: str, role: str, password: str) -> User:
        """Create a user; raises InvalidUser or UserExists."""
        if not username or len(username) > 128 or username != username.strip():
            raise InvalidUser("a username is 1 to 128 characters with no surrounding spaces")
        if role not in roles.ROLES:
            raise InvalidUser(f"role must be one of {', '.join(sorted(roles.ROLES))}")
        if not password:
            raise InvalidUser("the password must not be empty")
        user = User(username, role, timefmt.now(), auth.new_account_id())
        values = dataclasses.asdict(user) | {"password_hash": self._passwords.hash(password)}
        try:
            with unavailable_as_error(), self._engine.begin() as conn:
                conn.execute(sa.insert(users).values(values))
        except sa.exc.IntegrityError:
            raise UserExists(username) from None
        return user

    def remove(self, username: str) -> bool:
        """Delete a user; whether there was one. Their tokens stop working within the API's cache time."""
        with unavailable_as_error(), self._engine.begin() as conn:
            return conn.execute(sa.delete(users).where(users.c.username == username)).rowcount > 0

    def list(self) -> list[User]:
        with unavailable_as_error(), self._engine.connect() as conn:
            rows = conn.execute(sa.select(*_COLUMNS).order_by(users.c.username)).all()
        return [User(*row) for row in rows]

    def get(self, username: str) -> User | None:
        with unavailable_as_error(), self._engine.connect() as conn:
            row = conn.execute(sa.select(*_COLUMNS).where(users.c.username == username)).first()
        return User(*row) if row else None

    def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password is theirs; the same work is done when the user does not exist."""
        with unavailable_as_error(), self._engine.connect() as conn:
            row = conn.execute(sa.select(*_COLUMNS, users.c.password_hash).where(users.c.username == username)).first()
        ok = self._passwords.verify(row.password_hash if row else None, password)
        return User(*row[: len(_COLUMNS)]) if ok and row else None

    def ensure_first_admin(self) -> str | None:
        """With no users at all, create ``admin`` with a random password and return that password."""
        with unavailable_as_error(), self._engine.connect() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one():
                return None
        password = auth.new_password()
        try:
            self.add("admin", "admin", password)
        except UserExists:
            return None  # another process got there first
        return password


class Revocation(NamedTuple):
    """A token a logout ended: its ``jti``, until when it would have been valid (seconds since the
    epoch, as its ``exp``), and its place in the order revocations committed in."""

    seq: int
    token_id: str
    expires_at: int


class TokenRevocations:
    """The tokens logouts ended, until they expire, in the database that every API process reads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgresql = engine.dialect.name == "postgresql"
        insert = postgresql.insert if self._postgresql else sqlite.insert
        self._insert = insert(revoked_tokens).on_conflict_do_nothing(index_elements=[revoked_tokens.c.token_id])

    def revoke(self, token_id: str, expires_at: int, now: dt.datetime | None = None) -> None:
        """Record that the token ``token_id``, valid until ``expires_at``, is ended; on PostgreSQL
        announce it on REVOCATION_CHANNEL in the same transaction. Revocations that have expired
        are deleted meanwhile. Revoking twice is harmless. Raises StoreUnavailable."""
        now = now or timefmt.now()
        with unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(immediate=True)  # SQLite: the write lock first, so seq follows commits
            with conn.begin():
                if self._postgresql:
                    # Revoking transactions one at a time (readers are not held up), so that seq,
                    # drawn after the lock, follows the order they commit in.
                    conn.exec_driver_sql(f"LOCK TABLE {revoked_tokens.name} IN SHARE ROW EXCLUSIVE MODE")
                conn.execute(sa.delete(revoked_tokens).where(revoked_tokens.c.expires_at <= now))
                expiry = dt.datetime.fromtimestamp(expires_at, timefmt.UTC)
                conn.execute(self._insert.values(token_id=token_id, expires_at=expiry))
                if self._postgresql:
                    conn.execute(sa.select(sa.func.pg_notify(REVOCATION_CHANNEL, f"{token_id} {expires_at}")))

    def since(self, seq: int, now: dt.datetime | None = None) -> list[Revocation]:
        """The revocations recorded after the one numbered ``seq`` (0: all), not yet expired, in
        the order they committed. Raises StoreUnavailable."""
        now = now or timefmt.now()
        with unavailable_as_error(), self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(revoked_tokens.c.seq, revoked_tokens.c.token_id, revoked_tokens.c.expires_at)
                .where(revoked_tokens.c.seq > seq, revoked_tokens.c.expires_at > now)
                .order_by(revoked_tokens.c.seq)
            ).all()
        return [Revocation(row.seq, row.token_id, int(row.expires_at.timestamp())) for row in rows]


@dataclasses.dataclass(frozen=True)
class LoginLimits:
    """How many failed logins are allowed, each within ``lockout_s``, before a lock of ``lockout_s``
    (0: no such limit), counted against what an attack targets:

    - ``per_user_at_address``: one user from one address (guessing one password from one place):
      the tight limit, which locks that user at that address only;
    - ``per_address``: any users from one address (credential stuffing): looser, since behind a
      proxy or a NAT one address is many people;
    - ``per_user``: one user from any addresses (guessing distributed over many).
    """

    per_user_at_address: int
    per_address: int
    per_user: int
    lockout_s: int

    @classmethod
    def of(cls, settings: Settings) -> LoginLimits:
        """The limits TRACKER_LOGIN_* set."""
        return cls(
            settings.login_max_failures,
            settings.login_max_failures_per_address,
            settings.login_max_failures_per_user,
            settings.login_lockout_s,
        )

    def subjects(self, username: str | None, address: str) -> list[tuple[str, int]]:
        """What an attempt for ``username`` (None: a name no user can have, counted against the
        address alone) from ``address`` counts against, each with its limit."""
        counted = [(f"client:{address}", self.per_address)]
        if username is not None:
            counted += [(_user_at(username, address), self.per_user_at_address), (f"user:{username}", self.per_user)]
        return [(subject, limit) for subject, limit in counted if limit > 0]


def _user_at(username: str, address: str) -> str:
    return f"pair:{address} {username}"  # an address holds no space: the two cannot be confused


class LoginThrottle:
    """Refuses logins for a while after repeated failures (``LoginLimits``).

    Kept in the database so every API process sees the same count.
    """

    def __init__(self, engine: Engine, limits: LoginLimits) -> None:
        self._engine = engine
        self._limits = limits
        self._lockout = dt.timedelta(seconds=limits.lockout_s)

    def locked_for(self, username: str | None, address: str, now: dt.datetime | None = None) -> float:
        """Seconds until the longest lock on what an attempt would count against ends; 0 when none is locked."""
        now = now or timefmt.now()
        subjects = [subject for subject, _ in self._limits.subjects(username, address)]
        with unavailable_as_error(), self._engine.connect() as conn:
            rows = (
                conn.execute(sa.select(login_failures.c.locked_until).where(login_failures.c.subject.in_(subjects)))
                .scalars()
                .all()
            )
        remaining = [(until - now).total_seconds() for until in rows if until is not None and until > now]
        return max(remaining, default=0.0)

    def failed(self, username: str | None, address: str, now: dt.datetime | None = None) -> None:
        """Count a failed login against what it targets; lock each that reaches its limit."""
        now = now or timefmt.now()
        with unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(immediate=True)
            with conn.begin():
                for subject, limit in self._limits.subjects(username, address):
                    row = conn.execute(
                        sa.select(login_failures).where(login_failures.c.subject == subject).with_for_update()
                    ).first()
                    still_locked = row is not None and row.locked_until is not None and row.locked_until > now
                    if row is None or (not still_locked and row.first_at + self._lockout < now):
                        conn.execute(sa.delete(login_failures).where(login_failures.c.subject == subject))
                        locked_at_once = now + self._lockout if limit <= 1 else None
                        conn.execute(
                            sa.insert(login_failures).values(
                                subject=subject, failures=1, first_at=now, locked_until=locked_at_once
                            )
                        )
                        continue
                    failures = row.failures + 1
                    locked = now + self._lockout if failures >= limit else row.locked_until
                    conn.execute(
                        sa.update(login_failures)
                        .where(login_failures.c.subject == subject)
                        .values(failures=failures, locked_until=locked)
                    )

    def succeeded(self, username: str, address: str) -> None:
        """A login succeeded: that user's failures at that address are forgotten, not those
        counted against the user from anywhere or against the address (else the user's own
        login would give a distributed guesser, or one behind the same proxy, a fresh start)."""
        with unavailable_as_error(), self._engine.begin() as conn:
            conn.execute(sa.delete(login_failures).where(login_failures.c.subject == _user_at(username, address)))
