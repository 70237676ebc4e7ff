"""Who someone is: password hashes, signed tokens, the signing secret (what they may do: ``tracker.roles``).

Errors: ``Unauthenticated`` (no, bad or expired credentials). No message ever carries a secret.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import tempfile
import uuid
from typing import Any, NamedTuple

import argon2
import jwt

from tracker import timefmt
from tracker.errors import Unauthenticated

MIN_SECRET_BYTES = 32
_ALGORITHM = "HS256"


class Passwords:
    """Memory-hard (argon2id) password hashes; verification costs the same for unknown users."""

    def __init__(self, hasher: argon2.PasswordHasher | None = None) -> None:
        self._hasher = hasher or argon2.PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; with no stored hash, do the same work and say no."""
        try:
            return self._hasher.verify(stored_hash or self._dummy, password) and stored_hash is not None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False


class Claims(NamedTuple):
    """What a valid token says: whose it is (the user's name, and the account's id, which a later
    account of the same name does not share), when it was issued and when it expires (whole
    seconds since the epoch; it is valid while the time is before ``expires_at``), and its own id
    (``jti``, by which a logout ends it)."""

    username: str
    issued_at: int
    expires_at: int
    token_id: str
    account_id: str


class Tokens:
    """HS256 tokens naming a user, signed with the server secret, expiring after ``ttl_s``."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, username: str, account_id: str, now: dt.datetime | None = None) -> str:
        """A token for the account ``account_id``, named ``username``, valid for ``ttl_s`` from ``now``."""
        issued = now or timefmt.now()
        claims = {
            "sub": username,
            "acct": account_id,
            "iat": int(issued.timestamp()),
            "exp": int(issued.timestamp()) + self.ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify(self, token: str) -> Claims:
        """The claims of a valid token; raises Unauthenticated otherwise (a token of before the
        accounts' ids, without ``acct``, included)."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                options={"require": ["sub", "acct", "exp", "iat", "jti"]},
            )
        except jwt.PyJWTError:
            raise Unauthenticated() from None
        issued, expires = claims.get("iat"), claims.get("exp")
        if not isinstance(issued, int) or not isinstance(expires, int):
            raise Unauthenticated()
        return Claims(_text(claims, "sub"), issued, expires, _text(claims, "jti"), _text(claims, "acct"))


def _text(claims: dict[str, Any], name: str) -> str:
    """The claim ``name``, a non-empty string; raises Unauthenticated otherwise."""
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise Unauthenticated()
    return value


def load_secret(secret: str | None, secret_file: str) -> str:
    """The signing secret: the configured one, else the local file's, created on first use.

    The file (mode 0600) appears whole or not at all: it is written aside and hard-linked into
    place, so processes starting together agree on one secret.
    """
    if secret:
        return secret
    if not os.path.exists(secret_file):
        directory = os.path.dirname(os.path.abspath(secret_file))
        fd, aside = tempfile.mkstemp(dir=directory, prefix=".tracker_secret.")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_urlsafe(48) + "\n")
            os.link(aside, secret_file)
        except FileExistsError:
            pass
        finally:
            os.unlink(aside)
    with open(secret_file, encoding="ascii") as handle:
        stored = handle.read().strip()
    if len(stored) < MIN_SECRET_BYTES:
        raise ValueError(f"{secret_file} holds no usable secret; delete it or set TRACKER_SECRET")
    return stored


def new_account_id() -> str:
    """A random id for a new account, which no other account, of any name, will have."""
    return secrets.token_hex(16)


def new_password() -> str:
    """A random password for a generated account."""
    return secrets.token_urlsafe(18)
