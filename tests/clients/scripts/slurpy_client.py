"""Drive ebi-slurpy (v0.0.40-v0.0.42) as its README shows; print what it deserialized.

Runs in ebi-slurpy's own venv (tests/clients/venvs.py), not cacheproxy's:
stdin is a JSON request, stdout the JSON results. Request::

    {"url": ..., "version": "v0.0.41", "user": ..., "token": ...,
     "calls": [[label, "slurm"|"slurmdb", method, {kwargs}], ...],
     "submit": {job submission body} | null}

Each call goes through ``<method>_with_http_info`` so the response headers
(Cache-Status) come back with the deserialized model's ``to_dict()``.
"""

import importlib
import json
import sys


def main() -> None:
    request = json.load(sys.stdin)
    module = "slurpy.v" + request["version"].removeprefix("v").replace(".", "")
    slurpy = importlib.import_module(module)
    conf = slurpy.Configuration(host=request["url"])
    conf.api_key["user"] = request["user"]
    conf.api_key["token"] = request["token"]
    out = {"calls": {}, "submitted": None}
    with slurpy.ApiClient(conf) as client:
        apis = {"slurm": slurpy.SlurmApi(client), "slurmdb": slurpy.SlurmdbApi(client)}
        for label, family, method, kwargs in request["calls"]:
            try:
                resp = getattr(apis[family], method + "_with_http_info")(**kwargs)
            except slurpy.ApiException as exc:
                out["calls"][label] = {"status": exc.status, "error": str(exc)[:2000]}
                continue
            out["calls"][label] = {
                "status": resp.status_code,
                "headers": {k.lower(): v for k, v in (resp.headers or {}).items()},
                "data": resp.data.to_dict(),
            }
        if request.get("submit"):
            body = slurpy.JobSubmitReq.from_dict(request["submit"])
            resp = apis["slurm"].post_job_submit(body)
            out["submitted"] = resp.job_id
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
