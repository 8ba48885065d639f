"""The folders the app reads data from (its *data roots*), declared once.

The app runs as whoever started it, and its path box would otherwise read any file that user can read: a 0600
pairs file of another project was previewed, and a 0600 ``hr.csv`` leaked its header in an error. So every path
the app loads (a dataset, a reward-model folder to audit) must resolve, symlinks followed, inside a data root:

- ``../shared/data`` beside the repository (the DSP files the demo and tests read),
- ``$PAFO_HOME/uploads`` (files uploaded through the app),
- the app's working directory,
- every folder of ``$PAFO_DATA_ROOTS`` (``os.pathsep``-separated, e.g. ``/data/a:/data/b``).

The command line is not confined: its user owns the shell and reads what they name.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PafoInputError
from .paths import PACKAGE_ROOT, pafo_home

__all__ = ["DATA_ROOTS_ENV", "MSG_OUTSIDE_ROOTS", "UPLOADS", "app_paths", "check_app_config", "check_app_path",
           "data_roots"]

DATA_ROOTS_ENV = "PAFO_DATA_ROOTS"
SHARED_DATA = PACKAGE_ROOT.parent / "shared" / "data"
UPLOADS = "uploads"  # the folder of $PAFO_HOME that keeps the app's uploads
MSG_OUTSIDE_ROOTS = ("{path}: is outside the folders the app reads data from ({roots}); upload the file, or add its "
                     "folder to ${env} (folders separated by '{sep}') and restart the app")


def data_roots() -> list[Path]:
    """The data roots in order, resolved (each may not exist yet)."""
    extra = [Path(p).expanduser() for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    roots = [SHARED_DATA, pafo_home() / UPLOADS, Path.cwd(), *extra]
    return list(dict.fromkeys(root.resolve() for root in roots))


def check_app_path(path: str | os.PathLike | None) -> None:
    """Refuse a local path outside every data root (URLs and hub ids, which read nothing local, pass)."""
    if not path:
        return
    from .sources.files import is_remote

    text = str(path)
    if is_remote(text):
        return
    target = Path(text).expanduser().resolve()
    roots = data_roots()
    if not any(target.is_relative_to(root) for root in roots):
        raise PafoInputError(MSG_OUTSIDE_ROOTS.format(path=text, roots=", ".join(map(str, roots)),
                                                      env=DATA_ROOTS_ENV, sep=os.pathsep))


def app_paths(config: dict) -> list[str]:
    """The local paths a config dict reads: a DataConfig's ``path`` and ``user_attributes``, an experiment's or
    audit's ``data.path`` and ``data.user_attributes`` and an audit's source files and folders."""
    data = config.get("data") if isinstance(config.get("data"), dict) else config
    return [p for p in (data.get("path"), data.get("user_attributes"),
                        *((s or {}).get("path") for s in config.get("sources") or [])) if p]


def check_app_config(config: dict) -> None:
    """:func:`check_app_path` for every path of a config dict (what the app loads or starts a run on)."""
    for path in app_paths(config):
        check_app_path(path)
