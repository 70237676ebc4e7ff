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
    """What a valid token says: whose it is, when it was issued and when it expires (whole
    seconds since the epoch; it is valid while the time is before ``expires_at``)."""

    username: str
    issued_at: int
    expires_at: int

    def predates(self, created_at: dt.datetime) -> bool:
        """Whether the token was issued before an account of this name was created (then it was
        another account's, since deleted). Whole seconds, because that is all ``iat`` holds."""
        return self.issued_at < int(created_at.timestamp())


class Tokens:
    """HS256 tokens naming a user, signed with the server secret, expiring after ``ttl_s``."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, username: str, now: dt.datetime | None = None) -> str:
        issued = now or timefmt.now()
        claims = {
            "sub": username,
            "iat": int(issued.timestamp()),
            "exp": int(issued.timestamp()) + self.ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify(self, token: str) -> Claims:
        """The claims of a valid token; raises Unauthenticated otherwise."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                options={"require": ["sub", "exp", "iat"]},
            )
        except jwt.PyJWTError:
            raise Unauthenticated() from None
        subject, issued, expires = claims.get("sub"), claims.get("iat"), claims.get("exp")
        if not isinstance(subject, str) or not subject or not isinstance(issued, int) or not isinstance(expires, int):
            raise Unauthenticated()
        return Claims(subject, issued, expires)


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


def new_password() -> str:
    """A random password for a generated account."""
    return secrets.token_urlsafe(18)
