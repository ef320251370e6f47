"""``PrivateData`` as slurm.conf and slurmdbd.conf spell it, and who it hides what from.

Read in SchedMD/slurm (tags slurm-22-05-8-1 and slurm-25-11-0-1):

* parsing: src/common/read_config.c (slurm.conf) and src/slurmdbd/read_config.c
  (slurmdbd.conf) test the whole value with ``xstrcasestr`` for "account",
  "event", "job", "node", "partition", "reservation", "usage", "user" (and
  "cloud", slurm.conf only); "all" sets every bit.  So the singular, plural and
  any case all count; an unknown word is silently ignored by Slurm.  Here an
  unknown word is refused so a typo in a benchmark or test cannot silently mean
  "nothing private".
* who sees everything: ``validate_operator`` (src/slurmctld/proc_req.c): uid
  0, SlurmUser, or AdminLevel Operator or Administrator; slurmdbd uses
  ``is_user_min_admin_level(..., SLURMDB_ADMIN_OPERATOR)`` (same set).
* ``cloud`` (``PRIVATE_CLOUD_NODES``) is the odd one out: it *shows* powered-down
  cloud nodes.  The simulated cluster has no cloud nodes, so it changes nothing.
* ``events``: only slurmdbd's cluster events (``as_mysql_get_cluster_events``),
  which no REST route the simulator serves returns.

The simulator applies the per-route rules in ``simulator/views*.py``
(``views.py``, ``views_nodes.py``, ``views_db.py``), each citing the Slurm
function it follows; the proxy's table of which word governs which route is
:mod:`cacheproxy.core.scopes`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: The words, as the man pages list them (slurm.conf(5), slurmdbd.conf(5)).
WORDS: tuple[str, ...] = (
    "accounts",
    "cloud",
    "events",
    "jobs",
    "nodes",
    "partitions",
    "reservations",
    "usage",
    "users",
)
#: The substring each word is recognised by (read_config.c's ``xstrcasestr``).
_STEMS = {w: w.rstrip("s") if w not in ("usage",) else w for w in WORDS}


def parse(value: str | bool | Iterable[str] | None) -> frozenset[str]:
    """The set of words a ``PrivateData`` value turns on.

    ``True`` is the old boolean ``--private-data`` (PrivateData=jobs);
    ``False``/``None``/``""``/``"none"`` is nothing private; ``"all"`` is every
    word.  Raises ``ValueError`` on a word Slurm would not recognise.
    """
    if value is True:
        return frozenset({"jobs"})
    if value is False or value is None:
        return frozenset()
    parts = value.split(",") if isinstance(value, str) else list(value)
    out: set[str] = set()
    for raw in parts:
        word = raw.strip().lower()
        if word in ("", "none"):
            continue
        if "all" in word:
            return frozenset(WORDS)
        hits = {w for w, stem in _STEMS.items() if stem in word}
        if not hits:
            raise ValueError(
                f"unknown PrivateData word {raw.strip()!r}; expected none, all or "
                + ", ".join(WORDS)
            )
        out |= hits
    return frozenset(out)


def spell(words: Iterable[str]) -> str:
    """The slurm.conf spelling of a set of words (``none`` for the empty set)."""
    ordered = [w for w in WORDS if w in set(words)]
    return ",".join(ordered) if ordered else "none"


_CONF_PAIR = re.compile(r"""(?i)(?:^|\s)privatedata\s*=\s*("[^"]*"|\S*)""")


def slurm_conf_value(text: str) -> str | None:
    """slurm.conf's ``PrivateData`` value, or None when the file sets none.

    As Slurm's parser reads it (src/common/parse_config.c): a ``#`` starts a
    comment, keys are case-insensitive, a line may hold several
    ``key=value`` pairs, a value may be quoted, and the last setting wins.
    ``Include`` lines are not followed: a site that sets ``PrivateData`` in an
    included file says so with ``--private-data``.
    """
    found: str | None = None
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for m in _CONF_PAIR.finditer(line):
            found = m.group(1).strip('"')
    return found
