"""``python -m cacheproxy.bench``: the same as ``cacheproxy bench``."""

import sys

from cacheproxy.bench.cli import main

raise SystemExit(main(sys.argv[1:]))
