"""Identity extraction, credential hashing and the storage policy."""

from __future__ import annotations

import base64
import json

import pytest

from cacheproxy.core.identity import IdentityResolver, jwt_claims
from cacheproxy.core.policy import (
    accepted_until,
    credential_refused,
    errors_empty,
    response_storable,
)


def jwt(claims: dict[str, object]) -> bytes:
    def b64(d: bytes) -> bytes:
        return base64.urlsafe_b64encode(d).rstrip(b"=")

    return b".".join([b64(b'{"alg":"HS256"}'), b64(json.dumps(claims).encode()), b"sig"])


R = IdentityResolver(b"k" * 32)


def test_token_identity_hashes_and_never_holds_the_token() -> None:
    ident = R.resolve([(b"x-slurm-user-name", b"alice"), (b"x-slurm-user-token", b"secret-tok")])
    assert ident is not None
    assert ident.user == "name:alice"
    assert b"secret-tok" not in ident.credential
    assert "secret-tok" not in repr(ident)


def test_different_tokens_or_names_give_different_credentials() -> None:
    a = R.resolve([(b"x-slurm-user-name", b"alice"), (b"x-slurm-user-token", b"t1")])
    b = R.resolve([(b"x-slurm-user-name", b"alice"), (b"x-slurm-user-token", b"t2")])
    c = R.resolve([(b"x-slurm-user-name", b"bob"), (b"x-slurm-user-token", b"t1")])
    assert a is not None
    assert b is not None
    assert c is not None
    assert len({a.credential, b.credential, c.credential}) == 3


def test_other_key_gives_other_hash() -> None:
    h = [(b"x-slurm-user-name", b"alice"), (b"x-slurm-user-token", b"t1")]
    a, b = R.resolve(h), IdentityResolver(b"j" * 32).resolve(h)
    assert a is not None
    assert b is not None
    assert a.credential != b.credential


def test_bearer_identity_uses_the_jwt_user() -> None:
    tok = jwt({"sun": "alice", "exp": 2_000_000_000})
    ident = R.resolve([(b"authorization", b"Bearer " + tok)])
    assert ident is not None
    assert ident.kind == "bearer"
    assert ident.user == "sun:alice"
    assert ident.expires_at == 2_000_000_000


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"x-slurm-user-name", b"alice")],
        [(b"x-slurm-user-name", b"alice"), (b"x-slurm-user-token", b"")],
        [(b"authorization", b"Basic abc")],
        [(b"x-slurm-user-name", b"a"), (b"x-slurm-user-name", b"b"), (b"x-slurm-user-token", b"t")],
    ],
)
def test_no_usable_credential_means_no_identity(headers: list[tuple[bytes, bytes]]) -> None:
    assert R.resolve(headers) is None


def test_acceptance_never_outlives_exp() -> None:
    tok = jwt({"exp": 1000.0 + 10})
    ident = R.resolve([(b"x-slurm-user-name", b"a"), (b"x-slurm-user-token", tok)])
    assert ident is not None
    assert accepted_until(ident, 1000.0, 60.0) == 1010.0
    plain = R.resolve([(b"x-slurm-user-name", b"a"), (b"x-slurm-user-token", b"opaque")])
    assert plain is not None
    assert accepted_until(plain, 1000.0, 60.0) == 1060.0


def test_jwt_claims_rejects_garbage() -> None:
    assert jwt_claims(b"not-a-jwt") is None
    assert jwt_claims(b"a.!!!.c") is None


@pytest.mark.parametrize(
    ("body", "ctype", "empty"),
    [
        (b'{"jobs": [], "errors": [], "warnings": []}', b"application/json", True),
        (b'{\n  "errors": [\n  ],\n  "jobs": []\n}', b"application/json", True),
        (b'{"errors": [{"error": "x"}], "jobs": []}', b"application/json", False),
        (b'{"jobs": [{"errors": [1]}], "errors": []}', b"application/json", False),
        (b"errors: []\njobs: []\n", b"application/x-yaml", True),
        (b"errors:\n- error: x\n", b"application/x-yaml", False),
        (b"plain", b"text/plain", False),
    ],
)
def test_errors_empty(body: bytes, ctype: bytes, empty: bool) -> None:
    assert errors_empty(body, ctype) is empty


def test_storable() -> None:
    ok = [(b"content-type", b"application/json")]
    assert response_storable(200, ok, b'{"errors": []}', 100)
    assert not response_storable(304, ok, b"", 100)
    assert not response_storable(500, ok, b'{"errors": []}', 100)
    assert not response_storable(200, ok, b'{"errors": []}' + b" " * 100, 100)
    assert not response_storable(200, [*ok, (b"cache-control", b"no-store")], b'{"errors":[]}', 100)


def test_credential_refused() -> None:
    assert credential_refused(401, b"Authentication failure")
    assert credential_refused(511, b"{}")
    assert credential_refused(
        500, b'{"errors":[{"error_number": -1, "error": "Unspecified error"}]}'
    )
    assert not credential_refused(500, b'{"errors":[{"error_number": 2017}]}')
    assert not credential_refused(200, b"{}")


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        # slurmdbd's 200 that refuses a token: error 1007 (any spacing) or the text
        (b'{"errors": [{"error_number": 1007, "error": "x"}], "jobs": []}', True),
        (b'{"errors":[{"error_number" :\n  1007}]}', True),
        (b'{"errors": [{"description": "Protocol authentication error"}]}', True),
        (b'{"errors": [{"description": "authentication error"}]}', True),
        # 1007 as a job id, "error_number" of another error, no error at all
        (b'{"errors": [], "jobs": [{"job_id": 1007}, {"job_id": 10070}]}', False),
        (b'{"errors": [{"error_number": 10070}], "jobs": []}', False),
        (b'{"errors": [{"error_number": 9003}], "jobs": [{"job_id": 1007}]}', False),
        (b'{"errors": [], "jobs": [' + b'{"job_id": 1007, "name": "a"},' * 50_000 + b"{}]}", False),
    ],
)
def test_a_2xx_refuses_only_when_its_errors_say_authentication(body: bytes, refused: bool) -> None:
    assert credential_refused(200, body) is refused


def test_the_credential_hash_is_the_keyed_blake2b_of_the_documented_text() -> None:
    """Replicas of different versions sharing Redis agree on acceptances only
    if the hashed text and key stay as they are (the hit path absorbs the
    key and the text's start once: this pins that it changes nothing)."""
    import hashlib

    from cacheproxy.core.identity import IdentityResolver

    secret = b"s" * 32
    key = hashlib.blake2b(secret, person=b"cacheproxy-key").digest()
    resolver = IdentityResolver(secret)
    for (name, token, auth), text in [
        ((b"root", b"tok", None), b"cred-2,+4:root+3:tok-"),
        ((None, None, b"Bearer a.b.c"), b"cred-2,--+12:Bearer a.b.c"),
    ]:
        identity = resolver.resolve_values(name, token, auth)
        assert identity is not None
        assert identity.credential == hashlib.blake2b(text, key=key, digest_size=32).digest()


def test_the_credential_hash_of_long_values_has_the_same_text() -> None:
    """Values past the prefixes made once (4 KiB) are hashed with the same text."""
    import hashlib

    from cacheproxy.core.identity import IdentityResolver

    secret = b"s" * 32
    key = hashlib.blake2b(secret, person=b"cacheproxy-key").digest()
    token = b"t" * 5000
    identity = IdentityResolver(secret).resolve_values(b"u" * 4095, token, None)
    assert identity is not None
    text = b"cred-2,+4095:" + b"u" * 4095 + b"+5000:" + token + b"-"
    assert identity.credential == hashlib.blake2b(text, key=key, digest_size=32).digest()


def test_jwt_claims_read_an_expired_token_signed_with_any_key() -> None:
    """The unverified read (PyJWT with verification off) still gives an
    expired token's ``exp`` and owner: trust is shortened by it, so a PyJWT
    that started checking ``exp`` or the key there would lengthen trust."""
    import jwt

    token = jwt.encode(
        {"sun": "alice", "exp": 1000}, "some-key-nobody-has-32-bytes-long!!", "HS256"
    )
    assert jwt_claims(token.encode()) == {"sun": "alice", "exp": 1000}
    # a header that does not decode: no claims (slurmrestd refuses it too)
    _, payload, sig = token.split(".")
    assert jwt_claims(f"!!!.{payload}.{sig}".encode()) is None
