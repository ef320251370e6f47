"""The library behaviour the code relies on beyond documented APIs.

Each bound in ``pyproject.toml`` that names a library internal has its test
here, so that a lock refresh (``scripts/update-deps.sh``) that brings a
version without it fails the test command instead of slowing or breaking a
site silently.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cacheproxy.http import protocol


def test_uvicorn_still_has_the_hook_the_fast_lane_overrides() -> None:
    # Without it the lane turns itself off (a warning, every hit through ASGI).
    assert callable(getattr(HttpToolsProtocol, "_start_asgi_task", None))
    assert protocol.LANE_SUPPORTED
