"""Load the item templates shipped in ``templates/`` (see its README).

A template is parsed once and kept as compact bytes; :func:`fresh` returns a
new mutable copy (orjson parsing is much faster than ``copy.deepcopy``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import orjson


@cache
def _raw(name: str) -> bytes:
    return (resources.files(__package__) / "templates" / f"{name}.json").read_bytes()


def fresh(name: str) -> dict[str, Any]:
    """A new copy of template ``name`` (e.g. ``"v43_job_running"``)."""
    value = orjson.loads(_raw(name))
    assert isinstance(value, dict)
    return value
