"""Attention statistics under their public name; the code lives in :mod:`adkit.analysis.metrics`."""

from adkit.analysis.metrics import *  # noqa: F401,F403
from adkit.analysis.metrics import __all__  # noqa: F401
