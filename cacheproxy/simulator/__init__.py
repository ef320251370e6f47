"""A simulated slurmrestd (22.05 and 25.x API shapes) for benchmarks and tests.

Use from tests::

    from cacheproxy.simulator import Simulator, SimConfig, running_simulator

    with running_simulator(cost_model="none", jobs=50) as base_url:
        ...                                   # uvicorn in a background thread

    app = Simulator(SimConfig(cost_model="none"))   # the raw ASGI app

or as a subprocess with :func:`running_simulator_process` (exact slurmrestd
status lines, e.g. ``HTTP/1.1 304 NOT MODIFIED``).
"""

from cacheproxy.simulator.app import Simulator
from cacheproxy.simulator.config import CostParams, SimConfig, default_users
from cacheproxy.simulator.server import running_app, running_simulator, running_simulator_process

__all__ = [
    "CostParams",
    "SimConfig",
    "Simulator",
    "default_users",
    "running_app",
    "running_simulator",
    "running_simulator_process",
]
