"""`pafo audit`: personalized reward bias measured from any model's predictions (files, runs, local reward models).

The constructed population: 200 users label the same two responses on 20 prompts (12 train, 8 test), so support
rates come from co-labels. 160 *common* users agree with the majority direction on a pair with probability 0.9, 40
*rare* users with probability 0.2. Model ``shared`` predicts the majority direction (a tie on the last prompt);
model ``personal`` is ``shared`` for common users and always right for rare ones. Every expected number below is
computed from that construction, not from the code under test.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from scipy import stats
from streamlit.testing.v1 import AppTest

from pafo import audit, cli, hf_reward
from pafo.errors import PafoInputError
from pafo.registry import AUDIT_TARGET, RunRegistry
from pafo.results import RunResult
from pafo.sources import DataConfig, load_dataset

APP = Path(__file__).resolve().parent.parent / "app.py"
N_USERS, N_RARE, N_TRAIN, N_TEST = 200, 40, 12, 8
TIE_PROMPT = N_TRAIN + N_TEST - 1  # the shared model's margin is 0 on this test prompt (a tie counts 0.5)
EXPERIMENT_FLAGS = ["--users", "24", "--prompts", "16", "--responses-per-prompt", "4", "--train-pairs", "6",
                    "--test-pairs", "4", "--bootstrap", "50"]


def population(n_users: int = N_USERS, n_rare: int = N_RARE, seed: int = 0) -> pd.DataFrame:
    """The pairs of the constructed population, with the hidden columns ``agree`` and ``rare``."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        rare = user < n_rare
        for prompt in range(N_TRAIN + N_TEST):
            agree = bool(rng.random() < (0.2 if rare else 0.9))
            first, second = f"Answer A to question {prompt}.", f"Answer B to question {prompt}."
            chosen, rejected = (first, second) if agree else (second, first)
            rows.append({"user_id": f"u{user:03d}", "prompt": f"Question {prompt}?", "chosen": chosen,
                         "rejected": rejected, "split": "train" if prompt < N_TRAIN else "test", "agree": agree,
                         "rare": rare, "prompt_no": prompt})
    return pd.DataFrame(rows)


def shared_margin(test: pd.DataFrame) -> np.ndarray:
    return np.where(test["prompt_no"] == TIE_PROMPT, 0.0, np.where(test["agree"], 1.0, -1.0))


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    """pairs.csv, shared.csv (margin) and personal.parquet (scores) of the constructed population."""
    folder = tmp_path_factory.mktemp("audit_data")
    frame = population()
    frame.drop(columns=["agree", "rare", "prompt_no"]).to_csv(folder / "pairs.csv", index=False)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    columns = ["user_id", "prompt", "chosen", "rejected"]
    test[columns].assign(margin=shared_margin(test)).to_csv(folder / "shared.csv", index=False)
    personal = np.where(test["rare"], 1.0, shared_margin(test))
    test[columns].assign(score_chosen=2.0 + personal, score_rejected=2.0).to_parquet(folder / "personal.parquet")
    return folder, test




def one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, (code, err)
    assert out == "" and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("pafo: error: ")
    return err.strip()


def pairs_flags(folder) -> list:
    return ["--dataset", "pairs", "--path", folder / "pairs.csv", "--bootstrap", "200"]


# ------------------------------------------------------------------------------------------- the acceptance audit


def test_audit_reproduces_constructed_accuracies_groups_spearman_and_verdict(constructed, tmp_path, capsys):
    """Done-when 1: exact per-user accuracies, group means over users, Spearman as scipy computes it, the verdict."""
    folder, test = constructed
    out, users_csv = tmp_path / "audit.json", tmp_path / "users.csv"
    code, stdout, err = run_cli(["audit", *pairs_flags(folder), "--predictions", f"shared={folder / 'shared.csv'}",
                                 "--predictions", f"personal={folder / 'personal.parquet'}", "--json", out,
                                 "--per-user-csv", users_csv], capsys)
    assert code == 0, err
    assert stdout == ""
    result = json.loads(out.read_text())
    users = pd.read_csv(users_csv)
    assert list(users.columns) == ["user_id", "group", "support_rate", "n_train", "n_val", "n_test", "acc_shared",
                                   "acc_personal", "n_judged"]
    assert users["n_judged"].equals(users["n_test"])  # the test split is what this audit judges (issue 19)
    # Expected per-user accuracies straight from the construction (a tie is half right).
    correct_shared = np.where(test["prompt_no"] == TIE_PROMPT, 0.5, test["agree"].astype(float))
    expected = pd.DataFrame({"user_id": test["user_id"], "shared": correct_shared,
                             "personal": np.where(test["rare"], 1.0, correct_shared)}).groupby("user_id").mean()
    users = users.set_index("user_id").loc[expected.index]
    np.testing.assert_array_equal(users["acc_shared"], expected["shared"])
    np.testing.assert_array_equal(users["acc_personal"], expected["personal"])
    # The rare users are exactly the minority (lowest 20% of co-label support).
    rare = pd.Series(test.groupby("user_id")["rare"].first())
    assert (users["group"] == np.where(rare.loc[expected.index], "minority", "majority")).all()
    assert result["support"]["estimator"] == "colabel" and result["split"] == "test"
    for name in ("shared", "personal"):
        accuracy = result["methods"][name]["accuracy"]
        for group in ("majority", "minority"):
            assert accuracy[group] == pytest.approx(users.loc[users["group"] == group, f"acc_{name}"].mean(), abs=1e-12)
        spearman = stats.spearmanr(users["support_rate"], expected[name]).statistic
        assert result["methods"][name]["unfairness"]["support_spearman"] == pytest.approx(spearman, abs=1e-12)
        lo, hi = result["methods"][name]["accuracy_ci"]["minority"]
        assert lo <= accuracy["minority"] <= hi
    assert result["methods"]["shared"]["unfairness"]["support_spearman"] > 0.3  # the bias the audit must see
    # BT log-loss −log σ(m) over pairs: margins ±1 and 0 (shared), so the means are known exactly.
    losses = np.logaddexp(0, -shared_margin(test))
    assert result["methods"]["shared"]["log_loss"]["overall"] == pytest.approx(losses.mean(), abs=1e-12)
    assert result["methods"]["shared"]["log_loss"]["minority"] == pytest.approx(losses[test["rare"]].mean(),
                                                                                abs=1e-12)
    # The paired verdict: personal is a clear minority win with the majority untouched.
    comparison = result["comparisons"]["personal"]
    assert result["reference"] == "shared" and set(result["comparisons"]) == {"personal"}
    assert comparison["verdict"] == "pareto"
    assert comparison["majority"] == {"delta": 0.0, "ci": [0.0, 0.0]}
    assert comparison["minority"]["ci"][0] > 0.5
    assert result["methods"]["personal"]["coverage"]["pairs"] == len(test)
    assert result["methods"]["personal"]["source"]["kind"] == "predictions"


def test_reference_flag_and_headline_without_json(constructed, capsys):
    """--reference picks the model others are compared with; stdout shows the headline with the verdict."""
    folder, _ = constructed
    code, stdout, err = run_cli(["audit", *pairs_flags(folder), "--predictions", f"shared={folder / 'shared.csv'}",
                                 "--predictions", f"personal={folder / 'personal.parquet'}",
                                 "--reference", "personal"], capsys)
    assert code == 0, err
    headline = json.loads(stdout)
    assert headline["shared"]["verdict_vs_personal"] == "worse"
    assert "verdict_vs_personal" not in headline["personal"]
    assert set(headline["shared"]) >= {"accuracy", "unfairness", "log_loss"}
    assert set(headline["shared"]["log_loss"]) == {"overall", "majority", "minority"}


# ------------------------------------------------------------------------------------------- experiment runs


@pytest.fixture(scope="module")
def experiment_run(tmp_path_factory):
    """A tiny `pafo experiment --out-dir` run (tfidf, baseline + PAFO) and its JSON."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("audit_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAFO_HOME", str(folder / "home"))
        code = cli.main(["experiment", *EXPERIMENT_FLAGS, "--encoder", "tfidf", "--epochs", "3", "--hidden", "16",
                         "--k", "4", "--out-dir", str(folder / "run"),
                         "--json", str(folder / "result.json")])
    torch.set_num_threads(threads)
    assert code == 0
    return folder / "run", json.loads((folder / "result.json").read_text())


def test_audit_of_an_experiments_own_margins_gives_its_metrics(experiment_run, tmp_path, write_table, capsys):
    """Done-when 2: the run directory, or its margins exported as predictions files (texts, or pair ids), audited
    with the run's data flags give exactly the experiment's accuracy, CI, unfairness and decile blocks."""
    run_dir, expected = experiment_run
    dataset = load_dataset(DataConfig(**expected["config"]["data"]))
    by_text = audit.predictions_from_run(run_dir, "baseline", dataset).drop(columns="pair_id")
    by_id = audit.predictions_from_run(run_dir, "pafo", dataset)[["user_id", "pair_id", "margin"]]
    variants = {"run dir": [f"baseline={run_dir}", f"pafo={run_dir}"],
                "files": [f"baseline={write_table(by_text, tmp_path / 'baseline.csv')}",
                          f"pafo={write_table(by_id, tmp_path / 'pafo.jsonl')}"]}
    for variant, sources in variants.items():
        out, users_csv = tmp_path / f"{variant}.json", tmp_path / f"{variant}.csv"
        flags = [flag for source in sources for flag in ("--predictions", source)]
        code, _, err = run_cli(["audit", *EXPERIMENT_FLAGS, *flags, "--json", out, "--per-user-csv", users_csv],
                               capsys)
        assert code == 0, err
        result = json.loads(out.read_text())
        for method in ("baseline", "pafo"):
            for block in ("accuracy", "accuracy_ci", "unfairness", "by_decile"):
                assert result["methods"][method][block] == expected["methods"][method][block], (variant, method)
            # The run computed calibration on its float32 margins, the audit on their CSV text: equal to ~1e-9.
            for group, block in expected["methods"][method]["calibration"].items():
                assert result["methods"][method]["calibration"][group] == pytest.approx(block, rel=1e-6)
        run_users = pd.read_csv(run_dir / "per_user.csv").drop(columns="seed")  # an audit has one seed: no column
        audit_users = pd.read_csv(users_csv)
        assert audit_users.pop("n_judged").equals(audit_users["n_test"])  # it judges the run's test pairs
        pd.testing.assert_frame_equal(audit_users, run_users)
        assert result["groups"] == expected["groups"] and result["support"] == expected["support"]
        assert result["comparisons"]["pafo"]["verdict"] in ("pareto", "noise", "worse", "tradeoff")


def test_exported_pairs_of_a_simulated_source_come_back_as_predictions(tmp_path, capsys):
    """--export-pairs writes the loader's evaluated pairs; adding a margin column makes them a valid predictions file
    (the way to audit a model on synthetic or DSP data, whose pairs exist only inside the loader)."""
    template = tmp_path / "pairs.jsonl"
    code, _, err = run_cli(["audit", *EXPERIMENT_FLAGS, "--export-pairs", template], capsys)
    assert code == 0, err
    pairs = pd.read_json(template, lines=True)
    assert list(pairs.columns) == ["user_id", "prompt", "chosen", "rejected", "pair_id"]
    assert len(pairs) == 24 * 4  # users × test pairs
    pairs.assign(margin=np.where(pairs.index % 2 == 0, 1.0, -1.0)).to_parquet(tmp_path / "m.parquet")
    out = tmp_path / "out.json"
    code, _, err = run_cli(["audit", *EXPERIMENT_FLAGS, "--predictions", f"m={tmp_path / 'm.parquet'}", "--json",
                            out], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["methods"]["m"]["accuracy"]["micro"] == 0.5
    assert "unknown format" in one_line_error(*run_cli(["audit", "--export-pairs", tmp_path / "x.txt"], capsys))


def test_run_dir_of_other_data_or_unknown_method_is_refused(experiment_run, capsys):
    """A run's margins only mean something on the run's own dataset and for one of its methods."""
    run_dir, _ = experiment_run
    flags = [*EXPERIMENT_FLAGS[:-2], "--seed", "1"]
    message = one_line_error(*run_cli(["audit", *flags, "--predictions", f"baseline={run_dir}"], capsys))
    assert "trained on other data" in message
    message = one_line_error(*run_cli(["audit", *EXPERIMENT_FLAGS, "--predictions", f"groupdro={run_dir}"], capsys))
    assert "no margins of method 'groupdro'" in message and "baseline, pafo" in message


# ------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 12-user version of the population and a correct predictions table for it."""
    folder = tmp_path_factory.mktemp("audit_small")
    frame = population(n_users=12, n_rare=3, seed=1)
    frame.drop(columns=["agree", "rare", "prompt_no"]).to_csv(folder / "pairs.csv", index=False)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    good = test[["user_id", "prompt", "chosen", "rejected"]].assign(margin=shared_margin(test))
    return folder, good, frame


def _bad(case: str, good: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    train_row = frame[frame["split"] == "train"].iloc[[0]][["user_id", "prompt", "chosen", "rejected"]]
    test_ids = frame.index[frame["split"] == "test"].to_numpy()  # pair_id: the pair's row in pairs.csv
    edits = {
        "missing": lambda f: f.drop(index=[3, 5, 7]),
        "duplicated": lambda f: pd.concat([f, f.iloc[[4]]]),
        "extra": lambda f: pd.concat([f, train_row.assign(margin=1.0)]),
        "nan": lambda f: f.assign(margin=f["margin"].astype(object).where(f.index != 2, "nan")),
        "inf": lambda f: f.assign(margin=f["margin"].where(f.index != 2, np.inf)),
        "unknown user": lambda f: f.assign(user_id=f["user_id"].where(f.index != 1, "stranger")),
        "unknown pair": lambda f: f.assign(chosen=f["chosen"].where(f.index != 1, "Another answer.")),
        "no margin": lambda f: f.drop(columns="margin"),
        "both": lambda f: f.assign(score_chosen=1.0, score_rejected=0.0),
        "pair_id out of range": lambda f: f.assign(pair_id=np.where(f.index == 0, 10_000, f.index)),
        "pair_id of another user": lambda f: f.assign(pair_id=0),
        "pair_id of other texts": lambda f: f.assign(pair_id=test_ids[[1, 0, *range(2, len(f))]]),
        "empty user": lambda f: f.assign(user_id=f["user_id"].where(f.index != 6, "")),
    }
    return edits[case](good.copy())


BAD_CASES = {  # case → fragment of the one stderr line (with the count and first row where the rule names them)
    "missing": "3 of 96 test pairs have no prediction; first: pair",
    "duplicated": "1 pair(s) have more than one prediction; first: pair",
    "extra": "1 row(s) are train pairs, not pairs of the evaluated test split; first: row 97",
    "nan": "1 row(s) have a margin that is not a finite number; first: row 3;",
    "inf": "first: row 3",
    "unknown user": "1 row(s) name users the dataset does not have; first: row 2, user_id 'stranger'",
    "unknown pair": "1 row(s) match no pair of the dataset",
    "no margin": "needs a 'margin' column, or both 'score_chosen' and 'score_rejected'",
    "both": "has both 'margin' and 'score_chosen'/'score_rejected'",
    "pair_id out of range": "1 row(s) have a pair_id that is not a pair of the dataset",
    "pair_id of another user": "row 9: pair_id 0 is a pair of user 'u000', not of 'u001'",
    "pair_id of other texts": "row 1: pair_id 13 has a different prompt in the dataset",
    "empty user": "row 7: user_id is empty",
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_predictions_exit_2_with_one_line(case, small, tmp_path, capsys):
    """Each fault of a predictions file is one stderr line naming the file, how many rows and the first one."""
    folder, good, frame = small
    path = tmp_path / "bad.csv"
    _bad(case, good, frame).to_csv(path, index=False)
    message = one_line_error(*run_cli(["audit", "--dataset", "pairs", "--path", folder / "pairs.csv",
                                       "--predictions", f"m={path}"], capsys))
    assert str(path) in message
    assert BAD_CASES[case] in message, message


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--predictions", "nameonly"], "expected NAME=PATH"),
    (["--predictions", "bad name=x.csv"], "a model name is 1-40 letters"),
    (["--predictions", "a=GOOD", "--predictions", "a=GOOD"], "the model name 'a' is given twice"),
    (["--predictions", "a=GOOD", "--reference", "b"], "--reference: 'b' is not one of the audited models (a)"),
    ([], "give at least one --predictions"),
    (["--predictions", "a=GOOD", "--bootstrap", "3"], "--bootstrap: must be ≥ 10"),
    (["--predictions", "a=/no/such/file.csv"], "no such file"),
    (["--predictions", "a=FOLDER"], "is a folder without result.json"),
    (["--model", "a=GOOD"], "not a folder"),
    (["--model", "a=FOLDER"], "no readable config.json"),
])
def test_bad_flags_exit_2_with_one_line(flags, fragment, small, tmp_path, capsys):
    folder, good, _ = small
    good.to_csv(tmp_path / "good.csv", index=False)
    flags = [f.replace("GOOD", str(tmp_path / "good.csv")).replace("FOLDER", str(tmp_path)) for f in flags]
    message = one_line_error(*run_cli(["audit", "--dataset", "pairs", "--path", folder / "pairs.csv", *flags], capsys))
    assert fragment in message, message


def test_allow_missing_audits_covered_pairs_and_reports_coverage_per_group(small, tmp_path, capsys):
    """--allow-missing: users keep the accuracy of their covered pairs, users without any are left out, and the
    coverage block says how much of each group was audited."""
    folder, good, _ = small
    dropped_user = "u000"  # a rare (minority) user loses every test pair, u005 loses one
    partial = good[(good["user_id"] != dropped_user)].drop(index=good.index[good["user_id"] == "u005"][:1])
    partial.to_csv(tmp_path / "partial.csv", index=False)
    out, users_csv = tmp_path / "out.json", tmp_path / "users.csv"
    code, _, err = run_cli(["audit", "--dataset", "pairs", "--path", folder / "pairs.csv", "--predictions",
                            f"m={tmp_path / 'partial.csv'}", "--allow-missing", "--json", out, "--per-user-csv",
                            users_csv], capsys)
    assert code == 0, err
    result, users = json.loads(out.read_text()), pd.read_csv(users_csv).set_index("user_id")
    coverage = result["methods"]["m"]["coverage"]
    assert (coverage["pairs"], coverage["of_pairs"], coverage["users"], coverage["of_users"]) == (87, 96, 11, 12)
    group = users.loc[dropped_user, "group"]
    assert coverage[group]["users"] == coverage[group]["of_users"] - 1
    assert math.isnan(users.loc[dropped_user, "acc_m"])
    kept = good[good["user_id"] == "u005"].iloc[1:]
    expected = np.mean(np.where(kept["margin"] > 0, 1.0, np.where(kept["margin"] == 0, 0.5, 0.0)))
    assert users.loc["u005", "acc_m"] == expected


def test_pairs_file_without_split_column_audits_every_pair(small, tmp_path, capsys):
    """Without a split column the loader draws its own split, so the audit evaluates all pairs (train included)."""
    _, _, frame = small
    frame.drop(columns=["split", "agree", "rare", "prompt_no"]).to_csv(tmp_path / "nosplit.csv", index=False)
    everything = frame[["user_id", "prompt", "chosen", "rejected"]].assign(margin=np.where(frame["agree"], 1, -1))
    everything.to_csv(tmp_path / "all.csv", index=False)
    out = tmp_path / "out.json"
    base = ["audit", "--dataset", "pairs", "--path", tmp_path / "nosplit.csv"]
    code, _, err = run_cli([*base, "--predictions", f"m={tmp_path / 'all.csv'}", "--json", out], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["split"] == "all" and result["n_pairs"] == len(frame)
    assert result["methods"]["m"]["accuracy"]["micro"] == pytest.approx(frame["agree"].mean())
    everything.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    message = one_line_error(*run_cli([*base, "--predictions", f"m={tmp_path / 'short.csv'}"], capsys))
    assert f"1 of {len(frame)} all pairs have no prediction" in message
    code, _, err = run_cli([*base, "--split", "test", "--predictions", f"m={tmp_path / 'all.csv'}"], capsys)
    assert "not pairs of the evaluated test split" in one_line_error(code, _, err)


def test_ambiguous_text_keys_need_pair_ids(tmp_path, capsys):
    """A user who labelled the same pair twice makes a text join ambiguous: the error asks for pair_id, which works."""
    frame = population(n_users=6, n_rare=1, seed=2)
    frame = pd.concat([frame, frame.iloc[[len(frame) - 1]]], ignore_index=True)  # a test pair labelled twice
    frame.drop(columns=["agree", "rare", "prompt_no"]).to_csv(tmp_path / "pairs.csv", index=False)
    test = frame[frame["split"] == "test"]
    predictions = test[["user_id", "prompt", "chosen", "rejected"]].assign(margin=1.0)
    predictions.to_csv(tmp_path / "p.csv", index=False)
    base = ["audit", "--dataset", "pairs", "--path", tmp_path / "pairs.csv"]
    message = one_line_error(*run_cli([*base, "--predictions", f"m={tmp_path / 'p.csv'}"], capsys))
    assert "matches 2 pairs of the dataset" in message and "add a pair_id column" in message
    predictions.assign(pair_id=test.index).to_csv(tmp_path / "p.csv", index=False)
    code, _, err = run_cli([*base, "--predictions", f"m={tmp_path / 'p.csv'}"], capsys)
    assert code == 0, err


# ------------------------------------------------------------------------------------------- local reward models


def _word_tokenizer(texts: list[str], *, chat: bool = False):
    """A word-level tokenizer built locally (no download): [CLS] a [SEP] b [SEP] for pairs, optional chat template."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]",
                                                                                   "[SEP]"]))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    if chat:  # a decoder-style tokenizer: no padding token, an end-of-text token and a chat template
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="[SEP]",
                                       model_max_length=128)
        fast.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        return fast
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", model_max_length=128)


def tiny_reward_model(folder, texts: list[str], kind: str = "bert", *, head: bool = True):
    """Save a tiny random-weight reward model (BERT cross-encoder, or GPT-2 with a chat template) and tokenizer."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        GPT2Config,
        GPT2ForSequenceClassification,
    )

    tokenizer = _word_tokenizer(texts, chat=kind == "gpt2")
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=128, num_labels=1)
        model = GPT2ForSequenceClassification(config)
    else:
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=128, num_labels=1)
        model = BertForSequenceClassification(config) if head else BertModel(config)
    with torch.no_grad():  # the default init is so small that every text gets nearly the same reward
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    from pafo.encoders import quiet_transformers

    with quiet_transformers():  # no "Writing model shards" bar in the stderr a test then reads
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def _one_by_one(folder, prompts, responses) -> np.ndarray:
    """Each text through the model alone (no padding, no batching): what batched scoring must reproduce."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": response}], tokenize=False)
            encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        else:
            encoded = tokenizer(prompt, response, return_tensors="pt")
        with torch.no_grad():
            out.append(float(model(**encoded).logits[0, 0]))
    return np.array(out)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_local_reward_model_scores_in_sorted_batches_like_one_by_one(kind, tmp_path):
    """Batching sorted by length, padding and (GPT-2) the chat template and EOS padding give each text the reward
    it gets alone; texts of different lengths make the padding matter."""
    prompts = ["Question 1?", "Question 1?", "Question 2?", "A longer question number 3 with more words?"]
    responses = ["Answer A to question 1.", "Answer B.", "Answer A to question 2 with a few more words.", "B."]
    folder = tiny_reward_model(tmp_path / kind, prompts + responses, kind)
    scores = hf_reward.score_texts("tiny", folder, prompts, responses, precision="fp32", batch_size=3)
    np.testing.assert_allclose(scores.rewards, _one_by_one(folder, prompts, responses), rtol=0, atol=1e-5)
    assert scores.chat_template == (kind == "gpt2") and scores.precision == "fp32"
    assert len(set(np.round(scores.rewards, 6))) == len(prompts)  # the random model tells the texts apart
    auto = hf_reward.score_texts("tiny", folder, prompts, responses)
    assert auto.precision == ("bf16" if hf_reward._resolve_precision("auto", "cpu") == "bf16" else "fp32")
    np.testing.assert_allclose(auto.rewards, scores.rewards, atol=0.1)


def test_audit_of_a_local_reward_model_uses_one_margin_for_every_user(small, tmp_path, capsys):
    """--model: a non-personalized reward model, so the margin of a pair is r(chosen) − r(rejected) for all users."""
    folder, good, frame = small
    texts = frame["prompt"].tolist() + frame["chosen"].tolist()
    model = tiny_reward_model(tmp_path / "rm", texts)
    out = tmp_path / "out.json"
    code, _, err = run_cli(["audit", "--dataset", "pairs", "--path", folder / "pairs.csv", "--model",
                            f"rm={model}", "--precision", "fp32", "--predictions", f"shared={_save(good, tmp_path)}",
                            "--json", out], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    source = result["methods"]["rm"]["source"]
    assert source["kind"] == "model" and source["precision"] == "fp32" and source["n_texts"] == 2 * N_TEST
    # Independent margins: reward of A minus reward of B per test prompt, signed by each pair's direction.
    prompts = [f"Question {p}?" for p in range(N_TRAIN, N_TRAIN + N_TEST)]
    first = _one_by_one(model, prompts, [f"Answer A to question {p}." for p in range(N_TRAIN, N_TRAIN + N_TEST)])
    second = _one_by_one(model, prompts, [f"Answer B to question {p}." for p in range(N_TRAIN, N_TRAIN + N_TEST)])
    test = frame[frame["split"] == "test"]
    a_chosen = test["chosen"].str.startswith("Answer A").to_numpy()
    delta = (first - second)[test["prompt_no"].to_numpy() - N_TRAIN]
    margins = np.where(a_chosen, delta, -delta)
    assert result["methods"]["rm"]["accuracy"]["micro"] == pytest.approx(np.mean(margins > 0), abs=1e-12)
    assert result["comparisons"]["shared"]["verdict"] in ("pareto", "noise", "worse", "tradeoff")


def _save(frame: pd.DataFrame, folder) -> str:
    path = folder / "preds.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(("case", "fragment"), [
    ("base model", "not a sequence-classification model (architectures: BertModel)"),
    ("two labels", "the model has 2 outputs"),
    ("cuda", "--device cuda: no CUDA device"),
])
def test_bad_model_folders_exit_2_with_one_line(case, fragment, small, tmp_path, capsys):
    """A folder that is not a one-output sequence-classification model is refused before any scoring."""
    import torch

    folder, _, frame = small
    model = tiny_reward_model(tmp_path / "m", frame["prompt"].tolist(), head=case != "base model")
    if case == "two labels":
        config = json.loads((model / "config.json").read_text())
        config["id2label"] = {"0": "bad", "1": "good"}
        (model / "config.json").write_text(json.dumps(config))
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    flags = ["--device", "cuda"] if case == "cuda" else []
    message = one_line_error(*run_cli(["audit", "--dataset", "pairs", "--path", folder / "pairs.csv",
                                       "--model", f"m={model}", *flags], capsys))
    assert fragment in message, message


# ------------------------------------------------------------------------------------------- background runs


def test_audit_runs_in_the_background_like_a_training_run(small, tmp_path):
    """An audit config is a registry run of kind 'audit': a worker runs it and writes the experiment's artifacts
    (test_margins.csv with one margin column per model, per_user.csv, result.json)."""
    folder, good, _ = small
    preds = _save(good, tmp_path)
    config = audit.AuditConfig(data=DataConfig(dataset="pairs", path=str(folder / "pairs.csv")),
                               sources=[audit.parse_source("predictions", f"a={preds}"),
                                        audit.parse_source("predictions", f"b={preds}")]).validate()
    registry = RunRegistry()
    record = registry.wait(registry.submit_config(config).id, timeout=120)
    assert record.status == "succeeded", record.error
    assert record.kind == "audit" and record.config["target"] == AUDIT_TARGET
    result = registry.load_result(record.id).result
    assert result["kind"] == "audit" and result["comparisons"]["b"]["majority"]["delta"] == 0.0
    margins = pd.read_csv(registry.run_dir(record.id) / "test_margins.csv")
    assert list(margins.columns) == ["pair", "user", "prompt_id", "chosen", "rejected", "margin_a", "margin_b"]
    assert len(margins) == len(good)
    assert audit.AuditConfig.from_dict(record.config).to_dict() == config.to_dict()
    again = registry.submit_config(config)
    assert again.reused_from == record.id  # same files, same audit: answered from the finished run


def test_changed_predictions_file_is_a_new_audit(small, tmp_path):
    """Regression guard for the registry cache: editing a predictions file in place must change the fingerprint."""
    folder, good, _ = small
    preds = _save(good, tmp_path)
    config = audit.AuditConfig(data=DataConfig(dataset="pairs", path=str(folder / "pairs.csv")),
                               sources=[audit.parse_source("predictions", f"a={preds}")]).validate()
    before = config.fingerprint()
    good.assign(margin=-good["margin"]).to_csv(preds, index=False)
    assert config.fingerprint() != before


def test_check_sources_finds_bad_input_before_a_run_starts(small, tmp_path):
    folder, good, _ = small
    config = audit.AuditConfig(data=DataConfig(dataset="pairs", path=str(folder / "pairs.csv")),
                               sources=[audit.parse_source("predictions", f"a={_save(good.iloc[1:], tmp_path)}")])
    dataset = load_dataset(config.data)
    with pytest.raises(PafoInputError, match="1 of 96 test pairs have no prediction"):
        audit.check_sources(config.validate(), dataset)


# ------------------------------------------------------------------------------------------- the app


def _app_on(pairs_path) -> AppTest:
    """The app with a pairs file as the current dataset (what loading it on the Data page leaves in the session)."""
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["data_config"] = dataclasses.asdict(DataConfig(dataset="pairs", path=str(pairs_path)))
    return at.run()


def test_data_page_refuses_predictions_that_miss_pairs_naming_the_uploaded_file(small, tmp_path):
    """Bad input on the attach form is an st.error naming the file as uploaded (not its stored copy), and no run."""
    folder, good, _ = small
    at = _app_on(folder / "pairs.csv")
    at.file_uploader(key="audit_files").set_value([("short.csv", good.iloc[2:].to_csv(index=False).encode(),
                                                    "text/csv")])
    at.run()
    at.button(key="audit_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any("Cannot start the audit" in e and "short.csv: 2 of 96 test pairs have no prediction" in e
               for e in errors), errors
    assert RunRegistry().list() == []
    model = tiny_reward_model(tmp_path / "encoder only", ["Question 1?"], head=False)
    at.file_uploader(key="audit_files").set_value(None)
    at.text_input(key="audit_model").input(str(model)).run()
    at.button(key="audit_start").click().run()
    errors = [e.value for e in at.error]
    assert any("--model encoder_only=" in e and "not a sequence-classification model" in e for e in errors), errors
    assert RunRegistry().list() == []


def test_source_names_from_file_names_are_valid_and_unique():
    assert audit.source_name("preds v2") == "preds_v2"
    assert audit.source_name("Skywork-Reward-Llama-3.1-8B") == "Skywork-Reward-Llama-3.1-8B"
    assert audit.source_name("mine", ["mine", "mine_2"]) == "mine_3"
    assert audit.source_name("???") == "model"


def test_data_page_attaches_two_files_and_compare_users_and_report_show_the_audit(constructed, tmp_path):
    """Attach two prediction files on Data: the audit runs in the background, then Compare shows both models with
    the verdict, Users shows each model's margin per pair and the HTML report carries the paired comparison."""
    folder, _ = constructed
    personal = pd.read_parquet(folder / "personal.parquet")
    at = _app_on(folder / "pairs.csv")
    at.file_uploader(key="audit_files").set_value([
        ("shared.csv", (folder / "shared.csv").read_bytes(), "text/csv"),
        ("personal.jsonl", personal.to_json(orient="records", lines=True).encode(), "application/json")])
    at.run()
    assert at.selectbox(key="audit_reference").options == ["shared", "personal"]
    at.button(key="audit_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    run_id = at.session_state["run_id"]
    record = RunRegistry().wait(run_id, timeout=180)
    assert record.status == "succeeded", record.error
    assert record.kind == "audit" and record.label == "audit"
    at.run()
    assert any(t.value == "Compare methods" for t in at.title)
    assert [m.label for m in at.metric].count("Minority accuracy") == 2
    assert any("Verdict vs shared: **✓ Pareto improvement**" in m.value for m in at.markdown), [
        m.value for m in at.markdown]
    assert list(next(d.value for d in at.dataframe if "verdict" in d.value.columns)["verdict"]) == ["pareto"]
    assert not at.exception and not at.error
    at.switch_page("pages/users.py").run()
    assert not at.exception, [e.value for e in at.exception]
    pairs = at.dataframe[0].value
    assert {"shared margin", "personal margin", "shared right"} <= set(pairs.columns)
    assert len(pairs) == N_TEST
    from pafo import html_report

    result = RunResult.from_json(RunRegistry().load_result(run_id).result)
    page = html_report.build_report_html(result, run_id=run_id)
    assert "Paired comparisons" in page and "pareto" in page and "audit of given predictions" in page
    assert "BT log-loss" in page
