"""``PrivateData`` words: the one parser lives in :mod:`cacheproxy.core.privatedata`
(the proxy reads the same setting); re-exported here for the simulator."""

from cacheproxy.core.privatedata import WORDS, parse, spell

__all__ = ["WORDS", "parse", "spell"]
