"""The site's ``PrivateData`` as this process knows it now, and each cached
route's scope under it (the table and the decision: :mod:`cacheproxy.core.scopes`).

Two sources, their union: the ``private_data`` setting (the words of
slurm.conf's and slurmdbd.conf's ``PrivateData``), and slurm.conf itself
(``--slurm-conf``), read at start and again when it changes (its mtime, size
and inode are looked at no more than once a second, so the hit path pays one
clock read).  slurm.conf says nothing of slurmdbd.conf's ``PrivateData``: with
the file alone, the ``/slurmdb`` routes stay per user.  An unreadable file is
logged and counts as unknown (per user) until it is readable again.

A runtime set of demoted routes (:meth:`SiteScopes.demote`) turns a route
back to per user, whatever the table says: the hook an audit of shared
answers uses when it sees them differ by user.

A reload (SIGHUP) hands new rules, ``private_data`` and ``slurm_conf`` to
:meth:`SiteScopes.reconfigure`, in place (the planner and the audit hold
this object): the scopes follow them from the next request, and the demoted
routes stay demoted (the audit saw those answers differ; only a restart
forgets it).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable

from cacheproxy.core import privatedata, scopes
from cacheproxy.core.rules import Rule

log = logging.getLogger("cacheproxy.scope")

CHECK_EVERY = 1.0
"""Seconds between two looks at slurm.conf's mtime."""


class SiteScopes:
    """Which cached routes are shared now (see the module docstring)."""

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        private_data: str = "",
        slurm_conf: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.demoted: set[str] = set()
        self._shared: frozenset[str] = frozenset()
        self.reconfigure(rules, private_data=private_data, slurm_conf=slurm_conf)

    def reconfigure(self, rules: Iterable[Rule], *, private_data: str, slurm_conf: str) -> None:
        """New rules or ``PrivateData`` sources (start, and a reload): every
        scope follows them; the demoted routes stay.  Raises ``ValueError``
        on a word Slurm would not recognise, before anything changes."""
        setting = privatedata.parse(private_data) if private_data.strip() else None
        self._families = {r.name: r.segments[0].literal or "" for r in rules if r.cache}
        self._setting = setting
        self._conf_path = slurm_conf
        self._conf_words: frozenset[str] | None = None
        self._conf_stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        if slurm_conf:
            self._reload(force=True)
        self._recompute()

    @property
    def configured(self) -> bool:
        """Whether the site said anything of its ``PrivateData``."""
        return self._setting is not None or bool(self._conf_path)

    def shared(self, rule: str) -> bool:
        """Whether ``rule``'s entries are one for every accepted credential
        (the hit path: a set lookup, and a look at slurm.conf once a second)."""
        if self._conf_path and self._clock() >= self._next_check:
            self._reload()
        return rule in self._shared

    def demote(self, rule: str) -> None:
        """Turn ``rule`` back to per user for this process's life."""
        if rule not in self.demoted:
            self.demoted.add(rule)
            self._recompute()

    def private_for(self, family: str) -> frozenset[str] | None:
        """The ``PrivateData`` words that apply to ``family`` (None: unknown)."""
        if family == "slurmdb":
            return self._setting
        if self._setting is None and self._conf_words is None:
            return None
        return (self._setting or frozenset()) | (self._conf_words or frozenset())

    def summary(self) -> dict[str, object]:
        """How many cached routes are shared and per user, and the
        ``PrivateData`` words from each source (the startup line, the status
        page): ``setting`` None when not set, ``slurm_conf`` None without
        ``--slurm-conf`` (its ``words`` None while unreadable)."""
        routes = self.describe()
        conf = None
        if self._conf_path:
            words = None if self._conf_words is None else privatedata.spell(self._conf_words)
            conf = {"path": self._conf_path, "words": words}
        return {
            "shared": sum(1 for d in routes if d["scope"] == scopes.SHARED),
            "user": sum(1 for d in routes if d["scope"] != scopes.SHARED),
            "demoted": sorted(self.demoted),
            "setting": None if self._setting is None else privatedata.spell(self._setting),
            "slurm_conf": conf,
        }

    def describe(self) -> list[dict[str, str]]:
        """Each cached route's scope and why (``check-config``, the status page)."""
        out = []
        for name, family in self._families.items():
            scope, why = scopes.scope_of(name, self.private_for(family), self.demoted)
            if family == "slurmdb" and self._setting is None and self._conf_path:
                why = "slurmdbd.conf's PrivateData is unknown (set --private-data): per user"
            out.append({"route": name, "scope": scope, "why": why})
        return out

    # -- mechanism ------------------------------------------------------------
    def _recompute(self) -> None:
        self._shared = frozenset(
            name
            for name, family in self._families.items()
            if scopes.scope_of(name, self.private_for(family), self.demoted)[0] == scopes.SHARED
        )

    def _reload(self, *, force: bool = False) -> None:
        self._next_check = self._clock() + CHECK_EVERY
        try:
            st = os.stat(self._conf_path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if not force and stamp == self._conf_stamp:
                return
            with open(self._conf_path, encoding="utf-8", errors="replace") as f:
                value = privatedata.slurm_conf_value(f.read())
            words = privatedata.parse(value or "")
        except (OSError, ValueError) as exc:
            if self._conf_words is not None or force:
                log.error(
                    "slurm.conf %s: %s; every route per user until it reads", self._conf_path, exc
                )
            self._conf_words, self._conf_stamp = None, None
            self._recompute()
            return
        if words != self._conf_words:
            log.info("slurm.conf PrivateData=%s", privatedata.spell(words))
        self._conf_words, self._conf_stamp = words, stamp
        self._recompute()
