"""What the client tests compare, and how a repeat through the proxy is judged."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cacheproxy.core.rules import DEFAULT_RULES_PATH

#: Reads the default rules never cache (answered by the controller every time).
UNCACHED = frozenset({"diag", "db_diag", "ping"})
#: The long TTL the client tests' proxy uses: a repeat a few seconds later is
#: then a hit by the rules, whatever the speed of the machine.
LONG_TTL = 600


def long_ttl_rules(tmp: Path) -> Path:
    """The built-in rules with every TTL raised to :data:`LONG_TTL`.

    Everything else (tags, invalidation, revalidation) is the shipped rules'
    own, so a submit still invalidates the list it changes.
    """
    text = Path(DEFAULT_RULES_PATH).read_text()
    out = tmp / "long-ttl-rules.toml"
    out.write_text(re.sub(r"(?m)^ttl = \d+(\.\d+)?$", f"ttl = {LONG_TTL}", text))
    return out


#: Top-level members that describe the request rather than the data: ``meta``
#: (who asked, from which socket) and, in data_parser lists, ``last_update``,
#: which slurmctld sets to the time it packed the answer (``time(NULL)``), so
#: two reads a second apart differ there and nowhere else.
PER_REQUEST = frozenset({"meta", "last_update"})


def without_meta(data: Any) -> Any:
    """A response body as the client deserialized it, minus :data:`PER_REQUEST`."""
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if k not in PER_REQUEST}
    return data


def shape(data: Any) -> Any:
    """Diag as its shape: every call moves the controller's own counters
    (``req_time``, ``rpcs_by_*``), and its RPC tables gain a row for every
    message type seen since, so two diag answers a moment apart can only be
    compared in their members and types."""
    if isinstance(data, dict):
        return {k: shape(v) for k, v in data.items()}
    if isinstance(data, list):
        return "list"
    return type(data).__name__


def comparable(label: str, data: Any) -> Any:
    body = without_meta(data)
    return shape(body) if label in UNCACHED else body


def is_hit(headers: dict[str, str]) -> bool:
    value = headers.get("cache-status", "")
    assert value.startswith("cacheproxy;"), f"no Cache-Status from the proxy: {headers}"
    return "; hit" in value


def errors_of(results: dict[str, Any]) -> dict[str, Any]:
    """Calls that did not come back as a 200 with a deserialized body."""
    return {
        label: {k: v for k, v in r.items() if k != "data"}
        for label, r in results.items()
        if r.get("status") != 200 or "data" not in r
    }


def check_reads(
    run: Callable[[str], Any],
    direct_url: str,
    proxy_url: str,
    labels: list[str],
    may_fail: frozenset[str] = frozenset(),
    mask: Callable[[Any], Any] = lambda data: data,
) -> dict[str, Any]:
    """Direct, through the proxy, and again through the proxy: all deserialize,
    all equal, the repeat of every cacheable read a hit.

    A read in ``may_fail`` may come back as an error (an HTTP error or the
    client's own deserialization error), but exactly the same one through the
    proxy as directly: then the proxy is not the reason. ``mask`` hides what
    moves between two reads of the same state (the real controller's load
    samples). Returns the direct results.
    """
    direct = run(direct_url)["calls"]
    first = run(proxy_url)["calls"]
    again = run(proxy_url)["calls"]
    unexpected = {k: v for k, v in errors_of(direct).items() if k not in may_fail}
    assert not unexpected, f"direct: {unexpected}"
    for name, results in (("proxy", first), ("proxy again", again)):
        assert errors_of(results).keys() == errors_of(direct).keys(), name
    for label in labels:
        if label in errors_of(direct):
            want_err = (direct[label]["status"], direct[label]["error"].split("\n")[0])
            for results in (first, again):
                got = (results[label]["status"], results[label]["error"].split("\n")[0])
                assert got == want_err, label
            continue
        want = mask(comparable(label, direct[label]["data"]))
        assert mask(comparable(label, first[label]["data"])) == want, label
        assert mask(comparable(label, again[label]["data"])) == want, f"{label} (repeat)"
    misses = {
        label: r["headers"].get("cache-status")
        for label, r in again.items()
        if label not in UNCACHED and "data" in r and not is_hit(r["headers"])
    }
    assert not misses, f"repeats through the proxy were not hits: {misses}"
    return direct
