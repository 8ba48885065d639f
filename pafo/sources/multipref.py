"""The MultiPref source (Miranda et al. 2024; hub id allenai/multipref): each comparison of two completions is
annotated by two crowdworkers and two domain experts, each identified by an evaluator id.

Schema read: one row per comparison with ``text`` (the prompt), ``completion_a``, ``completion_b``,
``subject_study`` (the expertise the prompt needs) and the lists ``normal_worker_annotations`` and
``expert_worker_annotations``, whose entries hold ``evaluator`` and ``overall_pref`` (``A-is-clearly-better``,
``A-is-slightly-better``, ``Tie``, ``B-is-slightly-better``, ``B-is-clearly-better``).

Mapping: every annotation is one user's preference (the user is its ``evaluator``): A or B chosen by the side its
``overall_pref`` names, ties left out. Evaluator attributes: ``pool`` (``normal`` or ``expert``: the list the
evaluator annotates in, ``both`` if both) and ``expertise`` (an expert's most frequent ``subject_study``;
``crowd`` for normal workers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import PafoInputError
from .annotators import annotator_dataset, mode_per_user, read_source
from .files import require_columns

__all__ = ["HUB_ID", "load_multipref", "multipref_rows"]

HUB_ID = "allenai/multipref"
SCHEMA = "MultiPref"
POOLS = {"normal_worker_annotations": "normal", "expert_worker_annotations": "expert"}
CROWD = "crowd"
BAD_PREFERENCE = ("{source}: row {row}: {pool} annotation {item} has overall_pref {value!r}; expected A-is-…-better, "
                  "Tie or B-is-…-better")
NO_EVALUATOR = "{source}: row {row}: {pool} annotation {item} has no evaluator; every annotation needs its evaluator id"
NO_ANNOTATIONS = "{source}: no normal_worker_annotations or expert_worker_annotations column; is this MultiPref?"


def _side(value: str) -> str | None:
    """'a' or 'b' for the side an overall_pref names, None for a tie; raises ValueError for anything else."""
    text = str(value).strip().lower()
    if text == "tie":
        return None
    if text.startswith(("a-is", "b-is")) and text.endswith("better"):
        return text[0]
    raise ValueError(value)


def _annotations(value) -> list:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value if isinstance(value, list) else []


def multipref_rows(frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(user_id, prompt, chosen, rejected) per annotation, and one row per annotation of (user_id, pool,
    subject_study) for the attributes."""
    require_columns(frame, ["text", "completion_a", "completion_b"], source)
    pools = [c for c in POOLS if c in frame]
    if not pools:
        raise PafoInputError(NO_ANNOTATIONS.format(source=source))
    rows, who = [], []
    for number, record in enumerate(frame.to_dict("records"), start=1):
        for column in pools:
            for item, note in enumerate(_annotations(record.get(column)), start=1):
                if not isinstance(note, dict):
                    continue
                evaluator = note.get("evaluator")
                if evaluator in (None, ""):
                    raise PafoInputError(NO_EVALUATOR.format(source=source, row=number, pool=POOLS[column],
                                                             item=item))
                try:
                    side = _side(note.get("overall_pref"))
                except ValueError:
                    raise PafoInputError(BAD_PREFERENCE.format(source=source, row=number, pool=POOLS[column],
                                                               item=item, value=note.get("overall_pref"))) from None
                who.append((str(evaluator), POOLS[column], record.get("subject_study")))
                if side is not None:
                    chosen, rejected = ("completion_a", "completion_b") if side == "a" else \
                        ("completion_b", "completion_a")
                    rows.append((str(evaluator), record["text"], record[chosen], record[rejected]))
    return (pd.DataFrame(rows, columns=["user_id", "prompt", "chosen", "rejected"]),
            pd.DataFrame(who, columns=["user_id", "pool", "subject_study"]))


def _attributes(who: pd.DataFrame) -> pd.DataFrame:
    pools = who.groupby("user_id")["pool"].agg(lambda s: s.iloc[0] if s.nunique() == 1 else "both")
    experts = who[who["pool"] == "expert"]
    expertise = mode_per_user(experts["user_id"], experts["subject_study"]) if len(experts) else pd.Series(
        dtype=object)
    table = pd.DataFrame({"pool": pools})
    table["expertise"] = expertise.reindex(table.index).where(table["pool"] != "normal", CROWD).fillna(CROWD)
    return table


def load_multipref(path: str | None, *, test_fraction: float, val_fraction: float, seed: int,
                   **_: object) -> object:
    """MultiPref annotations as per-evaluator pairs, with each evaluator's pool and expertise as attributes."""
    source = str(path or HUB_ID)
    frame = read_source(path, HUB_ID)
    rows, who = multipref_rows(frame, source)
    return annotator_dataset(rows, _attributes(who), name="multipref", source=source, schema=SCHEMA,
                             test_fraction=test_fraction, val_fraction=val_fraction, seed=seed,
                             notes={"annotations": len(who), "ties": len(who) - len(rows)})
