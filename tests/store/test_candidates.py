"""Generation and epoch candidates come from a per-process generator
(no system call per lookup); a forked worker must not repeat its parent."""

from __future__ import annotations

import multiprocessing

from cacheproxy.store.redis_layout import candidates as _candidates


def _child(conn: multiprocessing.connection.Connection) -> None:
    conn.send(_candidates())
    conn.close()


def test_a_forked_worker_does_not_repeat_its_parents_candidates() -> None:
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child_end,))
    proc.start()
    from_child = parent_end.recv()
    proc.join(10)
    # Without a reseed after fork the child's first pair is exactly this one.
    assert from_child != _candidates()


def test_candidates_are_what_the_scripts_expect() -> None:
    epoch, value = _candidates()
    assert len(epoch) == 16
    int(epoch, 16)
    assert 0 < int(value) < 1 << 62
    assert len({_candidates() for _ in range(1000)}) == 1000
