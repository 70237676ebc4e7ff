"""Verified tokens are remembered by digest until they expire, and nothing invalid is remembered."""

from __future__ import annotations

import datetime as dt
import hashlib

import jwt
import pytest

from api.middleware import VerifiedTokens
from tracker import auth, timefmt

SECRET = "s" * 40


class CountingTokens(auth.Tokens):
    def __init__(self) -> None:
        super().__init__(SECRET, ttl_s=60)
        self.verified = 0

    def verify(self, token: str) -> auth.Claims:
        self.verified += 1
        return super().verify(token)


class WallClock:
    def __init__(self) -> None:
        self.now = timefmt.now().timestamp()

    def __call__(self) -> float:
        return self.now


def test_a_valid_token_is_verified_once_and_refused_from_its_expiry_on() -> None:
    tokens, clock = CountingTokens(), WallClock()
    base = int(clock.now)
    issued = dt.datetime.fromtimestamp(base, dt.UTC)
    token = tokens.issue("ops", "account-1", now=issued)
    cache = VerifiedTokens(tokens, clock)
    for _ in range(5):
        assert cache.verify(token).username == "ops"
    clock.now = base + 59.999
    assert cache.verify(token).username == "ops"
    assert tokens.verified == 1
    clock.now = base + 60  # exp itself: PyJWT refuses it too
    with pytest.raises(auth.Unauthenticated):
        cache.verify(token)


def test_an_expired_token_is_refused_even_if_it_was_remembered() -> None:
    tokens = CountingTokens()
    token = tokens.issue("ops", "account-1", now=timefmt.now() - dt.timedelta(seconds=59))
    clock = WallClock()
    cache = VerifiedTokens(tokens, clock)
    cache.verify(token)
    clock.now += 2
    with pytest.raises(auth.Unauthenticated):
        cache.verify(token)


def test_invalid_tokens_are_never_remembered() -> None:
    tokens = CountingTokens()
    cache = VerifiedTokens(tokens)
    forged = auth.Tokens("another secret of enough length, really", 60).issue("admin", "account-1")
    for _ in range(3):
        with pytest.raises(auth.Unauthenticated):
            cache.verify(forged)
    assert tokens.verified == 3


def test_tokens_are_kept_only_as_digests_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(VerifiedTokens, "_MAX_ENTRIES", 3)
    tokens = CountingTokens()
    cache = VerifiedTokens(tokens)
    issued = [tokens.issue(f"user{n}", f"account-{n}") for n in range(5)]
    for token in issued:
        cache.verify(token)
    kept = cache._entries  # noqa: SLF001
    assert len(kept) == 3
    assert set(kept) == {hashlib.sha256(token.encode()).digest() for token in issued[2:]}
    assert not any(token.encode() in key for key in kept for token in issued)


def test_a_remembered_token_costs_no_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the cache saves: the HMAC check of every request after the first (counted, not timed)."""
    tokens = auth.Tokens(SECRET, 60)
    token = tokens.issue("ops", "account-1")
    decoded = []
    decode = jwt.decode

    def counting_decode(*args: object, **kwargs: object) -> object:
        decoded.append(args[0])
        return decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    cache = VerifiedTokens(tokens)
    for _ in range(100):
        assert cache.verify(token).username == "ops"
    assert decoded == [token]
    tokens.verify(token)  # the uncached path does check, so the counter sees what it should
    assert decoded == [token, token]
