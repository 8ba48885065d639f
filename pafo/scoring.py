"""Score (prompt, response, user) triples with a trained run's reward model: `pafo score`.

A run directory (``pafo experiment --out-dir``, or a background run's folder) holds ``result.json`` and
``weights/<method>.safetensors`` + ``.json``: the weights and constructor arguments, never a pickle. Scoring needs
the user's id only; no group label exists at inference. A user the run never saw gets the shared reward b · g(φ)
(w_u = 0, what the L2 prior falls back to) and ``known_user = False``, unless their own pairs are given
(``--user-pairs``): :func:`personalise` then fits them from those pairs exactly as the run's unseen-user evaluation
does (:mod:`pafo.unseen`: w_u under the model's ridge prior, and PAFO's cluster posterior), with everything the
run trained frozen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .encoder_specs import encoder_spec
from .errors import PafoInputError
from .features import text_features
from .jsonio import loads
from .lexical import LexicalView
from .manifest import MANIFEST_NAME, check_binding, own_binding, verify_manifest
from .models import RewardModel, build_model
from .paths import resolve_inside
from .results import RunResult
from .sources.files import read_table, require_columns
from .training import PairSet

__all__ = [
    "MSG_EMPTY_CELL",
    "MSG_NOT_A_RUN",
    "MSG_NO_WEIGHTS",
    "MSG_TFIDF_RUN",
    "PAIR_COLUMNS",
    "SCORE_COLUMNS",
    "ScoringModel",
    "load_scoring_model",
    "personalise",
    "read_triples",
    "read_user_pairs",
    "score_pair",
    "score_triples",
]

SCORE_COLUMNS = ["user_id", "prompt", "response"]
MSG_NOT_A_RUN = ("{path}: not a finished run directory (no result.json); give the --out-dir of `pafo experiment` or "
                 "--run RUN_ID of a succeeded background run")
MSG_NO_WEIGHTS = "{path}: this run has no weights for method {method!r} (it has: {found}); choose one with --method"
MSG_DAMAGED = "{path}: the run's files are damaged ({detail}); rerun the experiment"
MSG_NOT_THIS_RUN = "{path}: not the run asked for: {detail}; rerun the experiment"
MSG_TFIDF_RUN = ("{path}: the run used tfidf features, which are fitted to that run's own texts, so new texts "
                 "cannot be scored with them; train with --encoder minilm (or a model id) to score new text")
MSG_EMPTY_CELL = "{source}: row {row}: {field} is empty; every row needs {fields}"
PAIR_COLUMNS = ["user_id", "prompt", "chosen", "rejected"]
MSG_SAME_RESPONSE = ("{source}: row {row}: chosen and rejected are the same text; a preference needs two different "
                     "responses, fix or remove that row")
MSG_NO_NEW_USER_STATE = ("{path}: this run stores nothing to personalise new users with (no weights/{method}.newusers"
                         ".json: saved before unseen users existed); rerun the experiment to use --user-pairs")


@dataclass
class ScoringModel:
    """A trained reward model with what scoring needs: its users' ids (row = user index) and its encoder."""

    model: RewardModel
    user_index: dict[str, int]
    encoder: str
    method: str
    run_dir: Path
    personalised: frozenset = frozenset()  # ids of the users fitted from their own pairs (:func:`personalise`)
    lexical: LexicalView | None = None  # PAFO's lexical view, when the model's teacher channel reads one


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception's text on one line (torch's load_state_dict errors span several), cut after ``limit``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_json(path: Path) -> dict:
    try:
        data = loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PafoInputError(MSG_DAMAGED.format(path=path, detail=_one_line(exc))) from exc
    if not isinstance(data, dict):
        raise PafoInputError(MSG_DAMAGED.format(path=path, detail="not a JSON object"))
    return data


def _check_published(run_dir: Path) -> None:
    """A run directory with a manifest must still match it (older run directories have none)."""
    if (run_dir / MANIFEST_NAME).exists() and (problem := verify_manifest(run_dir)) is not None:
        raise PafoInputError(MSG_DAMAGED.format(path=run_dir, detail=problem))


def check_run_binding(run_dir: Path, result: dict, binding: tuple[str, str] | None) -> None:
    """The run folder's manifest names ``binding`` (a registry run's config hash and fingerprint) or, for a
    folder given by path, the config and data its own result states; a mismatch is exit 2, never a score."""
    try:
        wanted = binding or own_binding(run_dir, result)
    except ValueError as exc:
        raise PafoInputError(MSG_DAMAGED.format(path=run_dir, detail=exc)) from None
    if wanted is not None and (problem := check_binding(run_dir, config_hash=wanted[0],
                                                         fingerprint=wanted[1])) is not None:
        raise PafoInputError(MSG_NOT_THIS_RUN.format(path=run_dir, detail=problem))


def _load_model(weights: Path, spec: Path) -> RewardModel:
    from safetensors.torch import load_file

    try:
        model = build_model(_read_json(spec))
        model.load_state_dict(load_file(str(weights)))
    except PafoInputError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError; torch RuntimeError on shape mismatch
        raise PafoInputError(MSG_DAMAGED.format(path=weights, detail=_one_line(exc))) from exc
    return model


def load_scoring_model(run_dir: str | Path, method: str = "pafo", *,
                       binding: tuple[str, str] | None = None) -> ScoringModel:
    """Rebuild ``method``'s model of a run from its safetensors weights and JSON config. ``binding``: the (config
    hash, dataset fingerprint) of the registry run asked for, which the folder's manifest must name."""
    run_dir = Path(run_dir)
    result_path = resolve_inside(run_dir, "result.json")
    if result_path is None or not result_path.is_file():
        raise PafoInputError(MSG_NOT_A_RUN.format(path=run_dir))
    if binding is not None and not (run_dir / MANIFEST_NAME).exists():
        raise PafoInputError(MSG_DAMAGED.format(path=run_dir, detail=verify_manifest(run_dir)))
    _check_published(run_dir)
    stored = _read_json(result_path)
    check_run_binding(run_dir, stored, binding)
    try:
        result = RunResult.from_json(stored, "result.json")
    except PafoInputError as exc:
        raise PafoInputError(MSG_DAMAGED.format(path=run_dir, detail=exc)) from None
    try:
        encoder = str(result.config["run"]["encoder"])
    except (KeyError, TypeError) as exc:
        raise PafoInputError(MSG_DAMAGED.format(path=run_dir / "result.json", detail="no config.run.encoder")) from exc
    if encoder_spec(encoder).fits_corpus:
        raise PafoInputError(MSG_TFIDF_RUN.format(path=run_dir))
    # Only a method the run trained names a file: no path ("../other/weights/pafo") reaches outside the run, and
    # weights another run left in the folder are never used.
    methods = list(result.methods)
    weights = resolve_inside(run_dir, Path("weights") / f"{method}.safetensors")
    if method not in methods or weights is None or not weights.is_file():
        raise PafoInputError(MSG_NO_WEIGHTS.format(path=run_dir, method=method, found=", ".join(methods) or "none"))
    spec = resolve_inside(run_dir, Path("weights") / f"{method}.json")
    if spec is None:
        raise PafoInputError(MSG_DAMAGED.format(path=run_dir / "weights" / f"{method}.json",
                                                detail="it points outside the run folder"))
    model = _load_model(weights, spec)
    model.eval()
    lexical = _load_lexical(run_dir / "weights", model) if model.lexical_dim else None
    # A multi-seed run saves the first seed's models: its users are the first seed's rows.
    users = result.seed_results()[0].per_user
    user_ids = [str(u) for u in users.get("user_id", [])]
    return ScoringModel(model, {u: i for i, u in enumerate(user_ids)}, encoder, method, run_dir, lexical=lexical)


def _load_lexical(folder: Path, model: RewardModel) -> LexicalView:
    """The lexical view a wide model's feature rows end with, as the run fitted it (``weights/lexical.*``)."""
    try:
        view = LexicalView.load(folder)
    except ValueError as exc:
        raise PafoInputError(str(exc)) from None
    if view.dim != model.lexical_dim:
        raise PafoInputError(MSG_DAMAGED.format(path=folder / "lexical.json", detail=(
            f"the view has {view.dim} columns, the model reads {model.lexical_dim}")))
    return view


def _checked(frame: pd.DataFrame, columns: list[str], source) -> pd.DataFrame:
    """``frame`` with ``columns`` present and no empty cell in them (the first one is named by row and field)."""
    require_columns(frame, columns, str(source))
    for field in columns:
        empty = frame[field].isna() | (frame[field].astype(str).str.strip() == "")
        if empty.any():
            raise PafoInputError(MSG_EMPTY_CELL.format(source=source, row=int(np.flatnonzero(empty)[0]) + 1,
                                                       field=field, fields=", ".join(columns)))
    return frame


def read_triples(source: str | Path) -> pd.DataFrame:
    """A CSV/JSONL/JSON/Parquet table with user_id, prompt and response, checked row by row."""
    return _checked(read_table(source), SCORE_COLUMNS, source)


def check_user_pairs(frame: pd.DataFrame, source: str = "the pairs") -> pd.DataFrame:
    """New users' labelled pairs (user_id, prompt, chosen, rejected), checked row by row: every cell filled, two
    different responses per row. Rows are numbered from 1 as a spreadsheet shows them under the header."""
    frame = _checked(frame, PAIR_COLUMNS, source)
    same = frame["chosen"].astype(str).str.strip() == frame["rejected"].astype(str).str.strip()
    if same.any():
        raise PafoInputError(MSG_SAME_RESPONSE.format(source=source, row=int(np.flatnonzero(same)[0]) + 1))
    return frame[PAIR_COLUMNS].astype(str)


def read_user_pairs(source: str | Path) -> pd.DataFrame:
    """``--user-pairs``: a CSV/JSONL/JSON/Parquet table of new users' pairs (:func:`check_user_pairs`)."""
    return check_user_pairs(read_table(source), str(source))


def personalise(scoring: ScoringModel, pairs: pd.DataFrame, device: str = "cpu") -> ScoringModel:
    """``scoring`` with the users of ``pairs`` (:func:`check_user_pairs`) fitted from their own pairs, as the run's
    unseen-user evaluation fits a held-out user (:class:`pafo.unseen.NewUsers`); a user id the run knew is fitted
    anew from the given pairs alone. Everything the run trained stays frozen."""
    from .unseen import NewUsers

    try:
        new_users = NewUsers.load(scoring.run_dir / "weights", scoring.method)
    except (OSError, ValueError, KeyError) as exc:
        raise PafoInputError(MSG_DAMAGED.format(path=scoring.run_dir / "weights", detail=_one_line(exc))) from None
    if new_users is None:
        raise PafoInputError(MSG_NO_NEW_USER_STATE.format(path=scoring.run_dir, method=scoring.method))
    ids = list(dict.fromkeys(pairs["user_id"]))
    position = {user: i for i, user in enumerate(ids)}
    n = len(pairs)
    responses = pd.concat([pairs["chosen"], pairs["rejected"]]).tolist()
    features = _model_inputs(scoring, torch.from_numpy(text_features(
        responses, pd.concat([pairs["prompt"], pairs["prompt"]]).tolist(), scoring.encoder, device=device).features),
        responses)
    index = np.arange(n, dtype=np.int64)
    pair_set = PairSet(index, index + n, pairs["user_id"].map(position).to_numpy(np.int64))
    fitted = new_users.personalise(scoring.model, features, pair_set, len(ids))
    model = _with_users(scoring.model, fitted)
    user_index = {**scoring.user_index, **{user: scoring.model.n_users + i for i, user in enumerate(ids)}}
    return dataclasses.replace(scoring, model=model, user_index=user_index,
                               personalised=scoring.personalised | frozenset(ids))


def _with_users(model: RewardModel, fitted: RewardModel) -> RewardModel:
    """``model`` with ``fitted``'s users appended after its own (same shared parts)."""
    if model.w is None:
        return model
    merged = build_model({**model.config(), "n_users": model.n_users + fitted.n_users})
    state = model.state_dict()
    for name in ("w.weight", "a.weight"):
        if name in state:
            state[name] = torch.cat([state[name], fitted.state_dict()[name]])
    merged.load_state_dict(state)
    return merged.eval()


def _features(frame: pd.DataFrame, encoder: str, progress_bar: bool = False, device: str = "cpu") -> torch.Tensor:
    """[e(y), e(x)] per row, embedded on ``device``; the rewards are computed on the CPU (the model is tiny)."""
    return torch.from_numpy(text_features(frame["response"].astype(str).tolist(), frame["prompt"].astype(str).tolist(),
                                          encoder, progress_bar=progress_bar, device=device).features)


def _model_inputs(scoring: ScoringModel, features: torch.Tensor, responses: list[str]) -> torch.Tensor:
    """``features`` with the model's lexical view of ``responses`` after them, when it reads one (PAFO's wide
    model of a run with the view): the rows the run's own models were fed."""
    if scoring.lexical is None:
        return features
    return torch.cat([features, torch.from_numpy(scoring.lexical.transform(responses))], dim=1)


@torch.inference_mode()
def _rewards(scoring: ScoringModel, features: torch.Tensor, user_ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """r(x, y, u) per row (the shared reward b · g(φ) for users the run never saw) and which users it knew."""
    index = user_ids.astype(str).map(scoring.user_index)
    known = index.notna().to_numpy(copy=True)
    users = torch.from_numpy(index.fillna(0).to_numpy(np.int64, copy=True))
    g = scoring.model.features(features)
    vectors = torch.where(torch.from_numpy(known)[:, None], scoring.model.user_vectors(users),
                          scoring.model.shared_vector())
    return (g * vectors).sum(-1).numpy(), known


def score_triples(scoring: ScoringModel, frame: pd.DataFrame, *, progress_bar: bool = False,
                  device: str = "cpu") -> pd.DataFrame:
    """``frame`` with ``reward`` (r(x, y, u)) and ``known_user`` columns added; features are [e(y), e(x)], embedded
    on ``device`` (cpu or cuda, :func:`pafo.device.resolve_device`)."""
    features = _model_inputs(scoring, _features(frame, scoring.encoder, progress_bar, device),
                             frame["response"].astype(str).tolist())
    rewards, known = _rewards(scoring, features, frame["user_id"])
    scored = frame.assign(reward=rewards, known_user=known)
    if scoring.personalised:  # --user-pairs: which rows' users were fitted from the pairs given
        scored["personalised"] = frame["user_id"].astype(str).isin(scoring.personalised).to_numpy()
    return scored


def score_pair(models: dict[str, ScoringModel], user_id: str, prompt: str, first: str, second: str) -> pd.DataFrame:
    """Each model's reward of two responses to one prompt for one user, and which one it prefers.

    Rewards are only comparable within a user and prompt (the models learn differences), hence the pair. The
    texts are embedded once per encoder (a run's models share one).
    """
    triples = pd.DataFrame({"user_id": [user_id] * 2, "prompt": [prompt] * 2, "response": [first, second]})
    features = {encoder: _features(triples, encoder) for encoder in {m.encoder for m in models.values()}}
    rows = []
    for name, model in models.items():
        inputs = _model_inputs(model, features[model.encoder], triples["response"].tolist())
        rewards, _ = _rewards(model, inputs, triples["user_id"])
        margin = float(rewards[0] - rewards[1])
        rows.append({"method": name, "reward A": float(rewards[0]), "reward B": float(rewards[1]),
                     "margin A − B": margin, "prefers": "A" if margin > 0 else "B" if margin < 0 else "tie",
                     "P(A preferred)": float(1 / (1 + np.exp(-margin)))})
    return pd.DataFrame(rows)
