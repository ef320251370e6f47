"""Forward (not served from the cache) and Refuse (never sent upstream)."""

from __future__ import annotations

from cacheproxy.core import decide
from tests.core.decide.states import RULES, cancel, jobs


def test_the_outcome_says_why_the_cache_did_not_answer() -> None:
    assert decide.uncached("GET", jobs()) == decide.Forward("fwd=request")
    assert decide.uncached("DELETE", cancel()) == decide.Forward("fwd=method")
    assert decide.uncached("POST", RULES.match("POST", ("x",))) == decide.Forward("fwd=method")
    assert decide.uncached("GET", RULES.match("GET", ("x",))) == decide.Forward("fwd=uri-miss")


def test_connect_and_trace_are_refused() -> None:
    for method in ("CONNECT", "TRACE"):
        d = decide.uncached(method, RULES.match(method, ("x",)))
        assert isinstance(d, decide.Refuse)
        assert d.status == 405
