"""``python -m cacheproxy.simulator --port P ...``."""

import sys

from cacheproxy.simulator.cli import main

sys.exit(main(sys.argv[1:]))
