"""History compression: strategies that score transitions, the shared keep step, compressed
model contexts, and what a decision costs.

* :mod:`adkit.compress.strategies`: the compressors (the original toolkit's six and more);
* :mod:`adkit.compress.context`: compressing a model context or training window the same way;
* :mod:`adkit.compress.evict`: what an evicting key/value cache of K entries holds, decision by
  decision, and the per-query keep mask that trains a model the way that cache uses it;
* :mod:`adkit.compress.cost`: wall-clock, peak memory and FLOPs of a decision.

>>> from adkit.compress import RecencyCompressor, make
>>> states, actions, rewards, next_states = RecencyCompressor(keep_recent=16).compress(s, a, r, s2)
"""

from adkit.compress.strategies import *  # noqa: F401,F403  (the public strategy names)
from adkit.compress.strategies import __all__  # noqa: F401
