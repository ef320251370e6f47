"""The credential's verdict from upstream's answer."""

from __future__ import annotations

from cacheproxy.core import decide
from cacheproxy.core.identity import Identity
from tests.core.decide.states import RULES, jobs

WHO = Identity("token", "name:alice", b"c" * 32, None)
CT = b"application/json"
OK = b'{"errors": []}'


def verdict(status: int, body: bytes | None, *, match=None, recorded: float = 0.0, who=WHO):  # type: ignore[no-untyped-def]
    return decide.credential_verdict(
        who,
        match or jobs(),
        status,
        body,
        (body or b"")[:4096],
        CT,
        now=1000.0,
        auth_ttl=60.0,
        recorded_until=recorded,
    )


def test_an_authoritative_clean_answer_accepts_for_the_ttl() -> None:
    assert verdict(200, OK) == decide.Accept(1060.0, record=True)


def test_recorded_recently_is_not_written_again() -> None:
    assert verdict(200, OK, recorded=1050.0) == decide.Accept(1060.0, record=False)
    assert verdict(200, OK, recorded=1020.0) == decide.Accept(1060.0, record=True)


def test_never_past_the_tokens_expiry() -> None:
    soon = Identity("token", "name:alice", b"c" * 32, 1010.0)
    assert verdict(200, OK, who=soon) == decide.Accept(1010.0, record=True)
    gone = Identity("token", "name:alice", b"c" * 32, 999.0)
    assert verdict(200, OK, who=gone) is None


def test_openapi_documents_accept_nothing() -> None:
    openapi = RULES.match("GET", ("openapi", "v3"))
    assert verdict(200, OK, match=openapi) is None


def test_refusals_revoke() -> None:
    assert verdict(401, b"Authentication failure") == decide.REVOKE
    assert verdict(500, b'{"errors": [{"error_number": -1}]}') == decide.REVOKE
    assert verdict(503, b"busy") is None
