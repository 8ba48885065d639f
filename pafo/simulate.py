"""Persona simulation (spec §2): Dirichlet personas over K judges label pairs of responses to one prompt.

User u's reward for response y is ``w_u · z(y)``; a user prefers the response with the larger reward and skips
ties. Train and test never share a prompt: prompts are split first, then each user's pairs are drawn inside each
side, and validation pairs are a per-user slice of the training pairs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from .dataset import split_prompts
from .errors import PafoInputError

__all__ = ["normalise_shares", "parse_shares", "sample_personas", "simulate_pairs", "simulate_population",
           "zscore_columns"]

UNKNOWN_SHARE = "--shares: unknown key {key!r}; use one of {known}"
BAD_SHARE_VALUE = "--shares: {item!r} is not KEY=VALUE with a number ≥ 0, e.g. {example}"
SHARES_NOT_POSITIVE = "--shares: the shares must be ≥ 0 and sum to a positive number (got {total})"
NEGATIVE_ALPHA = "--alpha: must be > 0 (got {alpha}); small values (0.1) make personas close to one judge each"
TOO_FEW_PROMPTS = "{name}: only {n} prompt(s) with two or more responses; need at least 2 to split train and test"

Protocol = Literal["random", "best_worst"]


def zscore_columns(scores: np.ndarray) -> np.ndarray:
    """Z-normalise each judge's scores so no judge dominates a persona by its scale."""
    scores = np.asarray(scores, dtype=np.float64)
    std = scores.std(axis=0)
    return (scores - scores.mean(axis=0)) / np.where(std > 0, std, 1.0)


def parse_shares(text: str | dict | None, judges: list[str]) -> dict[str, float] | None:
    """Parse ``KEY=V,...`` (or a dict) into shares keyed by judge name; ``None`` keeps the source's default."""
    if text is None or text == "" or text == {}:
        return None
    items = text.items() if isinstance(text, dict) else (i.split("=", 1) for i in str(text).split(","))
    shares = {}
    for item in items:
        if len(item) != 2:
            raise PafoInputError(BAD_SHARE_VALUE.format(item="=".join(item), example=f"{judges[0]}=0.5"))
        key, value = str(item[0]).strip(), item[1]
        if key not in judges:
            raise PafoInputError(UNKNOWN_SHARE.format(key=key, known=", ".join(judges)))
        try:
            shares[key] = float(value)
        except (TypeError, ValueError):
            raise PafoInputError(BAD_SHARE_VALUE.format(item=f"{key}={value}", example=f"{key}=0.5")) from None
    return shares


def normalise_shares(shares: dict[str, float] | None, defaults: dict[str, float]) -> np.ndarray:
    """Shares over ``defaults``' judges: given keys override the defaults, then all are scaled to sum to 1."""
    merged = {**defaults, **(shares or {})}
    values = np.array([merged[k] for k in defaults], dtype=np.float64)
    total = values.sum()
    if not np.all(np.isfinite(values)) or (values < 0).any() or total <= 0:
        raise PafoInputError(SHARES_NOT_POSITIVE.format(total=total))
    return values / total


def sample_personas(n_users: int, shares: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Persona weights ``w_u ~ Dirichlet(alpha · K · p)`` (PersonalLLM's construction), shape (users, K)."""
    if not alpha > 0:
        raise PafoInputError(NEGATIVE_ALPHA.format(alpha=alpha))
    # A zero share would make the Dirichlet improper; a tiny floor keeps such a judge (almost) unused.
    concentration = alpha * len(shares) * np.maximum(shares, 1e-6)
    weights = rng.dirichlet(concentration, size=n_users)
    # Dirichlet draws with tiny concentrations can underflow to all-zero rows; give those users their mode judge.
    empty = weights.sum(axis=1) <= 0
    weights[empty, np.argmax(shares)] = 1.0
    return weights


def _padded_responses(prompt_of: np.ndarray, eligible: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """(len(prompts), max responses) matrix of eligible response indices per prompt, padded with -1."""
    index = np.flatnonzero(eligible)
    order = index[np.argsort(prompt_of[index], kind="stable")]
    grouped = pd.Series(order).groupby(prompt_of[order]).agg(list)
    rows = [grouped[p] for p in prompts]
    width = max(len(r) for r in rows)
    padded = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded


def _draw_prompts(n_users: int, n_prompts: int, per_user: int, rng: np.random.Generator) -> np.ndarray:
    """(users, per_user) prompt positions; without replacement while a user has enough prompts."""
    if per_user <= n_prompts:
        return np.argsort(rng.random((n_users, n_prompts)), axis=1)[:, :per_user]
    return rng.integers(0, n_prompts, size=(n_users, per_user))


def _draw_two(padded: np.ndarray, rows: np.ndarray, rewards: np.ndarray | None, protocol: Protocol, rng) -> tuple:
    """Two distinct responses per drawn prompt: at random, or the user's best and worst."""
    counts = (padded[rows] >= 0).sum(axis=1)
    if protocol == "best_worst":
        masked = np.where(padded[rows] >= 0, rewards, np.nan)
        first, second = np.nanargmax(masked, axis=1), np.nanargmin(masked, axis=1)
    else:
        first = (rng.random(len(rows)) * counts).astype(np.int64)
        second = (rng.random(len(rows)) * (counts - 1)).astype(np.int64)
        second = second + (second >= first)
    picks = padded[rows]
    return picks[np.arange(len(rows)), first], picks[np.arange(len(rows)), second]


def _side_pairs(padded, prompts, scores, weights, per_user, protocol, rng) -> pd.DataFrame:
    users = np.repeat(np.arange(len(weights)), per_user)
    rows = _draw_prompts(len(weights), len(prompts), per_user, rng).ravel()
    rewards = None
    if protocol == "best_worst":
        safe = np.where(padded[rows] >= 0, padded[rows], 0)
        rewards = np.einsum("smk,sk->sm", scores[safe], weights[users])
    a, b = _draw_two(padded, rows, rewards, protocol, rng)
    margin = np.einsum("sk,sk->s", scores[a] - scores[b], weights[users])
    keep = margin != 0
    a_wins = margin > 0
    return pd.DataFrame(
        {
            "user": users[keep],
            "prompt_id": prompts[rows][keep],
            "chosen": np.where(a_wins, a, b)[keep],
            "rejected": np.where(a_wins, b, a)[keep],
        }
    )


def _mark_validation(train: pd.DataFrame, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Split labels for one user's-worth-at-a-time of train pairs: ``val_fraction`` of each user's, at least 1."""
    split = np.full(len(train), "train", dtype=object)
    shuffled = rng.permutation(len(train))
    rank = pd.Series(train["user"].to_numpy()[shuffled]).groupby(train["user"].to_numpy()[shuffled]).cumcount()
    sizes = train["user"].map(train["user"].value_counts()).to_numpy()[shuffled]
    n_val = np.clip(np.round(sizes * val_fraction), 1, sizes - 1)
    split[shuffled[rank.to_numpy() < n_val]] = "val"
    return split


def simulate_pairs(
    prompt_of: np.ndarray,
    scores: np.ndarray,
    weights: np.ndarray,
    *,
    train_pairs: int,
    test_pairs: int,
    rng: np.random.Generator,
    eligible: np.ndarray | None = None,
    test_fraction: float = 0.25,
    val_fraction: float = 0.1,
    protocol: Protocol = "random",
    name: str = "dataset",
) -> pd.DataFrame:
    """Labelled pairs with a prompt-level train/test split and per-user validation pairs.

    ``prompt_of`` gives each response's prompt id, ``scores`` its base scores (responses × K), ``weights`` the
    personas (users × K); ``eligible`` masks responses that may appear in a pair.
    """
    eligible = np.ones(len(prompt_of), dtype=bool) if eligible is None else eligible
    prompt_ids, counts = np.unique(prompt_of[eligible], return_counts=True)
    prompt_ids = prompt_ids[counts >= 2]
    if len(prompt_ids) < 2:
        raise PafoInputError(TOO_FEW_PROMPTS.format(name=name, n=len(prompt_ids)))
    is_test = split_prompts(prompt_ids, test_fraction, rng)
    sides = []
    for side, mask, per_user in (("train", ~is_test, train_pairs), ("test", is_test, test_pairs)):
        padded = _padded_responses(prompt_of, eligible, prompt_ids[mask])
        pairs = _side_pairs(padded, prompt_ids[mask], scores, weights, per_user, protocol, rng)
        pairs["split"] = side if side == "test" else _mark_validation(pairs, val_fraction, rng)
        sides.append(pairs)
    pairs = pd.concat(sides, ignore_index=True)
    return pairs.sort_values(["user", "split"], kind="stable").reset_index(drop=True)


def simulate_population(prompt_of: np.ndarray, scores: np.ndarray, judges: list[str], default_shares: dict[str, float],
                        rng: np.random.Generator, *, users: int, shares: dict[str, float] | None, alpha: float,
                        train_pairs: int, test_pairs: int, test_fraction: float, val_fraction: float,
                        protocol: Protocol, eligible: np.ndarray | None = None, name: str = "dataset"):
    """Users over a source's base scores, as every simulated source draws them: the judges' population shares,
    Dirichlet personas (users × judges), their labelled pairs (:func:`simulate_pairs`) and the user table with
    each user's dominant judge. The options are DataConfig's simulation fields, whose defaults live there only."""
    p = normalise_shares(shares, default_shares)
    weights = sample_personas(users, p, alpha, rng)
    pairs = simulate_pairs(prompt_of, scores, weights, train_pairs=train_pairs, test_pairs=test_pairs, rng=rng,
                           eligible=eligible, test_fraction=test_fraction, val_fraction=val_fraction,
                           protocol=protocol, name=name)
    user_table = pd.DataFrame({"user_id": [f"u{i:04d}" for i in range(users)],
                               "dominant": np.asarray(judges)[weights.argmax(axis=1)]})
    return p, weights, pairs, user_table
