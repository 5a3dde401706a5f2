"""Progress bars: widgets in JupyterLab, text lines where nobody can see a widget.

``$ADKIT_PROGRESS=text`` (what ``adkit demo`` sets for its headless kernels) draws plain text
bars on stdout, at most one line every :data:`TEXT_INTERVAL_S` seconds, so a notebook run by
papermill shows its long cells' progress in the terminal; otherwise ``tqdm.auto`` picks a widget
in a notebook and a terminal bar elsewhere.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as text_tqdm

TEXT_INTERVAL_S = 15.0


def bar(iterable=None, **kw):
    """A tqdm bar (same arguments) of the kind described in the module doc."""
    if os.environ.get("ADKIT_PROGRESS") == "text":
        kw["mininterval"] = max(kw.get("mininterval", 0.1), TEXT_INTERVAL_S)
        return text_tqdm(iterable, file=sys.stdout, ascii=True, **kw)
    return auto_tqdm(iterable, **kw)
