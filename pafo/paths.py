"""Where PAFO Studio keeps its runtime files (embeddings cache, run registry, weights)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import PafoEnvironmentError, PafoInputError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
MSG_HOME_NOT_FOLDER = "PAFO_HOME {path} is not a folder (a file is in the way); point $PAFO_HOME at a folder"
MSG_HOME_UNUSABLE = "PAFO_HOME {path} cannot be created ({reason}); make it writable or point $PAFO_HOME elsewhere"


def home_path() -> Path:
    """Where the runtime folder is (``$PAFO_HOME`` if set, else ``cached_models/`` beside the package), without
    creating it."""
    return Path(os.environ.get("PAFO_HOME") or PACKAGE_ROOT / "cached_models")


def pafo_home() -> Path:
    """The runtime folder (:func:`home_path`), created if missing."""
    return ensure_home(home_path())


def ensure_home(home: Path) -> Path:
    """``home`` as an existing folder: a file in its place is a setting to fix (exit 2), a folder that cannot be
    made is a fault of the machine (exit 3)."""
    try:
        home.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise PafoInputError(MSG_HOME_NOT_FOLDER.format(path=home)) from None
    except OSError as exc:
        raise PafoEnvironmentError(MSG_HOME_UNUSABLE.format(path=home, reason=exc.strerror or exc)) from None
    return home


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` alone must set one to read
    it, which would briefly change it for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    Readers see the old file or the new one, never half of one. The file gets the mode a plain ``open`` would
    give it (0666 less the umask, so 0644 typically): ``mkstemp`` creates its temp file 0600, which the rename
    would otherwise carry over to a result file other users and tools cannot read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file: say which one (the CLI's message needs it)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def resolve_inside(folder: str | os.PathLike, relative: str | os.PathLike) -> Path | None:
    """``folder/relative`` with symlinks resolved, or ``None`` when it lands outside ``folder`` (an absolute path,
    ``..`` or a symlink leading elsewhere): a path read from a run folder may only name that folder's own files."""
    root = Path(folder).resolve()
    target = (root / relative).resolve()
    return target if target.is_relative_to(root) else None


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` (resolved, symlinks followed; it need not exist) is ``folder`` or lies under it."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())
