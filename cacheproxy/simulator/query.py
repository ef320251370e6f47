"""What slurmrestd reads from a request before any operation runs: the query
(URL or, from 23.11.6, the body), and the merged OpenAPI document it serves."""

from __future__ import annotations

from typing import Any

import orjson

from cacheproxy.simulator import envelope
from cacheproxy.simulator.envelope import Response
from cacheproxy.simulator.routes import Match
from cacheproxy.simulator.specs import document, spec_files


def merged_openapi(versions: list[str]) -> bytes:
    """The spec a daemon serving ``versions`` answers on ``/openapi/v3``.

    The spec files of those versions merged, paths made absolute (v0.0.39's
    static files give them relative to ``servers``), as 23.11+ merges its
    plugins' specs.
    """
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for name in dict.fromkeys(f for v in versions for f in spec_files(v)):
        doc = document(name)
        prefix = doc.get("servers", [{}])[0].get("url", "/").rstrip("/")
        for path, item in doc["paths"].items():
            full = prefix + "/" + path.lstrip("/")
            if any(v in full for v in versions) or not full.startswith(("/slurm", "/util")):
                paths[full] = item
        schemas.update(doc.get("components", {}).get("schemas", {}))
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "Slurm REST API", "version": "simulated"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def request_query(
    found: Match, method: str, query: dict[str, str], has_url_query: bool, body: bytes
) -> dict[str, str] | Response:
    """The query slurmrestd acts on, or its 400.

    POST bodies are parsed by the operation.  Before 23.11.6 any other method
    with a body is refused; from 23.11.6 on the body *is* the query, and a
    body together with a URL query is refused (commit e06c9303cb).
    """
    if not body:
        return query
    if method == "POST":
        if body.strip():
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                return envelope.plain(400, "Unable to parse query.")
        return query
    if not found.release.body_is_query:
        return envelope.plain(400, "Unexpected http body provided for non-POST method")
    if has_url_query:
        return envelope.plain(400, "Unexpected HTTP body provided when URL Query provided")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return envelope.plain(400, "Unable to parse query.")
    if not isinstance(data, dict):
        return query if method == "DELETE" else envelope.plain(400, "Unable to parse query.")
    return {str(k): _query_text(v) for k, v in data.items()}


def integer(text: str) -> bool:
    """Does ``data_convert_type(..., DATA_TYPE_INT_64)`` take ``text``?"""
    try:
        int(text)
    except ValueError:
        return False
    return True


def _query_text(value: Any) -> str:
    """A body member as the text a URL query would carry (lists comma-joined)."""
    if isinstance(value, list):
        return ",".join(_query_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
