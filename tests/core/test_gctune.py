"""gctune: startup objects frozen, young-generation passes rarer, ratios kept."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from cacheproxy.http.gctune import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_freezes_and_raises_gen0_only() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(12_345)
    assert gc.get_threshold() == (12_345, 10, 10)
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()
