"""``cacheproxy bench``: how many clients can my controller take?

One command, no Slurm needed: start the simulator and the proxy as separate
processes, replay the same open-loop workload straight at the simulator and
through the proxy, and report what the proxy does to controller load and to
client latency.

Module map (one job each)::

    workload.py     the workload: who asks what, how often (a seeded timetable)
    identities.py   clients' users and tokens; the simulator's --users-file
    slurmapi.py     paths, submit bodies, and reading job ids and states back
    cachestatus.py  Cache-Status / X-Cache-Status -> hit, miss, collapsed, pass
    httpclient.py   the generator's HTTP client (aiohttp: about 4x cheaper than httpx)
    loadgen.py      runs a timetable against one target, open loop
    ryw.py          read-your-writes bookkeeping
    counters.py     where upstream request counts come from (sim, proxy, /diag)
    summary.py      samples -> the numbers of one run
    sysload.py      how busy the machine was, and how much of that was us
    runner.py       one session: the processes under test, one run per target
    procs.py        starting and stopping the simulator, the proxy and nginx
    nginx.py        the nginx proxy_cache configuration for --compare nginx
    capacity.py     --sweep: the most users an upstream budget supports
    report.py       report.json, report.md (and the schema check)
    plots.py        the PNG plots
    cli.py          ``cacheproxy bench``
    clientcost.py   httpx vs aiohttp CPU per request (why the generator uses aiohttp)
"""
