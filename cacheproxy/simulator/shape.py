"""Shape a rendered body to another API version's response schema.

The simulator keeps real items for three versions (22.05's v0.0.38, 25.05's
v0.0.43, 25.11's v0.0.44: ``templates/``).  Every other version is rendered
from the nearest of those (``releases.base_version``) and then walked against
its own spec:

* a property the target schema lists is kept (converted if its type changed
  between versions: a plain integer becomes ``{"set", "infinite", "number"}``
  and back, a list of flags becomes one string and back);
* a property it does not list is dropped;
* a property it lists that the source lacks is filled with the zero value of
  its schema (data_parser dumps every field of its parser, so a missing field
  would be a difference on the wire);
* inside objects, the target schema's property order is used: the spec is
  generated from the same parser tables that order the daemon's output.

Top-level keys are never added: an error body without ``nodes`` stays
without it, as on the real daemon.  The 22.05-era versions (v0.0.36/37) are
hand-written plugins whose output disagrees with their own spec in types, so
for them values are kept as they are and only the key sets follow the spec.
"""

from __future__ import annotations

from typing import Any

from cacheproxy.simulator.specs import resolve

_NO_VAL_KEYS = frozenset({"set", "infinite", "number"})
_MAX_DEPTH = 12


class Shaper:
    def __init__(self, doc: str, *, coerce: bool) -> None:
        self.doc = doc
        self.coerce = coerce

    def body(self, value: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
        """A whole response object: its present members shaped, none added."""
        if schema is None:
            return value
        doc, s = resolve(self.doc, schema)
        if s is None:
            return value
        props = s.get("properties", {})
        return {k: (self.value(v, props[k], doc, 1) if k in props else v) for k, v in value.items()}

    def lists(self, key: str, schema: dict[str, Any] | None) -> bool:
        """Whether top-level member ``key`` is sent: data_parser versions send what
        their schema lists; the hand-written 22.05 plugins what their code dumps
        (dbv0.0.36-38 ``TRES``, which their spec calls ``tres``)."""
        if schema is None or not self.coerce:
            return True
        _, s = resolve(self.doc, schema)
        return s is None or key in s.get("properties", {})

    def member(self, key: str, value: Any, schema: dict[str, Any] | None) -> Any:
        """One top-level member (e.g. the ``jobs`` list) of a response object."""
        if schema is None:
            return value
        doc, s = resolve(self.doc, schema)
        if s is None or key not in s.get("properties", {}):
            return value
        return self.value(value, s["properties"][key], doc, 1)

    # ---------------------------------------------------------------- walk
    def value(self, value: Any, schema: dict[str, Any], doc: str, depth: int) -> Any:
        doc, s = resolve(doc, schema)
        if s is None or depth > _MAX_DEPTH:
            return value
        kind = s.get("type")
        if value is None:
            return None  # the daemon dumps NULL pointers as null, whatever the spec says
        if kind == "object" or (kind is None and "properties" in s):
            return self._object(value, s, doc, depth)
        if kind == "array":
            items = s.get("items", {})
            if not isinstance(value, list):
                if not self.coerce:
                    return value
                # 0 / "" is "no flags"; "A,B" a list written as text.
                value = [] if not value else [value]
                if value and isinstance(value[0], str) and "," in value[0]:
                    value = value[0].split(",")
            return [self.value(v, items, doc, depth + 1) for v in value]
        if not self.coerce:
            return value
        return _scalar(value, kind, s)

    def _object(self, value: Any, s: dict[str, Any], doc: str, depth: int) -> Any:
        props: dict[str, Any] = s.get("properties", {})
        if not isinstance(value, dict):
            if not self.coerce:
                return value
            if set(props) == _NO_VAL_KEYS and isinstance(value, int | float) and value is not True:
                return {"set": True, "infinite": False, "number": value}
            return self.default(s, doc, depth)
        if not props:
            return value  # a free-form map (additionalProperties) or an open object
        out: dict[str, Any] = {}
        for key, sub in props.items():
            if key in value:
                out[key] = self.value(value[key], sub, doc, depth + 1)
            else:
                out[key] = self.default(sub, doc, depth + 1)
        return out

    def default(self, schema: dict[str, Any], doc: str, depth: int) -> Any:
        """What a data_parser dumps for a zeroed field of this schema."""
        doc, s = resolve(doc, schema)
        if s is None:
            return None
        kind = s.get("type")
        if kind == "object" or (kind is None and "properties" in s):
            if depth > _MAX_DEPTH:
                return {}
            return {k: self.default(v, doc, depth + 1) for k, v in s.get("properties", {}).items()}
        if kind == "array":
            return []
        if s.get("enum"):
            return s["enum"][0]
        return {"string": "", "integer": 0, "number": 0.0, "boolean": False}.get(str(kind))


def _scalar(value: Any, kind: Any, s: dict[str, Any]) -> Any:
    if isinstance(value, dict) and kind == "string":
        # An object that older versions give as its text (v0.0.40's
        # job_resources.nodes is the node list, v0.0.41+ an object with "list").
        value = next((value[k] for k in ("list", "name") if isinstance(value.get(k), str)), "")
    if isinstance(value, dict) and set(value) >= _NO_VAL_KEYS and kind in ("integer", "number"):
        value = value["number"] if value.get("set") else 0
    if isinstance(value, list) and kind == "string":
        value = ",".join(str(v) for v in value)
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "integer" and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if kind == "string" and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if kind == "boolean" and not isinstance(value, bool):
        value = bool(value)
    enum = s.get("enum")
    if enum and value not in enum:
        return enum[0]
    return value
