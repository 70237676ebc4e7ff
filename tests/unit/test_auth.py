"""Tokens, password hashes and the signing secret: what is accepted and what is refused."""

from __future__ import annotations

import datetime as dt
import os
import threading

import argon2
import jwt
import pytest

from tracker import auth, roles

SECRET = "s" * 40
FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def test_a_token_names_its_user_until_it_expires():
    tokens = auth.Tokens(SECRET, ttl_s=60)
    claims = tokens.verify(tokens.issue("ops", "account-1"))
    assert (claims.username, claims.account_id) == ("ops", "account-1")
    assert abs(claims.issued_at - dt.datetime.now().timestamp()) < 5 and claims.expires_at == claims.issued_at + 60
    assert len(claims.token_id) == 32 and claims.token_id != tokens.verify(tokens.issue("ops", "account-1")).token_id
    old = tokens.issue("ops", "account-1", now=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=61))
    with pytest.raises(auth.Unauthenticated):
        tokens.verify(old)


@pytest.mark.parametrize(
    "forge",
    [
        lambda: jwt.encode({"sub": "admin", "iat": 0, "exp": 2**40}, "another key of enough length!!!!!", "HS256"),
        lambda: jwt.encode({"sub": "admin", "iat": 0, "exp": 2**40}, None, "none"),
        lambda: jwt.encode({"sub": "admin", "acct": "a", "jti": "j", "iat": 0}, SECRET, "HS256"),  # no expiry
        lambda: jwt.encode({"sub": "", "acct": "a", "jti": "j", "iat": 0, "exp": 2**40}, SECRET, "HS256"),
        # Tokens of before the accounts' ids (issue 24, point 4): no account, so refused.
        lambda: jwt.encode({"sub": "admin", "jti": "j", "iat": 0, "exp": 2**40}, SECRET, "HS256"),
        lambda: jwt.encode({"sub": "admin", "acct": "", "jti": "j", "iat": 0, "exp": 2**40}, SECRET, "HS256"),
        lambda: jwt.encode({"sub": "admin", "acct": 7, "jti": "j", "iat": 0, "exp": 2**40}, SECRET, "HS256"),
        lambda: jwt.encode({"sub": "admin", "acct": "a", "iat": 0, "exp": 2**40}, SECRET, "HS256"),  # no jti
        lambda: "not.a.token",
        lambda: "",
    ],
)
def test_forged_or_malformed_tokens_are_refused(forge):
    with pytest.raises(auth.Unauthenticated):
        auth.Tokens(SECRET, 60).verify(forge())


def test_a_tampered_token_is_refused():
    token = auth.Tokens(SECRET, 60).issue("ops", "account-1")
    head, payload, signature = token.split(".")
    tampered = ".".join([head, payload, ("A" if signature[0] != "A" else "B") + signature[1:]])
    with pytest.raises(auth.Unauthenticated):
        auth.Tokens(SECRET, 60).verify(tampered)


def test_short_secrets_are_refused():
    with pytest.raises(ValueError, match="at least 32 bytes"):
        auth.Tokens("short", 60)


def test_passwords_hash_and_verify_and_unknown_users_fail():
    passwords = auth.Passwords(FAST)
    stored = passwords.hash("right")
    assert stored.startswith("$argon2id$") and "right" not in stored
    assert passwords.verify(stored, "right")
    assert not passwords.verify(stored, "wrong")
    assert not passwords.verify(None, "right")
    assert not passwords.verify("garbage", "right")


@pytest.mark.parametrize(
    ("role", "permission", "allowed"),
    [
        ("admin", roles.READ, True),
        ("admin", "ANYTHING:ELSE", True),
        ("operations", roles.CREATE, True),
        ("operations", "ANYTHING:ELSE", False),
        ("read-only", roles.READ, False),
        ("nobody", roles.READ, False),
    ],
)
def test_roles_decide_permissions(role, permission, allowed):
    if allowed:
        roles.require(role, permission)
    else:
        with pytest.raises(roles.PermissionDenied) as denied:
            roles.require(role, permission)
        assert denied.value.permission == permission


def test_the_configured_secret_wins_and_the_generated_one_is_private_and_stable(tmp_path):
    path = str(tmp_path / "secret")
    assert auth.load_secret("configured-" + "x" * 32, path) == "configured-" + "x" * 32
    assert not os.path.exists(path)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(auth.load_secret(None, path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results[0]) >= auth.MIN_SECRET_BYTES
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [name for name in os.listdir(tmp_path)] == ["secret"]


def test_new_accounts_get_ids_of_their_own():
    ids = {auth.new_account_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(account) == 32 and int(account, 16) >= 0 for account in ids)
