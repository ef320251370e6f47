"""The OpenAPI documents each API version is served from, and lookups in them.

The files in ``specs/`` are the specs of ``shared/slurm-openapi`` (Apache-2.0,
see ``specs/README.md``), minified and gzipped.  They decide three things:

* which operations exist for a version (``operations``): the simulator serves
  an operation of a version only where that version's spec lists it;
* the response schema of an operation (``response_schema``), from which
  ``shape.py`` builds the bodies of versions that have no templates;
* what ``/openapi/v3`` serves.

v0.0.39's static spec leaves the item schemas to the 23.02 data_parser
(``{"$ref": "DATA_PARSER_JOB_INFO_MSG"}``); those references are resolved in
the v0.0.40 spec, the nearest complete description of that parser.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import orjson

from cacheproxy.core.request import LEGACY_VERSIONS

_FILES: dict[str, tuple[str, ...]] = {
    **{v: ("openapi-debian12-slurmrestd-22.05.8-served.json",) for v in LEGACY_VERSIONS},
    "v0.0.39": ("openapi-v0.0.39-slurm.json", "openapi-v0.0.39-slurmdb.json"),
    **{f"v0.0.{n}": (f"openapi-v0.0.{n}.json",) for n in range(40, 46)},
}
_PARAM = re.compile(r"^\{.*\}$")
#: Operations whose declared response is not what the daemon sends: no schema
#: (the simulator sends the real shape).  ``GET /jobs/state`` is declared as a
#: job_info response but dumps OPENAPI_JOB_STATE_RESP (notes, section 0.10).
WRONG_IN_SPEC = frozenset({(("slurm", "jobs", "state"), "GET")})
#: Where a v0.0.39 ``DATA_PARSER_*`` reference is described (see the module doc).
DATA_PARSER_FALLBACK = "v0.0.40"


@cache
def document(name: str) -> dict[str, Any]:
    raw = (resources.files(__package__) / "specs" / f"{name}.gz").read_bytes()
    doc = orjson.loads(gzip.decompress(raw))
    assert isinstance(doc, dict)
    return doc


def spec_files(version: str) -> tuple[str, ...]:
    return _FILES[version]


@dataclass(frozen=True)
class Operation:
    doc: str  # file name of the document the schema lives in
    schema: dict[str, Any] | None  # 200 application/json schema (None: not declared)


def _key(segments: list[str]) -> tuple[str, ...]:
    return tuple("{}" if _PARAM.match(s) else s for s in segments if s)


@cache
def operations(version: str) -> dict[tuple[tuple[str, ...], str], Operation]:
    """``((family, *segments), METHOD) -> Operation`` for every path of ``version``.

    Path parameters become ``{}`` (their names changed between versions), and
    trailing slashes are dropped (slurmrestd ignores empty segments).
    """
    out: dict[tuple[tuple[str, ...], str], Operation] = {}
    for name in spec_files(version):
        doc = document(name)
        prefix = doc.get("servers", [{}])[0].get("url", "/")
        for path, item in doc["paths"].items():
            segments = _key((prefix.rstrip("/") + "/" + path.lstrip("/")).split("/"))
            if len(segments) < 3 or segments[1] != version:
                continue
            key = (segments[0], *segments[2:])
            for method, op in item.items():
                if method not in ("get", "post", "delete", "put", "patch"):
                    continue
                responses = op.get("responses", {})
                resp = responses.get("200") or responses.get("default") or {}
                schema = resp.get("content", {}).get("application/json", {}).get("schema")
                if (key, method.upper()) in WRONG_IN_SPEC:
                    schema = None
                out[(key, method.upper())] = Operation(name, schema)
    return out


def lookup(version: str, family: str, pattern: tuple[str, ...], method: str) -> Operation | None:
    return operations(version).get(((family, *_key(list(pattern))), method))


def resolve(doc: str, schema: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """Follow ``$ref`` chains; ``None`` where a reference leads nowhere."""
    seen = 0
    while "$ref" in schema:
        ref = schema["$ref"]
        seen += 1
        if seen > 32:
            return doc, None
        if ref.startswith("#/components/schemas/"):
            target = document(doc).get("components", {}).get("schemas", {})
            found = target.get(ref.rsplit("/", 1)[1])
        elif ref.startswith("DATA_PARSER_"):
            doc = _FILES[DATA_PARSER_FALLBACK][0]
            found = _data_parser_schema(ref)
        else:
            found = None
        if found is None:
            return doc, None
        schema = found
    return doc, schema


def data_parser_schema_name(ref: str) -> str | None:
    """The v0.0.40 component a v0.0.39 ``DATA_PARSER_*`` reference stands for."""
    schemas = document(_FILES[DATA_PARSER_FALLBACK][0])["components"]["schemas"]
    name = ref.removeprefix("DATA_PARSER_").lower()
    for candidate in (name, name.removesuffix("_ptr"), name.replace("_array", "_msg")):
        full = f"{DATA_PARSER_FALLBACK}_{candidate}"
        if full in schemas:
            return full
    return None


def _data_parser_schema(ref: str) -> dict[str, Any] | None:
    name = data_parser_schema_name(ref)
    if name is None:
        return None
    found: dict[str, Any] = document(_FILES[DATA_PARSER_FALLBACK][0])["components"]["schemas"][name]
    return found
