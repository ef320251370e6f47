"""Drive SchedMD's ``slurm-rest`` 0.0.37.1 (openapi-generator 5's "python"
client of 22.05's v0.0.37 and dbv0.0.37) as its README shows; print what it
deserialized.

Runs in the client's own venv (tests/clients/venvs.py): stdin a JSON request,
stdout the JSON results::

    {"url": ..., "user": ..., "token": ...,
     "calls": [[label, method, {kwargs}], ...],
     "submit": {"script": ..., "job": {...}} | null}

Every call asks for ``(data, status, headers)`` (``_return_http_data_only=False``)
so Cache-Status comes back beside the deserialized model's ``to_dict()``.
The generator checks every member's type against the spec as it
deserializes, and a body the spec does not describe fails here as it
would in a user's program (``_check_return_type=False`` does not stop it:
the models' constructors check again).
"""

import json
import sys

import slurm_rest
from slurm_rest.api.slurm_api import SlurmApi
from slurm_rest.model.v0037_job_properties import V0037JobProperties
from slurm_rest.model.v0037_job_submission import V0037JobSubmission


def plain(value):
    """A deserialized model as JSON-ready data, through the models' public
    ``attribute_map`` and item access.

    Not ``to_dict()`` nor ``ApiClient.sanitize_for_serialization()``: both go
    through ``model_to_dict()``, which raises AttributeError
    ``'dict' object has no attribute '_composed_schemas'`` on any list of
    free-form objects (a bug of this 5.x generator; v0.0.37's diag
    ``rpcs_by_message_type`` and dbv0.0.37's lists hold such objects).
    """
    if hasattr(value, "attribute_map") and hasattr(value, "get"):
        return {
            json_name: plain(value.get(name))
            for name, json_name in value.attribute_map.items()
            if name in value
        }
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def main() -> None:
    request = json.load(sys.stdin)
    conf = slurm_rest.Configuration(host=request["url"])
    conf.api_key["user"] = request["user"]
    conf.api_key["token"] = request["token"]
    out = {"calls": {}, "submitted": None}
    with slurm_rest.ApiClient(conf) as client:
        api = SlurmApi(client)
        for label, method, kwargs in request["calls"]:
            try:
                data, status, headers = getattr(api, method)(_return_http_data_only=False, **kwargs)
            except slurm_rest.ApiException as exc:
                out["calls"][label] = {"status": exc.status, "error": str(exc)[:2000]}
                continue
            except (slurm_rest.ApiTypeError, slurm_rest.ApiValueError) as exc:
                out["calls"][label] = {"status": "deserialize", "error": str(exc)[:2000]}
                continue
            out["calls"][label] = {
                "status": status,
                "headers": {k.lower(): v for k, v in headers.items()},
                "data": plain(data),
            }
        if request.get("submit"):
            body = request["submit"]
            job = V0037JobProperties(**body["job"])
            resp = api.slurmctld_submit_job(V0037JobSubmission(script=body["script"], job=job))
            out["submitted"] = resp.job_id
    json.dump(out, sys.stdout, default=str)


if __name__ == "__main__":
    main()
