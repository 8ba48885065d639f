"""HelpSteer3-style preferences (Wang et al. 2025; hub id nvidia/HelpSteer3, config ``preference``): each sample
has two responses and an ``individual_preference`` list with one entry per annotator.

Schema read: ``context`` (the conversation so far: a list of ``{role, content}`` turns, or a string),
``response1``, ``response2``, optional ``language`` and ``individual_preference``: a list of objects with
``score`` (−3 … 3: negative prefers ``response1``, positive ``response2``, 0 no preference) and an annotator id
(``annotator_id``, or ``annotator``, ``user_id``, ``worker_id``, ``evaluator``).

Mapping: every entry with a non-zero score is one annotator's pair; the prompt is the context (a single user turn as
its text, several as ``role: content`` lines). Annotator attributes: any other scalar field of the entries (their
most frequent value per annotator, e.g. an ``annotator_locale``) and ``language``, the annotator's most frequent
sample language. The public HelpSteer3 release does not identify annotators across samples (its entries carry a
score and reasoning only, as its dataset card describes it), so it cannot be read as per-user data: the loader says so
and names the first entry.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import PafoInputError
from .annotators import annotator_dataset, mode_per_user, read_source, render_messages
from .files import require_columns

__all__ = ["HUB_ID", "ID_KEYS", "helpsteer3_rows", "load_helpsteer3"]

HUB_ID = "nvidia/HelpSteer3"
HUB_CONFIG = "preference"
SCHEMA = "HelpSteer3"
ID_KEYS = ("annotator_id", "annotator", "user_id", "worker_id", "evaluator")
NOT_ATTRIBUTES = ("score", "reasoning", "feedback1", "feedback2", *ID_KEYS)
NO_ANNOTATOR = ("{source}: row {row}: individual_preference entry {item} names no annotator (one of "
                f"{', '.join(ID_KEYS)}); per-user data needs the same annotator id across samples (the public "
                "HelpSteer3 release has none: add an annotator_id to each entry)")
BAD_SCORE = ("{source}: row {row}: individual_preference entry {item} has score {value!r}; scores are whole numbers "
             "from -3 (response1 much better) to 3 (response2 much better)")


def _entries(value) -> list:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value if isinstance(value, list) else []


def _score(value, source: str, row: int, item: int) -> int:
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = np.nan
    if not np.isfinite(score) or score != int(score) or not -3 <= score <= 3:
        raise PafoInputError(BAD_SCORE.format(source=source, row=row, item=item, value=value))
    return int(score)


def helpsteer3_rows(frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(user_id, prompt, chosen, rejected) per scored entry, and one row per entry of each annotator's other
    fields (for the attributes)."""
    require_columns(frame, ["context", "response1", "response2", "individual_preference"], source)
    rows, seen = [], []
    for number, record in enumerate(frame.to_dict("records"), start=1):
        prompt = render_messages(record["context"])
        for item, entry in enumerate(_entries(record["individual_preference"]), start=1):
            if not isinstance(entry, dict):
                continue
            annotator = next((entry[k] for k in ID_KEYS if entry.get(k) not in (None, "")), None)
            if annotator is None:
                raise PafoInputError(NO_ANNOTATOR.format(source=source, row=number, item=item))
            score = _score(entry.get("score"), source, number, item)
            extra = {k: v for k, v in entry.items() if k not in NOT_ATTRIBUTES and not isinstance(v, dict | list)}
            seen.append({"user_id": str(annotator), **extra,
                         **({"language": record["language"]} if "language" in record else {})})
            if score:
                first, second = record["response1"], record["response2"]
                chosen, rejected = (first, second) if score < 0 else (second, first)
                rows.append((str(annotator), prompt, chosen, rejected))
    return pd.DataFrame(rows, columns=["user_id", "prompt", "chosen", "rejected"]), pd.DataFrame(seen)


def _attributes(seen: pd.DataFrame) -> pd.DataFrame | None:
    columns = [c for c in seen.columns if c != "user_id"]
    if not columns:
        return None
    return pd.DataFrame({c: mode_per_user(seen["user_id"], seen[c]) for c in columns})


def load_helpsteer3(path: str | None, *, test_fraction: float, val_fraction: float, seed: int,
                    **_: object) -> object:
    """HelpSteer3-style individual preferences as per-annotator pairs."""
    source = str(path or f"{HUB_ID}:{HUB_CONFIG}")
    frame = read_source(path, HUB_ID, None if path else HUB_CONFIG)
    rows, seen = helpsteer3_rows(frame, source)
    return annotator_dataset(rows, _attributes(seen), name="helpsteer3", source=source, schema=SCHEMA,
                             test_fraction=test_fraction, val_fraction=val_fraction, seed=seed,
                             notes={"annotations": len(seen), "ties": len(seen) - len(rows)})
