"""The real per-annotator schemas (PRISM, MultiPref, HelpSteer3-style, Community Alignment) on small files written
here in each schema (no network): pairs point the way each user's own label does, ties are no preference, each
source's user attributes arrive with the users, faults name the row, and ``--slice-by`` works on them without an
attributes file."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from pafo.errors import PafoInputError
from pafo.sources import DataConfig, load_dataset

SPLIT = {"test_fraction": 0.25, "val_fraction": 0.1, "seed": 0}
COUNTRIES = ("UK", "US", "Mexico")


def _jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _pair_set(dataset) -> set[tuple[str, str, str, str]]:
    table = dataset.pair_table()
    return set(table[["user_id", "prompt", "chosen", "rejected"]].itertuples(index=False, name=None))


# ------------------------------------------------------------------------------------------- PRISM


def prism_records(n_users: int = 10, n_conversations: int = 4, seed: int = 0):
    """utterances (long format), the same as conversations, and the survey, in PRISM's field names."""
    rng = np.random.default_rng(seed)
    utterances, conversations, survey = [], [], []
    for u in range(n_users):
        user = f"user{u}"
        survey.append({"user_id": user, "age": ["18-24 years old", "25-34 years old"][u % 2],
                       "gender": ["Female", "Male"][u % 2 == 0], "self_description": f"I am person {u}, I like {u}.",
                       "location": {"reside_country": COUNTRIES[u % 3], "birth_country": "Elsewhere"},
                       "lm_usecases": ["coding", "advice"]})
        for c in range(n_conversations):
            conversation = f"c{u}_{c}"
            history = []
            for turn, n_replies in ((0, 4), (1, 2)):
                prompt = f"User {u} asks question {c}.{turn} about topic {rng.integers(1000)}"
                history.append({"turn": turn, "role": "user", "content": prompt})
                scores = rng.choice(np.arange(1, 101), size=n_replies, replace=False).tolist()
                if turn == 0 and c == 0:
                    scores[1] = scores[0]  # a tie: no preference between those two
                for k, score in enumerate(scores):
                    reply = f"Reply {k} of model m{k} to {prompt}"
                    utterances.append({"utterance_id": f"ut{len(utterances)}",
                                       "interaction_id": f"{conversation}-{turn}", "conversation_id": conversation,
                                       "user_id": user, "turn": turn,
                                       "within_turn_id": k, "user_prompt": prompt, "model_response": reply,
                                       "model_name": f"m{k}", "score": score, "if_chosen": k == int(np.argmax(scores))})
                    history.append({"turn": turn, "role": "model", "content": reply, "score": score,
                                    "within_turn_id": k, "if_chosen": k == int(np.argmax(scores))})
            conversations.append({"conversation_id": conversation, "user_id": user, "conversation_history": history})
    return utterances, conversations, survey


def test_prism_pairs_follow_each_users_ratings_and_the_survey_becomes_attributes(tmp_path):
    """Every two replies of one interaction with different scores make a pair, the higher-rated chosen (ties make
    none); both PRISM layouts give the same pairs; scalar survey answers (objects flattened) are attributes, free
    text and lists are not."""
    utterances, conversations, survey = prism_records()
    folder = tmp_path / "prism"
    folder.mkdir()
    _jsonl(folder / "utterances.jsonl", utterances)
    _jsonl(folder / "survey.jsonl", survey)
    dataset = load_dataset(DataConfig(dataset="prism", path=str(folder)))
    expected = set()
    frame = pd.DataFrame(utterances)
    for _, group in frame.groupby("interaction_id"):
        for (_, a), (_, b) in combinations(group.iterrows(), 2):
            if a["score"] != b["score"]:
                hi, lo = (a, b) if a["score"] > b["score"] else (b, a)
                expected.add((hi["user_id"], hi["user_prompt"], hi["model_response"], lo["model_response"]))
    kept = set(dataset.users["user_id"])
    assert _pair_set(dataset) == {p for p in expected if p[0] in kept}
    assert len(expected) == 10 * 4 * (6 + 1) - 10  # 6 pairs of four replies, 1 of two; one tie per user
    assert dataset.meta["user_attributes"] == ["age", "gender", "location_reside_country"]
    answers = {r["user_id"]: r for r in survey}
    for row in dataset.users.itertuples():
        assert row.location_reside_country == answers[row.user_id]["location"]["reside_country"]
        assert (row.age, row.gender) == (answers[row.user_id]["age"], answers[row.user_id]["gender"])
    assert dataset.meta["dropped_users"] == 10 - dataset.n_users

    (folder / "utterances.jsonl").unlink()
    _jsonl(folder / "conversations.jsonl", conversations)
    again = load_dataset(DataConfig(dataset="prism", path=str(folder)))
    assert _pair_set(again) == _pair_set(dataset)
    single = load_dataset(DataConfig(dataset="prism", path=str(folder / "conversations.jsonl")))  # survey beside it
    assert single.meta["user_attributes"] == dataset.meta["user_attributes"]


def test_prism_faults_name_the_row(tmp_path):
    """A score that is not a number names its row; a folder without ratings says which files it needs."""
    utterances, _, _ = prism_records(n_users=3)
    utterances[4]["score"] = "great"
    folder = tmp_path / "prism"
    folder.mkdir()
    with pytest.raises(PafoInputError, match="holds no PRISM ratings file"):
        load_dataset(DataConfig(dataset="prism", path=str(folder)))
    _jsonl(folder / "utterances.jsonl", utterances)
    with pytest.raises(PafoInputError, match=r"row 5: score 'great' is not a number"):
        load_dataset(DataConfig(dataset="prism", path=str(folder)))


# ------------------------------------------------------------------------------------------- MultiPref


PREFS = ("A-is-clearly-better", "A-is-slightly-better", "Tie", "B-is-slightly-better", "B-is-clearly-better")


def multipref_records(n_rows: int = 40, seed: int = 0):
    """MultiPref rows: two normal and two expert annotations each, from pools of six crowdworkers and four
    experts (experts' subject follows the row's subject_study)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_rows):
        subject = ["chemistry", "history"][i % 2]
        rows.append({"comparison_id": f"cmp{i}", "prompt_id": f"p{i}", "text": f"Prompt {i}: explain idea {i}.",
                     "model_a": "tulu", "completion_a": f"Completion A for prompt {i}.", "model_b": "gpt",
                     "completion_b": f"Completion B for prompt {i}.", "source": "anthropic_helpful",
                     "category": "Open QA", "subject_study": subject, "highest_level_degree": "Sciences",
                     "normal_worker_annotations": [
                         {"evaluator": f"crowd_{w}", "overall_pref": str(rng.choice(PREFS)), "time_spent": 100}
                         for w in rng.choice(6, size=2, replace=False)],
                     "expert_worker_annotations": [
                         {"evaluator": f"expert_{subject}_{w}", "overall_pref": str(rng.choice(PREFS))}
                         for w in range(2)]})
    return rows


def test_multipref_annotations_are_evaluator_pairs_with_pool_and_expertise(tmp_path):
    """Each annotation is its evaluator's pair (A or B chosen as overall_pref says, ties left out); evaluators get
    their pool and, for experts, the subject they annotate."""
    records = multipref_records()
    path = _jsonl(tmp_path / "multipref.jsonl", records)
    dataset = load_dataset(DataConfig(dataset="multipref", path=path))
    expected = set()
    for r in records:
        for note in r["normal_worker_annotations"] + r["expert_worker_annotations"]:
            if note["overall_pref"] != "Tie":
                a_wins = note["overall_pref"].startswith("A")
                expected.add((note["evaluator"], r["text"], r[f"completion_{'a' if a_wins else 'b'}"],
                              r[f"completion_{'b' if a_wins else 'a'}"]))
    assert _pair_set(dataset) == {p for p in expected if p[0] in set(dataset.users["user_id"])}
    users = dataset.users.set_index("user_id")
    assert set(users["pool"]) <= {"normal", "expert"}
    for user, row in users.iterrows():
        assert row["pool"] == ("expert" if user.startswith("expert") else "normal")
        assert row["expertise"] == (user.split("_")[1] if user.startswith("expert") else "crowd")
    parquet = tmp_path / "multipref.parquet"
    pd.DataFrame(records).to_parquet(parquet)  # nested lists come back as arrays: the same data
    assert _pair_set(load_dataset(DataConfig(dataset="multipref", path=str(parquet)))) == _pair_set(dataset)


def test_multipref_unknown_preference_names_row_and_annotation(tmp_path):
    records = multipref_records(n_rows=4)
    records[2]["expert_worker_annotations"][1]["overall_pref"] = "A-wins"
    path = _jsonl(tmp_path / "multipref.jsonl", records)
    with pytest.raises(PafoInputError, match=r"row 3: expert annotation 2 has overall_pref 'A-wins'"):
        load_dataset(DataConfig(dataset="multipref", path=path))


# ------------------------------------------------------------------------------------------- HelpSteer3


def helpsteer3_records(n_rows: int = 60, seed: int = 0, ids: bool = True):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_rows):
        language = ["english", "german"][i % 2]
        entries = []
        for a in rng.choice(8, size=3, replace=False):
            entry = {"score": int(rng.integers(-3, 4)), "reasoning": "@Response 1 is clearer."}
            if ids:
                entry |= {"annotator_id": f"ann{a}", "annotator_locale": ["en-US", "de-DE"][a % 2]}
            entries.append(entry)
        context = [{"role": "user", "content": f"Question {i}?"}] if i % 3 else [
            {"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Earlier answer."},
            {"role": "user", "content": "And more?"}]
        rows.append({"domain": "general", "language": language, "context": context,
                     "response1": f"First response to {i}.", "response2": f"Second response to {i}.",
                     "overall_preference": int(np.sign(sum(e["score"] for e in entries))),
                     "individual_preference": entries})
    return rows


def test_helpsteer3_individual_preferences_are_annotator_pairs(tmp_path):
    """A negative score prefers response1, a positive one response2, 0 none; a multi-turn context becomes
    role-tagged lines; the entries' other fields and the annotator's usual language are attributes."""
    records = helpsteer3_records()
    path = _jsonl(tmp_path / "hs3.jsonl", records)
    dataset = load_dataset(DataConfig(dataset="helpsteer3", path=path))
    pairs = _pair_set(dataset)
    for r in records:
        for entry in r["individual_preference"]:
            if entry["annotator_id"] not in set(dataset.users["user_id"]) or entry["score"] == 0:
                continue
            first, second = r["response1"], r["response2"]
            chosen, rejected = (first, second) if entry["score"] < 0 else (second, first)
            prompts = [p for (u, p, c, j) in pairs if u == entry["annotator_id"] and c == chosen and j == rejected]
            single = len(r["context"]) == 1
            assert prompts == [r["context"][0]["content"]] if single else prompts[0].endswith("user: And more?")
    multi = next(p for (_, p, _, _) in pairs if "assistant: Earlier answer." in p)
    assert multi.startswith("user: Question") and multi.endswith("user: And more?")
    assert dataset.meta["user_attributes"] == ["annotator_locale", "language"]
    assert set(dataset.users["annotator_locale"]) == {"en-US", "de-DE"}


def test_helpsteer3_without_annotator_ids_says_why_it_cannot_be_per_user(tmp_path):
    path = _jsonl(tmp_path / "hs3.jsonl", helpsteer3_records(n_rows=3, ids=False))
    with pytest.raises(PafoInputError, match=r"row 1: individual_preference entry 1 names no annotator.*public"):
        load_dataset(DataConfig(dataset="helpsteer3", path=path))


# ------------------------------------------------------------------------------------------- Community Alignment


def community_alignment_frame(n_annotators: int = 10, per_annotator: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(n_annotators):
        for c in range(per_annotator):
            row = {"conversation_id": f"{a}-{c}", "annotator_id": f"A{a}", "assigned_lang": ["en", "fr"][a % 2],
                   "annotator_age": ["18-34", "35-45", "55+"][a % 3], "annotator_country": COUNTRIES[a % 3],
                   "annotator_gender": ["woman", "man"][a % 2], "is_pregenerated_first_prompt": True,
                   "first_turn_prompt": f"Annotator {a} asks about subject {c}",
                   "first_turn_preferred_response": f"response_{'abcd'[rng.integers(4)]}",
                   "second_turn_prompt": f"Annotator {a} follows up on subject {c}",
                   "second_turn_preferred_response": "ab"[rng.integers(2)]}
            for letter in "abcd":
                row[f"first_turn_response_{letter}"] = f"Candidate {letter} on subject {c} for {a}"
            for letter in "ab":
                row[f"second_turn_response_{letter}"] = f"Follow-up {letter} on subject {c} for {a}"
            rows.append(row)
    return pd.DataFrame(rows)


def test_community_alignment_preferred_response_beats_every_other_candidate(tmp_path, write_table):
    """Per turn, the preferred candidate is chosen over each other one (three pairs from four, one from two); the
    annotator_* columns become attributes without their prefix, with assigned_lang."""
    frame = community_alignment_frame()
    path = write_table(frame, tmp_path / "community_alignment.csv")
    dataset = load_dataset(DataConfig(dataset="community_alignment", path=str(path)))
    kept = set(dataset.users["user_id"])
    expected = set()
    for row in frame.to_dict("records"):
        first = row["first_turn_preferred_response"][-1]
        expected |= {(row["annotator_id"], row["first_turn_prompt"], row[f"first_turn_response_{first}"],
                      row[f"first_turn_response_{o}"]) for o in "abcd" if o != first}
        second = row["second_turn_preferred_response"]
        expected.add((row["annotator_id"], row["second_turn_prompt"], row[f"second_turn_response_{second}"],
                      row[f"second_turn_response_{'b' if second == 'a' else 'a'}"]))
    assert _pair_set(dataset) == {p for p in expected if p[0] in kept}
    assert dataset.meta["user_attributes"] == ["age", "country", "gender", "assigned_lang"]
    assert dataset.users.set_index("user_id").loc["A4", "country"] == "US"


def test_community_alignment_unknown_choice_names_row(tmp_path, write_table):
    frame = community_alignment_frame(n_annotators=2, per_annotator=2)
    frame.loc[1, "first_turn_preferred_response"] = "response_z"
    path = write_table(frame, tmp_path / "ca.csv")
    with pytest.raises(PafoInputError, match=r"row 2: first_turn_preferred_response is 'response_z'"):
        load_dataset(DataConfig(dataset="community_alignment", path=str(path)))


# ------------------------------------------------------------------------------------------- slicing them


def test_slice_by_a_loaders_own_attributes_needs_no_attributes_file(tmp_path, capsys, write_table):
    """``pafo support --dataset community_alignment ... --slice-by country`` slices by the annotators' own
    demographics, and ``pafo audit`` on it reports slices for them, no --user-attributes needed."""
    path = write_table(community_alignment_frame(n_annotators=12, per_annotator=8), tmp_path / "ca.csv")
    out = tmp_path / "support.json"
    code, _, err = run_cli(["support", "--dataset", "community_alignment", "--path", path, "--encoder", "tfidf",
                            "--slice-by", "country", "--slice-by", "age,assigned_lang", "--json", out], capsys)
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert {s["by"]["country"] for s in payload["slices"] if "country" in s["by"]} == set(COUNTRIES)
    dataset = load_dataset(DataConfig(dataset="community_alignment", path=str(path)))
    test = dataset.pair_table("test")
    predictions = write_table(test.drop(columns="split").assign(margin=1.0), tmp_path / "always_right.csv")
    code, _, err = run_cli(["audit", "--dataset", "community_alignment", "--path", path, "--encoder", "tfidf",
                            "--predictions", f"model={predictions}", "--slice-by", "country", "--json",
                            tmp_path / "audit.json"], capsys)
    assert code == 0, err
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert {s["by"]["country"] for s in audit["slices"]} == set(COUNTRIES)
    assert all(s["methods"]["model"]["accuracy"] == 1.0 for s in audit["slices"])
