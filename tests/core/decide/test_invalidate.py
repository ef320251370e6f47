"""What a write invalidates: before forwarding, after the answer, after a fault."""

from __future__ import annotations

from cacheproxy.core import decide
from tests.core.decide.states import cancel, jobs

JSON = [(b"content-type", b"application/json")]
PLAIN = [(b"content-type", b"text/plain")]


def test_a_job_cancel_invalidates_the_lists_and_the_job() -> None:
    assert cancel().invalidates == ("jobs", "job:42")
    assert decide.invalidates(cancel(), 200, JSON, b'{"errors": []}')
    assert decide.invalidates(cancel(), 500, JSON, b'{"errors": [{"error": "half"}]}')


def test_a_write_refused_invalidates_nothing() -> None:
    assert not decide.invalidates(cancel(), 401, PLAIN, b"Authentication failure")
    assert not decide.invalidates(cancel(), 404, PLAIN, b"Unable to find path")
    assert not decide.invalidates(cancel(), 500, JSON, b'{"errors": [{"error_number": -1}]}')


def test_reads_invalidate_nothing() -> None:
    assert not decide.invalidates(jobs(), 200, JSON, b'{"errors": []}')
    assert not decide.invalidates_before(jobs(), True)


def test_before_forwarding_only_for_an_accepted_writer() -> None:
    assert decide.invalidates_before(cancel(), True)
    assert not decide.invalidates_before(cancel(), False)


def test_a_fault_invalidates_once_the_request_was_sent() -> None:
    assert decide.invalidates_after_fault(cancel(), True)
    assert not decide.invalidates_after_fault(cancel(), False)
