"""Validate simulator bodies against the OpenAPI spec of their version.

The schemas are the vendored copies of ``shared/slurm-openapi`` that the
simulator follows (``cacheproxy.simulator.specs``), read as JSON Schema
(Draft 4, which OpenAPI 3.0 schemas follow).  Tolerated, each for a reason
the real daemon gives:

* ``required`` entries written as paths (``"nodes/count"``): a spec defect;
* ``null`` where the spec wants a value: the daemons dump NULL pointers as
  ``null`` (a pending job's ``job_resources``; 22.05's unset integers);
* v0.0.36-v0.0.38 only: types.  Their specs were written by hand and their
  plugins disagree with them (integers where the spec says string in
  ``meta.Slurm.version``; v0.0.37's jobs.c dumps ``billable_tres`` with
  data_set_float, v0.0.36's partitions.c ``preemption_mode`` as a list, both
  declared strings).  The real 22.05.8 bodies in ``shared/slurm-openapi/examples``
  fail only on types (pinned by ``test_real_22_05_bodies_deviate_only_as_tolerated``).
  Nor do those specs list every key the plugins send (real v0.0.38 jobs carry
  ``group_name``), so key sets are not checked either; v0.0.38 is checked byte
  for byte against the real bodies in ``test_jsonfmt_and_lock.py``.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from cacheproxy.core.request import LEGACY_VERSIONS
from cacheproxy.simulator import specs
from cacheproxy.simulator.routes import ROUTES

#: A value for every path parameter of the simulated cluster (tests/simulator defaults).
PARAMS = {
    "node_name": "cn001",
    "partition_name": "normal",
    "reservation_name": "maint",
    "name": "user001",
    "account_name": "acct01",
    "qos": "normal",
    "cluster_name": "simcluster",
}


def _rewrite_refs(node: Any) -> Any:
    """v0.0.39: point ``DATA_PARSER_*`` at the v0.0.40 schema the simulator follows."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("DATA_PARSER_"):
            name = specs.data_parser_schema_name(ref)
            return {"$ref": f"#/components/schemas/{name}"} if name else {}
        return {k: _rewrite_refs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def validator(version: str, op: specs.Operation) -> jsonschema.Draft4Validator:
    assert op.schema is not None
    schemas: dict[str, Any] = {}
    for name in (*specs.spec_files(version), *_fallback(version)):
        schemas.update(specs.document(name).get("components", {}).get("schemas", {}))
    root = _rewrite_refs({**op.schema, "components": {"schemas": schemas}})
    return jsonschema.Draft4Validator(root)


def _fallback(version: str) -> tuple[str, ...]:
    return specs.spec_files(specs.DATA_PARSER_FALLBACK) if version == "v0.0.39" else ()


def errors(version: str, v: jsonschema.Draft4Validator, body: Any) -> list[str]:
    out = []
    for e in v.iter_errors(body):
        if e.validator == "required" and "/" in str(e.message).split("'")[1]:
            continue
        if e.validator == "type" and e.instance is None:
            continue
        if version in LEGACY_VERSIONS and e.validator == "type":
            continue
        out.append(f"{'/'.join(str(p) for p in e.path)}: {e.message[:160]}")
    return out


def get_urls(version: str, job_id: int) -> list[tuple[str, specs.Operation]]:
    """Every GET the simulator serves under ``version``, with real parameters."""
    out = []
    for route in ROUTES:
        if "GET" not in route.methods or route.pattern == ("reconfigure",):
            continue  # reconfigure is a GET with side effects
        op = specs.lookup(version, route.family, route.pattern, "GET")
        if op is None or op.schema is None:
            continue
        params = {**PARAMS, "job_id": str(job_id)}
        segs = [params[p[1:-1]] if p.startswith("{") else p for p in route.pattern]
        out.append((f"/{route.family}/{version}/" + "/".join(segs), op))
    return out


def body_errors(
    version: str, family: str, pattern: tuple[str, ...], body: Any, status: int = 200
) -> list[str]:
    """What the spec of ``version`` says is wrong with ``body``, a GET's answer
    of ``status``: every data_parser spec declares the ``default`` (error)
    response with the 200 schema, so one validator serves both.

    A failed read may lack the payload's required top-level keys: the
    handlers stop before dumping (``goto done``), as the real 25.05 and 25.11
    "node not found" answers show (``meta``, ``errors``, ``warnings`` only,
    200).  So a top-level ``required`` is tolerated when ``errors`` is not
    empty, and on any status other than 200.
    """
    op = specs.lookup(version, family, pattern, "GET")
    assert op is not None, (version, family, pattern)
    assert op.schema is not None, (version, family, pattern)
    found = errors(version, validator(version, op), body)
    if status != 200 or (isinstance(body, dict) and body.get("errors")):
        found = [e for e in found if not (e.startswith(": ") and "is a required property" in e)]
    return found
