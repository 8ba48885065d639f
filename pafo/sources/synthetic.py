"""The built-in synthetic source: readable template responses with style attributes, judged by K style critics.

Design (fixed before any method was tuned, so the demo shows personalized reward bias for a reason you can read):

- Every response carries six binary style attributes written into its text: ``detailed`` (several tips instead
  of one), ``formal`` (register of opening and closing), ``cautious`` (a safety caveat), ``examples`` (a worked
  example), ``lists`` (numbered tips instead of prose) and ``humorous`` (a joke). A linear probe on the default
  encoder recovers each attribute (``bench.support`` measures it), so a text model can learn what judges value.
- Judges are style critics: a judge's score is a weighted sum of attributes plus idiosyncratic quality noise.
  The *majority* judges (thorough, practical, careful) like detailed, formal, structured answers; the *minority*
  judges (witty, brief, playful) each like some of short, casual and funny, against the majority's taste.
  ``minority_homogeneity`` (0–1) blends each minority judge between one shared minority direction and its own
  taste (1: the minority critics agree exactly).
- Population shares are imbalanced (default 0.55 / 0.25 / 0.12 / 0.08, the DSP shares), so the minority judges'
  users are ~20% of the population: the users whose labels the rest of the population disagrees with.
  A shared reward model learns the majority's direction; users of the minority fall back towards it when their
  own few pairs cannot pull the per-user deviation far enough. That is the bias PAFO must remove.
- Defaults were fixed to make that bias visible *before* any PAFO option was tuned (baseline only, MiniLM,
  seeds 0–2, gap = majority − minority test accuracy of the baseline): 8 labelled pairs per user
  (personalization with few labels), hidden quality noise 0.1 (labels mostly readable from text: a user who
  knew each response's attributes would reach ~92% on either group) and minority homogeneity 0.0 (each minority
  critic keeps its own taste). Homogeneity was first 0.9, but a homogeneous 20% minority is simply a second
  cluster that the shared g learns a feature for, and the gap was 6.1 / 0.9 / −0.6 points over seeds 0–2
  (0.5: 19.9 / 2.9 / 4.5). At 0.0 it was 14.7 / 6.0 / 8.9 points, and ≥ 6 on every seed for an L2 prior on w_u
  from 0.03 to 1.0, so the bias is the data's, not the regulariser's: a rare taste has to be learned from the
  user's own few labels, a common one comes with b. The baseline was then tuned on validation pairs (its user
  vectors' learning rate ×10); the gap shrank but stayed: 7.4 / 9.6 / 5.9 points (bench/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import OUT_OF_RANGE, check_range
from ..dataset import PreferenceDataset
from ..simulate import simulate_population, zscore_columns

__all__ = ["ATTRIBUTES", "JUDGE_TASTES", "default_shares", "make_synthetic", "synthetic_judges", "text_pool"]

ATTRIBUTES = ("detailed", "formal", "cautious", "examples", "lists", "humorous")

# Weights over ATTRIBUTES. Majority critics first, minority critics second.
JUDGE_TASTES = {
    "thorough": (1.0, 0.6, 0.0, 0.2, 0.6, -0.6),
    "practical": (0.4, 0.2, 0.4, 1.0, 0.4, -0.3),
    "careful": (0.5, 0.5, 1.0, 0.3, 0.2, -0.4),
    "witty": (-0.3, -0.5, -0.2, 0.5, -0.2, 1.0),
    "brief": (-1.0, -0.3, -0.6, -0.2, -0.4, 0.2),
    "playful": (-0.4, -1.0, -0.3, 0.3, -0.6, 0.6),
}
MAJORITY_JUDGES = ("thorough", "practical", "careful")
MINORITY_JUDGES = ("witty", "brief", "playful")
# The direction the minority critics share: short, casual, funny, unstructured — against the majority's taste.
MINORITY_DIRECTION = (-1.0, -0.8, -0.3, 0.0, -0.6, 1.0)

MIN_JUDGES, MAX_JUDGES = 2, len(JUDGE_TASTES)
# The bounds are checked by pafo.config.check_range (DataConfig declares them); names kept for message matching.
BAD_JUDGES = BAD_HOMOGENEITY = BAD_SIZE = OUT_OF_RANGE

TOPICS = (
    "start running", "learn Python", "save money each month", "bake sourdough bread", "grow tomatoes on a balcony",
    "prepare for a job interview", "sleep better", "learn a new language", "keep a houseplant alive",
    "write a cover letter", "reduce screen time", "cook rice perfectly", "organise a small closet",
    "train a puppy to sit", "make new friends in a new city", "study for an exam", "start a podcast",
    "fix a squeaky door", "plan a weekend trip", "get better at chess", "paint a bedroom wall", "learn to juggle",
    "brew good coffee at home", "negotiate a salary", "declutter a desk", "start journaling", "learn to swim",
    "make a budget spreadsheet", "take better phone photos", "prepare for a marathon", "stop procrastinating",
    "speak confidently in meetings", "clean a cast iron pan", "start a vegetable garden", "learn guitar chords",
    "write a short story", "pack a suitcase efficiently", "improve handwriting", "host a dinner party",
    "choose a good laptop",
)
PROMPT_FORMS = ("How can I {t}?", "What is the best way to {t}?", "Any advice on how to {t}?", "I want to {t}. Tips?")
TIPS = (
    "set one clear goal before you begin", "break the work into small steps", "practise a little every day",
    "track your progress in a notebook", "ask someone experienced for feedback", "review what worked each week",
    "remove distractions from your space", "prepare everything you need the night before",
    "start with the easiest part to build momentum", "reward yourself after each milestone",
)
EXAMPLES = (
    "a friend of mine did this in ten-minute sessions after dinner and was comfortable within a month",
    "on Monday do the first step, on Wednesday the second, and on Saturday look back at both",
    "someone I know wrote the plan on a sticky note on the fridge and followed it for six weeks",
)
OPENINGS = {
    True: ("Certainly. Here is a considered answer on how to {t}.", "Thank you for your question about how to {t}."),
    False: ("Hey! So you wanna {t}? Cool.", "Oh nice, {t}? Totally doable."),
}
CLOSINGS = {True: ("I hope this information proves useful.", "Kind regards and best of luck."),
            False: ("Good luck, you got this!", "Have fun with it!")}
CAVEAT = "Please be careful: consult a qualified professional if you are unsure, and stop if anything feels wrong."
JOKES = (
    "Side effects may include suddenly enjoying it. 😄",
    "Worst case, you will have a great story for your next party. 😂",
    "If it all fails, blame the cat — that is what I do. 😄",
)


def synthetic_judges(k: int) -> list[str]:
    """The K judges: the first ceil(K/2) majority critics, then floor(K/2) minority critics."""
    check_range("--judges", k, integer=True, ge=MIN_JUDGES, le=MAX_JUDGES)
    return list(MAJORITY_JUDGES[: (k + 1) // 2] + MINORITY_JUDGES[: k // 2])


def default_shares(judges: list[str]) -> dict[str, float]:
    """Imbalanced shares: the DSP shares for K = 4, otherwise geometric with ratio 1/2."""
    if len(judges) == 4:
        return dict(zip(judges, (0.55, 0.25, 0.12, 0.08), strict=True))
    raw = 0.5 ** np.arange(len(judges))
    return dict(zip(judges, raw / raw.sum(), strict=True))


def judge_tastes(judges: list[str], homogeneity: float) -> np.ndarray:
    """(K, attributes) taste matrix; minority tastes are blended towards the shared minority direction."""
    check_range("--minority-homogeneity", homogeneity, ge=0, le=1)
    shared = np.asarray(MINORITY_DIRECTION) / np.linalg.norm(MINORITY_DIRECTION)
    rows = []
    for judge in judges:
        taste = np.asarray(JUDGE_TASTES[judge]) / np.linalg.norm(JUDGE_TASTES[judge])
        if judge in MINORITY_JUDGES:
            taste = homogeneity * shared + (1 - homogeneity) * taste
        rows.append(taste)
    return np.vstack(rows)


def _response_text(topic: str, attrs: np.ndarray, rng: np.random.Generator) -> str:
    detailed, formal, cautious, examples, lists, humorous = attrs.astype(bool)
    parts = [OPENINGS[formal][rng.integers(2)].format(t=topic)]
    tips = [TIPS[i] for i in rng.choice(len(TIPS), size=4 if detailed else 1, replace=False)]
    if lists:
        parts.append("\n".join(f"{i + 1}. {tip.capitalize()}." for i, tip in enumerate(tips)))
    elif detailed:
        parts.append(f"First, {tips[0]}. Then {tips[1]}. After that, {tips[2]}. Finally, {tips[3]}.")
    else:
        parts.append(f"Just {tips[0]}.")
    if examples:
        parts.append(f"For example, {EXAMPLES[rng.integers(len(EXAMPLES))]}.")
    if cautious:
        parts.append(CAVEAT)
    if humorous:
        parts.append(JOKES[rng.integers(len(JOKES))])
    parts.append(CLOSINGS[formal][rng.integers(2)])
    return "\n".join(parts)


def _responses(n_prompts: int, per_prompt: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    rows, attrs = [], rng.integers(0, 2, size=(n_prompts * per_prompt, len(ATTRIBUTES)))
    for p in range(n_prompts):
        topic = TOPICS[p % len(TOPICS)]
        prompt = PROMPT_FORMS[(p // len(TOPICS)) % len(PROMPT_FORMS)].format(t=topic)
        for j in range(per_prompt):
            rows.append((p, prompt, _response_text(topic, attrs[p * per_prompt + j], rng)))
    return pd.DataFrame(rows, columns=["prompt_id", "prompt", "text"]), attrs


def text_pool(prompts: int, responses_per_prompt: int, judges: list[str], minority_homogeneity: float,
              quality_noise: float, data_seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The prompts, responses, their attributes and the judges' z-scored scores, drawn from ``data_seed`` alone.

    Why apart from the run's seed: a run over seeds 0–4 then varies the users (personas, which pairs each labels,
    label noise, split, training) on one text pool, as DSP does with its fixed items, so the pool is embedded once
    for every seed instead of once per seed.
    """
    rng = np.random.default_rng(data_seed)
    responses, attrs = _responses(prompts, responses_per_prompt, rng)
    raw = attrs @ judge_tastes(judges, minority_homogeneity).T + quality_noise * rng.standard_normal((len(attrs), 1))
    return responses, attrs, zscore_columns(raw)


def make_synthetic(*, prompts: int, responses_per_prompt: int, judges: int, minority_homogeneity: float,
                   quality_noise: float, data_seed: int, seed: int, **simulation) -> PreferenceDataset:
    """Build the synthetic dataset (see the module docstring for why it is designed this way); the options are
    DataConfig's (``load_dataset(DataConfig(...))`` validates them), ``simulation`` its simulation fields.

    ``data_seed`` draws the text pool (:func:`text_pool`); ``seed`` draws the population and its pairs."""
    names = synthetic_judges(judges)
    responses, attrs, scores = text_pool(prompts, responses_per_prompt, names, minority_homogeneity, quality_noise,
                                         data_seed)
    p, weights, pairs, user_table = simulate_population(
        responses["prompt_id"].to_numpy(), scores, names, default_shares(names), np.random.default_rng(seed),
        name="synthetic", **simulation)
    for i, attribute in enumerate(ATTRIBUTES):
        responses[attribute] = attrs[:, i].astype(bool)
    return PreferenceDataset(
        name="synthetic", responses=responses, pairs=pairs, users=user_table, base_scores=scores,
        persona_weights=weights, judges=names,
        meta={"shares": dict(zip(names, p.round(6).tolist(), strict=True)), "alpha": simulation["alpha"],
              "minority_judges": [j for j in names if j in MINORITY_JUDGES], "attributes": list(ATTRIBUTES),
              "data_seed": data_seed},
    )
