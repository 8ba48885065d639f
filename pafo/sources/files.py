"""Reading user files, URLs and hub ids into tables, with messages that say what is wrong and how to fix it."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from ..errors import PafoInputError
from ..jsonio import JSONTooDeepError, loads

__all__ = ["check_text_file", "ensure_online", "is_remote", "read_json_records", "read_table", "require_columns"]

MISSING_FILE = "{path}: no such file; check the path (relative paths are from {cwd})"
NOT_A_FILE = "{path}: is a folder, not a file; give the data file inside it"
NOT_REGULAR = ("{path}: is a {kind}, not a regular file, so it is not read (it could block or never end); copy the "
               "data into a file and give that file's path")
SYMLINK_LOOP = "{path}: is a symbolic link that loops back on itself; point it (or --path) at the real file"
MIXED_JSONL = ("{path}: line {line} is a JSON {kind}, not an object; each line of a JSONL file must be one JSON "
               "object such as {{\"user_id\": ..., \"prompt\": ...}}")
NOT_RECORDS = ("{path}: item {item} is a JSON {kind}, not an object; a JSON file must hold one object or a list of "
               "objects with the column names as keys")
UNREADABLE = "{path}: cannot be read ({reason}); check its permissions"
NOT_UTF8 = "{path}: is not UTF-8 text (byte {offset}); re-save it as UTF-8"
INVALID_JSON = "{path}: invalid JSON at line {line}, column {column} ({reason}); fix the file or export it again"
TOO_DEEP = "{path}: {reason}; fix the file or export it again"
INVALID_JSONL = "{path}: line {line} is not valid JSON ({reason}); each line of a JSONL file must be one JSON object"
UNKNOWN_FORMAT = "{path}: unknown format {suffix!r}; use .csv, .jsonl, .json or .parquet"
BAD_PARQUET = "{path}: not a readable Parquet file ({reason}); export it again or use CSV/JSONL"
BAD_CSV = "{path}: cannot be parsed as CSV ({reason}); check the delimiter and quoting"
# Parse errors name the file, row and the columns the loader expected, never what the file holds (its header, a
# cell): the app may run as another user than the analyst, and a 0600 file's header once leaked through "found:".
MISSING_COLUMNS = "{path}: missing column(s) {missing}; the file needs {required} (it has {count} column(s))"
OFFLINE = (
    "{source}: cannot be downloaded from this machine ({reason}); download the file elsewhere and load it from "
    "its local path instead (CSV, JSONL, JSON or Parquet)"
)
EMPTY_FILE = "{path}: the file has no rows; add data rows below the header"

TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".pq")


def is_remote(source: str) -> bool:
    """True for URLs and for hub ids (``owner/name`` or ``owner/name:config`` that is not an existing local path)."""
    if "://" in source:
        return True
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not Path(source).exists() and not Path(source).suffix


_FILE_KINDS = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def _check_local(path: Path) -> Path:
    """A path that exists and is a readable regular file (after following links): checked before any read, so a
    FIFO (blocks forever) or a link to ``/dev/zero`` (never ends) is refused instead of read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PafoInputError(SYMLINK_LOOP.format(path=path)) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise PafoInputError(MISSING_FILE.format(path=path, cwd=os.getcwd())) from None
        raise PafoInputError(UNREADABLE.format(path=path, reason=exc.strerror or exc)) from None
    if stat.S_ISDIR(mode):
        raise PafoInputError(NOT_A_FILE.format(path=path))
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "special file")
        raise PafoInputError(NOT_REGULAR.format(path=path, kind=kind))
    if not os.access(path, os.R_OK):
        raise PafoInputError(UNREADABLE.format(path=path, reason="permission denied"))
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PafoInputError(NOT_UTF8.format(path=path, offset=exc.start)) from None
    except OSError as exc:
        raise PafoInputError(UNREADABLE.format(path=path, reason=exc.strerror or exc)) from None


def _json_error(path: Path, text: str) -> PafoInputError | None:
    try:
        loads(text)
    except JSONTooDeepError as exc:
        return PafoInputError(TOO_DEEP.format(path=path, reason=exc))
    except json.JSONDecodeError as exc:
        return PafoInputError(INVALID_JSON.format(path=path, line=exc.lineno, column=exc.colno, reason=exc.msg))
    return None


def check_text_file(path: Path) -> str:
    """The text of a local file that exists, is readable and is UTF-8 (else a message saying which)."""
    return _read_text(_check_local(path))


def read_json_records(path: Path) -> str:
    """Validate that ``path`` is a readable UTF-8 JSON file and return its text (for ``datasets`` to load)."""
    text = _read_text(_check_local(path))
    error = _json_error(path, text)
    if error:
        raise error
    return text


def _json_kind(value: object) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = loads(line)
        except JSONTooDeepError as exc:
            raise PafoInputError(TOO_DEEP.format(path=f"{path}: line {number}", reason=exc)) from None
        except json.JSONDecodeError as exc:
            raise PafoInputError(INVALID_JSONL.format(path=path, line=number, reason=exc.msg)) from None
        if not isinstance(row, dict):  # pandas would silently build columns 0, 1, ... from a list line
            raise PafoInputError(MIXED_JSONL.format(path=path, line=number, kind=_json_kind(row)))
        rows.append(row)
    return pd.DataFrame(rows)


def _read_local(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise PafoInputError(UNKNOWN_FORMAT.format(path=path, suffix=path.suffix or "(none)"))
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise PafoInputError(BAD_PARQUET.format(path=path, reason=str(exc).splitlines()[0])) from None
    text = _read_text(path)
    if suffix == ".jsonl":
        return _read_jsonl(path, text)
    if suffix == ".json":
        error = _json_error(path, text)
        if error:
            raise error
        data = loads(text)
        records = data if isinstance(data, list) else [data]
        wrong = next((i for i, item in enumerate(records) if not isinstance(item, dict)), None)
        if wrong is not None:
            raise PafoInputError(NOT_RECORDS.format(path=path, item=wrong, kind=_json_kind(records[wrong])))
        return pd.DataFrame(records)
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise PafoInputError(BAD_CSV.format(path=path, reason=str(exc).strip())) from None


def ensure_online(source: str) -> None:
    """Fail fast, with the fix, when a URL or hub id cannot be reached (instead of minutes of retries)."""
    host = urlparse(source).hostname if "://" in source else "huggingface.co"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise PafoInputError(OFFLINE.format(source=source, reason="offline mode is set (HF_HUB_OFFLINE=1)"))
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        raise PafoInputError(OFFLINE.format(source=source, reason=f"{host} is unreachable: {exc}")) from None


def _read_remote(source: str) -> pd.DataFrame:
    """A URL of a table file or a hub dataset id, through ``datasets`` (works only when online)."""
    import datasets

    ensure_online(source)
    try:
        if "://" in source:
            suffix = Path(source.split("?")[0]).suffix.lower().lstrip(".")
            builder = {"jsonl": "json", "pq": "parquet"}.get(suffix, suffix)
            dataset = datasets.load_dataset(builder, data_files=source, split="train")
        else:  # ORG/NAME or ORG/NAME:config
            name, _, subset = source.partition(":")
            dataset = datasets.load_dataset(name, subset or None, split="train")
    except Exception as exc:  # connection, DNS and hub errors come in many types
        raise PafoInputError(OFFLINE.format(source=source, reason=type(exc).__name__)) from None
    return dataset.to_pandas()


def read_table(source: str | os.PathLike) -> pd.DataFrame:
    """A table from a local CSV/JSONL/JSON/Parquet file, a URL or a hub id."""
    source_text = str(source)
    frame = _read_remote(source_text) if is_remote(source_text) else _read_local(_check_local(Path(source_text)))
    if frame.empty:
        raise PafoInputError(EMPTY_FILE.format(path=source_text))
    return frame


def require_columns(frame: pd.DataFrame, required: list[str], source: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise PafoInputError(
            MISSING_COLUMNS.format(path=source, missing=", ".join(missing), required=", ".join(required),
                                   count=len(frame.columns))
        )
