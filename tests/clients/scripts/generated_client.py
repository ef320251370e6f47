"""Drive a client made by today's openapi-generator (pydantic models), as its
README shows; print what it deserialized.

Used for ebi-slurpy (``slurpy.v0040``...) and openapi-slurm-0-0-38-client
(``openapi_client``). Runs in the client's own venv (tests/clients/venvs.py),
not cacheproxy's: stdin is a JSON request, stdout the JSON results::

    {"package": "slurpy.v0041", "apis": {"slurm": "SlurmApi", ...},
     "url": ..., "user": ..., "token": ...,
     "calls": [[label, api, method, {kwargs}], ...],
     "submit": [api, method, model class, {body}] | null}

Each call goes through ``<method>_with_http_info`` so the response headers
(Cache-Status) come back beside the deserialized model's ``to_dict()``.
"""

import importlib
import json
import sys


def main() -> None:
    request = json.load(sys.stdin)
    client_pkg = importlib.import_module(request["package"])
    conf = client_pkg.Configuration(host=request["url"])
    conf.api_key["user"] = request["user"]
    conf.api_key["token"] = request["token"]
    out = {"calls": {}, "submitted": None}
    with client_pkg.ApiClient(conf) as client:
        apis = {k: getattr(client_pkg, v)(client) for k, v in request["apis"].items()}
        for label, api, method, kwargs in request["calls"]:
            try:
                resp = getattr(apis[api], method + "_with_http_info")(**kwargs)
            except client_pkg.ApiException as exc:
                out["calls"][label] = {"status": exc.status, "error": str(exc)[:2000]}
                continue
            out["calls"][label] = {
                "status": resp.status_code,
                "headers": {k.lower(): v for k, v in (resp.headers or {}).items()},
                "data": resp.data.to_dict() if resp.data is not None else None,
            }
        if request.get("submit"):
            api, method, model, body = request["submit"]
            resp = getattr(apis[api], method)(getattr(client_pkg, model).from_dict(body))
            out["submitted"] = resp.job_id
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
