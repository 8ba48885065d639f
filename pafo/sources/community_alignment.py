"""The Community Alignment source (Zhang et al. 2025; hub id facebook/community-alignment-dataset): annotators
from several countries pick their preferred response among several, turn by turn, with their demographics.

Schema read: one row per conversation with ``annotator_id``; per turn (``first``, ``second``, ``third``,
``fourth``) ``<turn>_turn_prompt``, the candidates ``<turn>_turn_response_a`` … ``_d`` and
``<turn>_turn_preferred_response`` (``response_b`` or ``b``); the annotator's columns ``annotator_age``,
``annotator_gender``, ``annotator_education_level``, ``annotator_political``, ``annotator_ethnicity``,
``annotator_country`` … and ``assigned_lang``.

Mapping: in each turn the preferred response is chosen over every other non-empty candidate (best-vs-rest: three
pairs from four candidates); the prompt is that turn's user message. Attributes: every ``annotator_*`` column
without its prefix (``age``, ``gender``, ``country`` …) and ``assigned_lang``, each annotator's most frequent value.
"""

from __future__ import annotations

import pandas as pd

from ..attributes import cell_text
from ..errors import PafoInputError
from .annotators import annotator_dataset, mode_per_user, read_source
from .files import require_columns

__all__ = ["HUB_ID", "TURNS", "community_alignment_rows", "load_community_alignment"]

HUB_ID = "facebook/community-alignment-dataset"
SCHEMA = "Community Alignment"
TURNS = ("first", "second", "third", "fourth")
LETTERS = "abcdefgh"
BAD_CHOICE = ("{source}: row {row}: {column} is {value!r}, not one of its candidates ({found}); expected e.g. "
              "response_a")
NO_TURNS = "{source}: no first_turn_prompt / first_turn_response_a columns; is this Community Alignment data?"


def _letter(value) -> str:
    text = (cell_text(value) or "").lower()
    return text.removeprefix("response_").removeprefix("response ").strip()


def community_alignment_rows(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """(user_id, prompt, chosen, rejected): each turn's preferred candidate over each other candidate."""
    require_columns(frame, ["annotator_id"], source)
    turns = [t for t in TURNS if f"{t}_turn_prompt" in frame and f"{t}_turn_response_a" in frame]
    if not turns:
        raise PafoInputError(NO_TURNS.format(source=source))
    rows = []
    for number, record in enumerate(frame.to_dict("records"), start=1):
        user = cell_text(record["annotator_id"])
        for turn in turns:
            prompt = cell_text(record.get(f"{turn}_turn_prompt"))
            candidates = {letter: text for letter in LETTERS
                          if (text := cell_text(record.get(f"{turn}_turn_response_{letter}")))}
            column = f"{turn}_turn_preferred_response"
            choice = _letter(record.get(column))
            if not (user and prompt and choice and candidates):
                continue
            if choice not in candidates:
                raise PafoInputError(BAD_CHOICE.format(source=source, row=number, column=column,
                                                       value=record.get(column), found=", ".join(candidates)))
            rows += [(user, prompt, candidates[choice], text) for letter, text in candidates.items()
                     if letter != choice]
    return pd.DataFrame(rows, columns=["user_id", "prompt", "chosen", "rejected"])


def _attributes(frame: pd.DataFrame) -> pd.DataFrame | None:
    columns = [c for c in frame.columns if str(c).startswith("annotator_") and c != "annotator_id"]
    columns += [c for c in ("assigned_lang",) if c in frame]
    if not columns:
        return None
    users = frame["annotator_id"].map(cell_text)
    return pd.DataFrame({str(c).removeprefix("annotator_"): mode_per_user(users, frame[c]) for c in columns})


def load_community_alignment(path: str | None, *, test_fraction: float, val_fraction: float, seed: int,
                             **_: object) -> object:
    """Community Alignment choices as per-annotator best-vs-rest pairs, with the annotators' demographics."""
    source = str(path or HUB_ID)
    frame = read_source(path, HUB_ID)
    rows = community_alignment_rows(frame, source)
    return annotator_dataset(rows, _attributes(frame), name="community_alignment", source=source, schema=SCHEMA,
                             test_fraction=test_fraction, val_fraction=val_fraction, seed=seed,
                             notes={"conversations": len(frame)})
