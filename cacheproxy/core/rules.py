"""Rules: which requests are cached, for how long, under which tags, and which
tags each write invalidates.

Rules live in a TOML file, an ordered first-match list::

    [[rule]]
    name = "job"
    methods = ["GET"]
    path = "/slurm/{v}/job/{job_id}"
    ttl = 5
    tags = ["job:{job_id:base}", "jobs.each"]

    [[rule]]
    name = "job-cancel"
    methods = ["DELETE"]
    path = "/slurm/{v}/job/{job_id}"
    invalidates = ["jobs", "job:{job_id:base}"]

``{v}`` matches a data-parser version segment (``v0.0.38`` … ``v0.0.45``), so
one rule serves every version and tags never name a version: a write under
v0.0.38 invalidates what was cached under v0.0.44.  Any other ``{name}``
matches one segment.

A tag is never made of what the client wrote: a path value enters a tag only
through a filter that parses it as slurmrestd does, and ``{name:base}`` (the
only one) is the job id slurmrestd acts on, as a plain number (``0124`` ->
``124``; ``123_4``, ``123_[1-3]``, ``123+1`` and ``123.batch`` -> ``123``;
see :func:`base_job_id`).  So no request can make the store keep a tag named
by the attacker, and ``job/0124`` and ``job/124`` invalidate alike.  A value
that names no job (``job/junk``) renders no tag: a cached rule then does not
cache that request (slurmrestd answers it with an error anyway), and a write
bumps only its other, fixed tags.  A ``{name}`` without a filter in a tag is
refused when the rules are loaded.

Per-job entries and array tasks or het components: ``GET job/124`` may show
task ``123_1`` or component ``123+1`` (whose own id is 124), and nothing in
the path ``job/123`` says so, so a per-id tag alone cannot invalidate it.
Every per-job entry therefore also carries a tag shared by all per-job
entries of its family (``jobs.each``, ``db.jobs.each``), and every job
write bumps those too: a cancel or update makes every cached per-job answer
miss once, in every version, whatever id it was asked under.

Every entry also carries two implicit tags: ``@<family>`` (``@slurm``,
``@slurmdb``, ...) and ``@all``, so "everything under /slurm" is one bump.

Requests that match no rule: a GET or HEAD passes through uncached (new
versions add GETs with side effects); any other method passes through and
invalidates everything (``@all``) — when in doubt, invalidate more — once
slurmrestd has answered it without refusing it (an unknown path is refused:
see :mod:`cacheproxy.http.forward` for when writes invalidate).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION_RE = re.compile(r"v\d+\.\d+\.\d+\Z")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}")
_FILTERS = {"base"}
_CACHEABLE_METHODS = frozenset({"GET"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALL_TAG = "@all"
_MEMO_MAX = 8192

RULE_KEYS = {
    "name",
    "methods",
    "path",
    "ttl",
    "cache",
    "tags",
    "invalidates",
    "stale_if_error",
    "stale_while_revalidate",
    "revalidate",
    "cost",
}

COST_CLASSES: dict[str, int] = {"cheap": 1, "list": 4, "slurmdb": 16}
"""What a request costs slurmrestd and the daemon behind it, by class, in the
fair upstream queue's units (1 to 16, :mod:`cacheproxy.upstream.protect`):
``cheap`` is a ping or one object (a node, a job), ``list`` a list under
slurmctld's locks, ``slurmdb`` a slurmdbd read (90 ms to over a second).
When all classes wait, a turn serves 16 cheap requests, 4 lists or one
slurmdbd read."""


def default_cost(segments: tuple[str | None, ...]) -> str:
    """The cost class of a rule that declares none, from its path (the
    ``{v}``-less literal or ``None`` for a variable, family first): a
    slurmdbd path is ``slurmdb``; one object named by a variable, ``cheap``;
    anything else, ``list``."""
    if segments and segments[0] == "slurmdb":
        return "slurmdb"
    return "cheap" if None in segments[1:] else "list"


class RuleError(ValueError):
    """A rules file is invalid; the message names the line and the reason."""


_JOB_ID = re.compile(
    r"[ \t\n\v\f\r]*\+?([0-9]+)"  # strtol(): blanks, a sign, digits
    r"(?:_\[[0-9,%:\-]+\]|_[0-9]+|\+[0-9]+)?"  # array task(s) or het component
    r"(?:\.[A-Za-z0-9_]+(?:\+[0-9]+)?)?"  # a step (number or name), its component
    r"\Z",
    re.ASCII,
)
_MAX_JOB_ID = 0xFFFFFFFC
"""Above this slurmrestd refuses the id (``MAX_FED_JOB_ID``)."""


def base_job_id(value: str) -> str | None:
    """The job slurmrestd acts on for a ``{job_id}`` path value, as a plain
    number: ``0124`` -> ``124``, ``123_4`` / ``123_[1-3]`` / ``123+1`` /
    ``123.batch`` -> ``123``; None when it names no job.

    slurmrestd reads the id with ``strtol`` (``unfmt_job_id_string`` in 23.11+,
    ``slurm_xlate_job_id`` and slurmctld's own parse in 22.05): leading zeros,
    blanks and a ``+`` sign are accepted, 0 and negative ids are not.  A form
    this refuses but some release accepts costs only precision, never
    read-your-writes: every job write also bumps the tags all per-job entries
    share (see the module docstring).
    """
    m = _JOB_ID.match(value)
    if m is None:
        return None
    job = int(m.group(1))
    return str(job) if 0 < job <= _MAX_JOB_ID else None


@dataclass(frozen=True, slots=True)
class _Segment:
    literal: str | None
    var: str | None

    def matches(self, seg: str) -> bool:
        if self.literal is not None:
            return seg == self.literal
        if self.var == "v":
            return VERSION_RE.match(seg) is not None
        return True


@dataclass(frozen=True, slots=True)
class _TagTemplate:
    text: str
    parts: tuple[tuple[str, str | None, str | None], ...]
    """(literal prefix, variable, filter) triples."""

    def render(self, params: Mapping[str, str]) -> str | None:
        """The tag for these path values; None when a value does not parse
        (then it names no object, and there is no tag to make)."""
        out = []
        for literal, var, _filt in self.parts:
            out.append(literal)
            if var is not None:
                value = base_job_id(params[var])  # the only filter (see _FILTERS)
                if value is None:
                    return None
                out.append(value)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    methods: frozenset[str]
    path: str
    segments: tuple[_Segment, ...]
    ttl: float = 0.0
    cache: bool = False
    tags: tuple[_TagTemplate, ...] = ()
    invalidates: tuple[_TagTemplate, ...] = ()
    stale_if_error: float = 0.0
    stale_while_revalidate: float = 0.0
    revalidate: str | None = None
    line: int = 0
    cost: str = "list"
    """The cost class (:data:`COST_CLASSES`), declared or :func:`default_cost`."""

    def describe(self) -> dict[str, Any]:
        """The effective rule, as ``check-config`` prints it."""
        return {
            "name": self.name,
            "methods": sorted(self.methods),
            "path": self.path,
            "action": "cache" if self.cache else ("invalidate" if self.invalidates else "pass"),
            "ttl": self.ttl,
            "tags": [t.text for t in self.tags],
            "invalidates": [t.text for t in self.invalidates],
            "stale_if_error": self.stale_if_error,
            "stale_while_revalidate": self.stale_while_revalidate,
            "revalidate": self.revalidate,
            "cost": self.cost,
            "line": self.line,
        }


@dataclass(frozen=True, slots=True)
class Match:
    """What the rules say about one request.  Side-effect free."""

    rule: Rule | None
    family: str
    cache: bool
    ttl: float
    tags: tuple[str, ...]
    """Tags an entry for this request carries (implicit ones included)."""
    invalidates: tuple[str, ...]
    params: Mapping[str, str] = field(default_factory=dict)
    name: str = field(init=False, compare=False, repr=False)
    """The rule's name ('-': none matched).  A field, not a property: a hit
    reads it three times."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.rule.name if self.rule is not None else "-")


def _compile_template(path: str, where: str) -> tuple[_Segment, ...]:
    if not path.startswith("/"):
        raise RuleError(f"{where}: path must start with '/': {path!r}")
    segs = []
    seen: set[str] = set()
    for part in path.strip("/").split("/"):
        if not part:
            continue
        m = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", part)
        if m:
            var = m.group(1)
            if var in seen:
                raise RuleError(f"{where}: variable {{{var}}} appears twice in {path!r}")
            seen.add(var)
            segs.append(_Segment(None, var))
        elif "{" in part or "}" in part:
            raise RuleError(f"{where}: a variable must be a whole segment: {part!r}")
        else:
            segs.append(_Segment(part, None))
    if not segs or segs[0].literal is None:
        raise RuleError(f"{where}: the first segment must be literal (the family): {path!r}")
    return tuple(segs)


def _compile_tag(text: str, variables: set[str], where: str) -> _TagTemplate:
    if not isinstance(text, str) or not text:
        raise RuleError(f"{where}: a tag must be a non-empty string")
    parts: list[tuple[str, str | None, str | None]] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        var, filt = m.group(1), m.group(2)
        if var not in variables:
            raise RuleError(f"{where}: tag {text!r} uses {{{var}}}, which the path does not bind")
        if filt is None:
            raise RuleError(
                f"{where}: tag {text!r} would be named by the client's own {{{var}}}: "
                f"only a parsed value may name a tag (e.g. {{{var}:base}} for a job id)"
            )
        if filt not in _FILTERS:
            raise RuleError(f"{where}: unknown tag filter {filt!r} in {text!r}")
        parts.append((text[pos : m.start()], var, filt))
        pos = m.end()
    rest = text[pos:]
    if "{" in rest or "}" in rest:
        raise RuleError(f"{where}: malformed placeholder in tag {text!r}")
    parts.append((rest, None, None))
    return _TagTemplate(text, tuple(parts))


def _number(raw: Mapping[str, Any], key: str, where: str) -> float:
    value = raw.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise RuleError(f"{where}: {key} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _compile_rule(raw: Any, index: int, line: int) -> Rule:
    where = f"line {line} (rule #{index + 1})"
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: a rule must be a table")
    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown key(s) {sorted(unknown)}")
    name = raw.get("name", f"rule-{index + 1}")
    methods_raw = raw.get("methods", ["GET"])
    if (
        not isinstance(methods_raw, list)
        or not methods_raw
        or not all(isinstance(m, str) and m.isalpha() for m in methods_raw)
    ):
        raise RuleError(f"{where}: methods must be a non-empty list of HTTP methods")
    methods = frozenset(m.upper() for m in methods_raw)
    path = raw.get("path")
    if not isinstance(path, str):
        raise RuleError(f"{where}: path is required")
    segments = _compile_template(path, where)
    variables = {s.var for s in segments if s.var is not None}
    ttl = _number(raw, "ttl", where)
    cache = raw.get("cache", ttl > 0)
    if not isinstance(cache, bool):
        raise RuleError(f"{where}: cache must be true or false")
    if cache and not methods <= _CACHEABLE_METHODS:
        raise RuleError(f"{where}: only GET can be cached, not {sorted(methods)}")
    if cache and ttl <= 0:
        raise RuleError(f"{where}: a cached rule needs ttl > 0")
    tags_raw = raw.get("tags", [])
    inval_raw = raw.get("invalidates", [])
    if not isinstance(tags_raw, list) or not isinstance(inval_raw, list):
        raise RuleError(f"{where}: tags and invalidates must be lists")
    if cache and inval_raw:
        raise RuleError(f"{where}: a cached rule cannot invalidate")
    revalidate = raw.get("revalidate")
    if revalidate not in (None, "update_time"):
        raise RuleError(f"{where}: revalidate must be 'update_time' if given")
    cost = raw.get("cost", default_cost(tuple(s.literal for s in segments if s.var != "v")))
    if cost not in COST_CLASSES:
        raise RuleError(f"{where}: cost must be one of {sorted(COST_CLASSES)}, not {cost!r}")
    return Rule(
        name=str(name),
        methods=methods,
        path=path,
        segments=segments,
        ttl=ttl,
        cache=cache,
        tags=tuple(_compile_tag(t, variables, where) for t in tags_raw),
        invalidates=tuple(_compile_tag(t, variables, where) for t in inval_raw),
        stale_if_error=_number(raw, "stale_if_error", where),
        stale_while_revalidate=_number(raw, "stale_while_revalidate", where),
        revalidate=revalidate,
        line=line,
        cost=cost,
    )


def _rule_lines(text: str) -> list[int]:
    return [i + 1 for i, line in enumerate(text.splitlines()) if line.strip() == "[[rule]]"]


class RuleSet:
    """An ordered first-match rule list, indexed for the hot path."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        self._index: dict[tuple[str, int, str], list[Rule]] = {}
        for rule in self.rules:
            family = rule.segments[0].literal
            assert family is not None
            for method in rule.methods:
                self._index.setdefault((method, len(rule.segments), family), []).append(rule)
        self._memo: dict[tuple[str, tuple[str, ...]], Match] = {}

    @classmethod
    def from_toml(cls, text: str, source: str = "<rules>") -> RuleSet:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RuleError(f"{source}: {exc}") from None
        unknown = set(doc) - {"rule"}
        if unknown:
            raise RuleError(f"{source}: unknown top-level key(s) {sorted(unknown)}")
        raw_rules = doc.get("rule", [])
        if not isinstance(raw_rules, list):
            raise RuleError(f"{source}: 'rule' must be an array of tables ([[rule]])")
        lines = _rule_lines(text)
        rules = []
        for i, raw in enumerate(raw_rules):
            try:
                rules.append(_compile_rule(raw, i, lines[i] if i < len(lines) else 0))
            except RuleError as exc:
                raise RuleError(f"{source}: {exc}") from None
        return cls(rules)

    @classmethod
    def from_file(cls, path: str | Path) -> RuleSet:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise RuleError(f"{p}: cannot read: {exc.strerror}") from None
        return cls.from_toml(text, str(p))

    @classmethod
    def default(cls) -> RuleSet:
        return cls.from_file(DEFAULT_RULES_PATH)

    def match(self, method: str, segments: tuple[str, ...]) -> Match:
        memo_key = (method, segments)
        found = self._memo.get(memo_key)
        if found is None:
            found = self._match(method, segments)
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[memo_key] = found
        return found

    def _match(self, method: str, segments: tuple[str, ...]) -> Match:
        family = segments[0] if segments else ""
        implicit = ("@" + family, ALL_TAG) if family else (ALL_TAG,)
        for rule in self._index.get((method, len(segments), family), ()):
            if all(s.matches(seg) for s, seg in zip(rule.segments, segments, strict=True)):
                params = {
                    s.var: seg
                    for s, seg in zip(rule.segments, segments, strict=True)
                    if s.var is not None
                }
                tags = [t.render(params) for t in rule.tags]
                invalidates = tuple(
                    tag for tag in (t.render(params) for t in rule.invalidates) if tag is not None
                )
                if None in tags:  # names no object: not cached (slurmrestd refuses it)
                    return Match(rule, family, False, 0.0, implicit, invalidates, params)
                return Match(
                    rule=rule,
                    family=family,
                    cache=rule.cache,
                    ttl=rule.ttl,
                    tags=tuple(t for t in tags if t is not None) + implicit,
                    invalidates=invalidates,
                    params=params,
                )
        if method in _SAFE_METHODS:
            return Match(None, family, False, 0.0, implicit, ())
        # An unknown write may change anything (a slurmdb write can move
        # fair-share or job limits): invalidate every entry.
        return Match(None, family, False, 0.0, implicit, (ALL_TAG,))


DEFAULT_RULES_PATH = Path(__file__).resolve().parent / "default_rules.toml"
