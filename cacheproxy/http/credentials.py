"""What slurmrestd's answers say of a credential, kept where every replica
sees it: an accepted credential is recorded in the store (so later requests
are served from the cache), a refused one revoked.

Only answers that asked slurmctld or slurmdbd count; this process remembers
the acceptances it recorded, to skip recording again until half spent (a
memo bounded in bytes, :mod:`cacheproxy.core.memo`).  The credential judged is
the one forwarded (:class:`cacheproxy.core.headers.RequestView`), so an
acceptance is recorded only for what slurmrestd saw.
"""

from __future__ import annotations

from collections.abc import Callable

from cacheproxy.core import decide, policy
from cacheproxy.core.identity import Identity
from cacheproxy.core.memo import ByteMemo
from cacheproxy.core.rules import Match
from cacheproxy.stats import Stats
from cacheproxy.store.base import Store, StoreError
from cacheproxy.upstream.base import Headers

RECORDED_MAX_BYTES = 4 * 1024 * 1024
NO_ENTRY = b""
"""The key of no entry: a lookup of it asks only for a credential's acceptance."""


class Credentials:
    """Judges credentials by upstream's answers; owns this process's record
    of the acceptances it stored.  A store that cannot answer is only
    counted (it logs once per episode itself)."""

    def __init__(
        self, *, store: Store, stats: Stats, clock: Callable[[], float], auth_ttl: float
    ) -> None:
        self.store = store
        self.stats = stats
        self.clock = clock
        self.auth_ttl = auth_ttl
        self._recorded: ByteMemo[bytes, float] = ByteMemo(RECORDED_MAX_BYTES)
        """credential hash -> acceptance this process recorded, until when."""

    async def accepted(self, identity: Identity | None) -> bool:
        """Has slurmrestd accepted this credential recently (the store's
        record, as every replica sees it)?  A store that cannot answer
        counts as no."""
        if identity is None:
            return False
        try:
            found = await self.store.lookup(NO_ENTRY, (), identity.credential)
        except StoreError:
            self.stats.store_errors += 1
            return False
        return found.accepted_until > self.clock()

    def forget(self, credential: bytes) -> None:
        """The store no longer holds ``credential``'s acceptance (revoked
        elsewhere, or a restarted Redis): record the next one again."""
        self._recorded.pop(credential)

    async def judge(
        self,
        identity: Identity,
        match: Match,
        status: int,
        body: bytes | None,
        head: bytes,
        resp_headers: Headers,
    ) -> bool:
        """Trust a credential slurmrestd accepted; forget one it refused.
        True when it refused it (the flight's followers need to know).

        Called before the flight ends, so the next request already knows.
        Only answers that asked slurmctld or slurmdbd count (never the OpenAPI
        documents, which 22.05 serves to any token).
        """
        verdict = decide.credential_verdict(
            identity,
            match,
            status,
            body,
            head,
            policy.header_value(resp_headers, b"content-type"),
            now=self.clock(),
            auth_ttl=self.auth_ttl,
            recorded_until=self._recorded.get(identity.credential) or 0.0,
        )
        try:
            if isinstance(verdict, decide.Accept):
                if verdict.record:
                    await self.store.accept(identity.credential, verdict.until)
                    self._recorded.put(
                        identity.credential, verdict.until, len(identity.credential) + 32
                    )
                    self.stats.auth_accepted += 1
            elif verdict is not None:
                self._recorded.pop(identity.credential)
                self.stats.auth_refused += 1
                await self.store.revoke(identity.credential)
        except StoreError:
            self.stats.store_errors += 1
        return verdict is decide.REVOKE
