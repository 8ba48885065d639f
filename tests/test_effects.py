"""Which options have an effect (pafo.conditions, pafo.effects): the declarations are checked against real runs,
and every place that reads them refuses a no-effect option with one line saying what would make it matter."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest

from pafo import effects
from pafo.config import field_choices
from pafo.effects import APP_WORDS, SECTIONS, NoEffectError, flat_values, is_active, no_effect_reason
from pafo.method_configs import PAFOConfig
from pafo.sources import DataConfig, load_dataset

TINY = {"data": {"users": 24, "prompts": 16, "responses_per_prompt": 4, "train_pairs": 6, "test_pairs": 4},
        "run": {"encoder": "tfidf", "bootstrap": 20}, "train": {"epochs": 3, "patience": 2}}


def _config(**sections) -> dict:
    out = {name: dict(part) for name, part in TINY.items()}
    for name, part in sections.items():
        out.setdefault(name, {}).update(part)
    return out


def _other_value(section: str, field: dataclasses.Field, value):
    """A valid value of ``field`` different from ``value``."""
    cls = SECTIONS[section]
    choices = field_choices(cls, field)
    if choices:
        return next(c for c in choices if c != value)
    hint = typing.get_type_hints(cls)[field.name]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if base is bool:
        return not value
    if base is str:
        grid = field.metadata.get("grid")  # a structured text option (e.g. --subspaces) offers valid values
        return next(g for g in grid if g != value) if grid else "elsewhere.csv" if field.name == "path" else "x"
    if value is None:
        return 0.5
    bounds = {k: field.metadata.get(k) for k in ("le", "lt")}
    new = value + 1 if base is int else (value * 2 if value else 0.5)
    limit = bounds["le"] if bounds["le"] is not None else bounds["lt"]
    if limit is not None and new >= limit:
        new = value / 2 if value else limit / 2
    return base(new)


def _with_inert_changed(config: dict) -> tuple[dict, list[str]]:
    """``config`` with every option that has no effect there set to another value, and those options' keys."""
    values = flat_values(config)
    inert = [key for key in values if not is_active(values, key)]
    changed = {name: dict(part) for name, part in config.items()}
    for key in inert:
        section, _, name = key.partition(".")
        field = effects.option_field(key)
        changed.setdefault(section, {})[name] = _other_value(section, field, values[key])
    assert not any(is_active(flat_values(changed), key) for key in inert), "a change woke an option"
    return changed, inert


def _outcome(result) -> dict:
    """What a run says about its methods, without timings (they differ run to run)."""

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if "seconds" not in k}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip({key: value for key, value in result.to_json().items() if key in ("methods", "comparisons",
                                                                                  "per_user")})


CASES = {
    "wide student (default)": {},
    "distilled student": {"pafo": {"student": "distilled", "dense": 4, "heldout": 3}},
    "distilled, λ = 0": {"pafo": {"student": "distilled", "dense": 4, "heldout": 3, "lam": 0.0}},
    "group teachers": {"pafo": {"teachers": "groups", "dense": 4}},
    "group teachers, no dense pairs": {"pafo": {"teachers": "groups", "dense": 0}},
    "mixture and GroupDRO, no PAFO": {"run": {"methods": "baseline,mixture,groupdro"}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_options_declared_inactive_do_not_change_the_result(case):
    """Guards every ``active_when`` declaration: a run with every option declared inactive set to another value
    (λ, τ, the data's unread fields, ...) gives the same methods, comparisons and per-user table as the run at
    the base values; a wrong declaration (an option the code reads after all) makes the results differ."""
    from pafo.experiment import run_experiment

    base = _config(**{**{"pafo": {"restarts": 2}}, **CASES[case]})
    base.setdefault("pafo", {}).setdefault("restarts", 2)
    changed, inert = _with_inert_changed(base)
    assert inert  # each case leaves some options without effect
    assert _outcome(run_experiment(base)) == _outcome(run_experiment(changed)), inert


def test_the_identity_check_sees_an_active_option():
    """The control of the test above: β is active with the wide student, and changing it changes the result (so
    equal outcomes there are evidence, not a comparison that cannot fail)."""
    from pafo.experiment import run_experiment

    base = _config(pafo={"restarts": 2})
    assert is_active(flat_values(base), "pafo.beta")
    moved = _config(pafo={"restarts": 2, "beta": PAFOConfig().beta + 1})
    assert _outcome(run_experiment(base)) != _outcome(run_experiment(moved))


def test_a_source_ignores_the_data_options_it_does_not_read(dsp_path):
    """DSP's data is the same whatever the synthetic-only options say (``SourceSpec.reads``), and the synthetic
    data the same whatever DSP's ``include_normal`` says."""
    dsp = {"data": {"dataset": "dsp", "path": str(dsp_path), "users": 30}}
    changed, inert = _with_inert_changed(dsp)
    assert {"data.prompts", "data.data_seed", "data.judges", "data.quality_noise"} <= set(inert)
    a, b = load_dataset(DataConfig(**dsp["data"])), load_dataset(DataConfig(**changed["data"]))
    assert a.pairs.equals(b.pairs) and a.responses.equals(b.responses)
    synthetic = {"data": {"users": 20, "prompts": 12}}
    changed, inert = _with_inert_changed(synthetic)
    assert {"data.include_normal", "data.path"} <= set(inert)
    a, b = load_dataset(DataConfig(**synthetic["data"])), load_dataset(DataConfig(**changed["data"]))
    assert a.pairs.equals(b.pairs) and np.array_equal(a.responses["text"], b.responses["text"])


# ------------------------------------------------------------------------------------------- declarations


def test_the_default_pafo_reads_no_distillation_option():
    """Regression (issue 19): What-if's first knobs (λ, τ, condition) did nothing for the default PAFO (closed-form
    wide student), and nothing said so."""
    values = flat_values({})
    for key in ("pafo.lam", "pafo.temperature", "pafo.condition", "pafo.dense", "pafo.heldout", "pafo.batches"):
        assert not is_active(values, key), key
    for key in ("pafo.beta", "pafo.clusters", "pafo.calibrate", "run.epsilon", "train.epochs", "data.users"):
        assert is_active(values, key), key
    distilled = flat_values({"pafo": {"student": "distilled"}})
    assert is_active(distilled, "pafo.lam") and is_active(distilled, "pafo.heldout")
    assert not is_active(distilled, "pafo.condition")  # the group teachers' targets only
    groups = flat_values({"pafo": {"teachers": "groups"}})
    assert is_active(groups, "pafo.condition") and not is_active(groups, "pafo.beta")
    assert not is_active(groups, "pafo.student") and not is_active(groups, "pafo.clusters")
    mixture = flat_values({"pafo": {"teachers": "groups"}, "run": {"methods": "baseline,pafo,mixture"}})
    assert is_active(mixture, "pafo.clusters")  # the mixture reads PAFO's cluster options whatever its teachers


def test_the_sentence_says_what_would_make_an_option_matter():
    values = flat_values({})
    assert no_effect_reason(values, "pafo.lam") == ("--lambda has no effect with --student wide and --teachers "
                                                    "clusters; add --student distilled or --teachers groups")
    assert no_effect_reason(values, "pafo.lam", APP_WORDS) == (
        "λ (distillation weight) has no effect with student = wide and teachers = clusters; set student to "
        "distilled or teachers to groups")
    assert no_effect_reason(values, "pafo.beta") is None
    baseline_only = flat_values({"run": {"methods": "baseline"}})
    assert no_effect_reason(baseline_only, "pafo.beta") == "--beta has no effect with --methods baseline; add pafo " \
                                                           "to --methods"
    assert no_effect_reason(flat_values({"data": {"dataset": "dsp"}}), "data.prompts") == (
        "--prompts has no effect with --dataset dsp; only --dataset synthetic reads it")
    threshold = flat_values({"groups": {"minority_threshold": 0.3}})
    assert no_effect_reason(threshold, "groups.minority_quantile") == (
        "--minority-quantile has no effect with --minority-threshold 0.3; leave out --minority-threshold")


def test_epsilon_matters_for_any_verdict():
    """ε is every verdict's tolerance (a run setting) and also PAFO's group-selection tolerance: with reweight
    compared to the baseline it matters without PAFO; with the baseline alone nothing is compared; with PAFO's group
    teachers alone it selects their epoch."""
    assert is_active(flat_values({"run": {"methods": "baseline,reweight"}}), "run.epsilon")
    assert not is_active(flat_values({"run": {"methods": "baseline"}}), "run.epsilon")
    assert is_active(flat_values({"run": {"methods": "pafo"}, "pafo": {"teachers": "groups"}}), "run.epsilon")


def test_check_effective_refuses_only_the_options_set_on_purpose():
    config = flat_values({"pafo": {"lam": 2.0}})  # a stored config may carry anything
    effects.check_effective(config, ["pafo.beta"])
    with pytest.raises(NoEffectError, match="--lambda has no effect"):
        effects.check_effective(config, ["pafo.lam"])
    assert effects.inert_options(config) == ["pafo.lam"]  # the only one away from its default


def test_check_grid_needs_every_swept_key_to_matter_in_every_point():
    effects.check_grid({}, {"pafo.beta": [0.5, 1.0]})
    effects.check_grid({"pafo": {"student": "distilled"}}, {"pafo.lam": [0.0, 1.0]})
    with pytest.raises(NoEffectError, match=r"--grid pafo\.lam: --lambda has no effect"):
        effects.check_grid({}, {"pafo.lam": [0.0, 1.0]})
    with pytest.raises(NoEffectError, match="--lambda"):  # the wide points of the grid would repeat one result
        effects.check_grid({}, {"pafo.student": ["wide", "distilled"], "pafo.lam": [0.0, 1.0]})
    # an option set on purpose must matter somewhere in the grid, not everywhere
    effects.check_grid({"pafo": {"lam": 2.0}}, {"pafo.student": ["wide", "distilled"]}, explicit=["pafo.lam"])
    with pytest.raises(NoEffectError, match="in every cell"):
        effects.check_grid({"pafo": {"lam": 2.0}}, {"pafo.beta": [1.0, 2.0]}, explicit=["pafo.lam"])


def test_reset_inert_puts_no_effect_options_back_to_their_defaults():
    config = {"pafo": {"lam": 2.0, "beta": 2.0, "teachers": "clusters"}, "run": {"methods": "baseline,pafo"}}
    out = effects.reset_inert(config)
    assert out["pafo"]["lam"] == 1.0 and out["pafo"]["beta"] == 2.0
    assert config["pafo"]["lam"] == 2.0  # the input is not changed


def test_every_option_has_a_plain_label():
    """Regression (issue 19): the Train form showed flag names such as `heldout`, `dense`, `k` and `batches`."""
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            assert field.metadata.get("label"), f"{section}.{field.name} declares no label"


# ------------------------------------------------------------------------------------------- command line

CLI_CASES = {
    "lambda with the wide student": (["experiment", "--lambda", "2"],
                                     "--lambda has no effect with --student wide and --teachers clusters; add "
                                     "--student distilled or --teachers groups"),
    "lambda at its default value is still refused": (["experiment", "--lambda", "1"], "--lambda has no effect"),
    "heldout with group teachers": (["experiment", "--teachers", "groups", "--heldout", "5"],
                                    "--heldout has no effect with --teachers groups and --student wide; add "
                                    "--teachers clusters and --student distilled"),
    "beta without pafo": (["experiment", "--methods", "baseline,reweight", "--beta", "2"],
                          "--beta has no effect with --methods baseline,reweight; add pafo to --methods"),
    "runs start refuses it too": (["runs", "start", "--temperature", "2"], "--temperature has no effect"),
    "prompts on dsp": (["support", "--dataset", "dsp", "--path", "DSP", "--prompts", "10"],
                       "--prompts has no effect with --dataset dsp; only --dataset synthetic reads it"),
    "data seed on dsp": (["experiment", "--dataset", "dsp", "--path", "DSP", "--data-seed", "3"],
                         "--data-seed has no effect with --dataset dsp"),
    "users of a pairs file": (["support", "--dataset", "pairs", "--path", "DSP", "--users", "50"],
                              "--users has no effect with --dataset pairs"),
    "sweep of lambda": (["sweep", "--grid", "pafo.lam=0,1"],
                        "--grid pafo.lam: --lambda has no effect with --student wide and --teachers clusters"),
    "sweep flag that matters in no cell": (["sweep", "--condition", "group+agree", "--grid", "pafo.beta=1,2"],
                                           "--condition has no effect with --teachers clusters"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_the_cli_refuses_an_option_that_cannot_change_the_result(case, capsys, dsp_path, pafo_home):
    """Issue 19: setting an option that cannot change the result exits 2 with one line that says so and what would
    make it matter, before any data is embedded or any run is queued or started."""
    from conftest import run_cli

    from pafo.registry import RunRegistry

    argv, expected = CLI_CASES[case]
    argv = [str(dsp_path) if a == "DSP" else a for a in argv]
    code, out, err = run_cli([*argv, "--encoder", "tfidf"] if argv[0] != "support" else argv, capsys)
    lines = err.splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("pafo: error: ") and expected in lines[0], lines[0]
    assert not RunRegistry(pafo_home).list()


def test_the_cli_accepts_options_that_matter(capsys, tmp_path):
    """The same options where they do matter: λ with the distilled student, the synthetic-only options on the
    synthetic data, β with the default PAFO."""
    from pafo import cli

    for flags in (["--student", "distilled", "--lambda", "2", "--heldout", "5"], ["--prompts", "10"],
                  ["--beta", "2"], ["--teachers", "groups", "--condition", "group+agree", "--dense", "0"]):
        args = cli.build_parser().parse_args(["experiment", *flags])
        cli.experiment_config_from_args(args)  # no error
