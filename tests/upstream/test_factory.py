"""Which transport ``create_transport`` builds, and the upstream URLs it accepts."""

from __future__ import annotations

import logging

import pytest

from cacheproxy.upstream import create_transport
from cacheproxy.upstream.aiohttp_transport import AiohttpTransport
from cacheproxy.upstream.urls import UpstreamAddress, parse_upstream_url


@pytest.mark.parametrize("kind", ["auto", "aiohttp"])
def test_the_one_transport_is_aiohttp(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(create_transport("http://127.0.0.1:1", kind=kind), AiohttpTransport)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_removed_h1_kind_still_starts_with_a_deprecation_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Configurations that name the removed client keep working."""
    assert isinstance(create_transport("http://127.0.0.1:1", kind="h1"), AiohttpTransport)
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "deprecated" in record.getMessage()


def test_unknown_kind_refused() -> None:
    with pytest.raises(ValueError, match="unknown transport kind"):
        create_transport("http://127.0.0.1:1", kind="curl")


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:6820", UpstreamAddress("127.0.0.1", 6820)),
        ("http://slurm.example", UpstreamAddress("slurm.example", 80)),
        ("http://[::1]:6820/", UpstreamAddress("::1", 6820)),
        ("unix:/run/slurmrestd.sock", UpstreamAddress("localhost", 0, "/run/slurmrestd.sock")),
        ("unix:///run/s.sock", UpstreamAddress("localhost", 0, "/run/s.sock")),
        ("http+unix://%2Frun%2Fs.sock", UpstreamAddress("localhost", 0, "/run/s.sock")),
    ],
)
def test_parse_upstream_url(url: str, address: UpstreamAddress) -> None:
    assert parse_upstream_url(url) == address


@pytest.mark.parametrize(
    "url", ["ftp://x", "unix:relative.sock", "http://x/api", "http://x:y", "https://", "http://x:0"]
)
def test_parse_upstream_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_upstream_url(url)
