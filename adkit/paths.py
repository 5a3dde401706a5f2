"""Where the project is: relative paths (runs, data, figures, profiles) resolve against its home.

The home is ``$ADKIT_HOME`` when set, else the nearest directory at or above the working
directory that holds ``config/profiles``, else the working directory. So the CLI at the
repository root, a notebook kernel in ``notebooks/``, papermill and the demo all find the
same files.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The project directory that relative paths resolve against (see the module doc)."""
    if os.environ.get("ADKIT_HOME"):
        return Path(os.environ["ADKIT_HOME"]).expanduser().resolve()
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        if (d / "config" / "profiles").is_dir():
            return d
    return cwd


def resolve(path: str | os.PathLike) -> Path:
    """``path`` made absolute against :func:`home` (absolute paths unchanged)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else home() / path
