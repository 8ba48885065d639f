"""Models, trainer and methods (spec §5–6): BT loss, separable toy data, PAFO's teachers and its group-blind student."""

from __future__ import annotations

import copy
import inspect
import math

import numpy as np
import pytest
import torch

from pafo import methods as methods_mod
from pafo.methods import (
    METHOD_CONFIGS,
    METHODS,
    MethodContext,
    PAFOConfig,
    baseline_output,
    dense_pairs,
    fit_method,
    pareto_score,
    recentre,
    student_config,
    student_pairs,
)
from pafo.metrics import Group
from pafo.models import RewardModel, bt_loss, distillation_loss
from pafo.optim import AdamW
from pafo.training import Objective, PairSet, TrainConfig, epoch_order, pair_margins, train_model

pytestmark = pytest.mark.usefixtures("single_thread")



@pytest.fixture
def ctx(method_ctx):
    return method_ctx


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------- losses


def test_bt_loss_equals_hand_computation():
    """-log σ(r⁺ − r⁻), averaged; weighted: Σ w·l / Σ w."""
    chosen, rejected = torch.tensor([2.0, -1.0, 0.5, 3.0]), torch.tensor([1.0, 1.0, 0.5, -2.0])
    losses = [-math.log(_sigmoid(c - r)) for c, r in zip(chosen.tolist(), rejected.tolist())]
    assert bt_loss(chosen, rejected).item() == pytest.approx(sum(losses) / 4, rel=1e-6)
    weight = torch.tensor([1.0, 3.0, 0.0, 0.5])
    expected = sum(w * loss for w, loss in zip(weight.tolist(), losses)) / 4.5
    assert bt_loss(chosen, rejected, weight).item() == pytest.approx(expected, rel=1e-6)
    assert bt_loss(chosen, rejected, torch.zeros(4)).item() == 0.0  # no weight: no loss, not NaN
    # A wrong label direction costs more than the right one.
    assert bt_loss(rejected, chosen).item() > bt_loss(chosen, rejected).item()


def test_distillation_loss_equals_hand_computation():
    """BCE(σ(m_S/τ), σ(m_T/τ)) over unmasked pairs, and the MSE option on margins."""
    student, teacher, tau = torch.tensor([1.0, -2.0, 0.3]), torch.tensor([2.0, 1.0, -0.5]), 2.0
    mask = torch.tensor([1.0, 1.0, 0.0])

    def bce(s: float, t: float) -> float:
        p, q = _sigmoid(s / tau), _sigmoid(t / tau)
        return -(q * math.log(p) + (1 - q) * math.log(1 - p))

    terms = [bce(s, t) for s, t in zip(student.tolist(), teacher.tolist())]
    loss = distillation_loss(student, teacher, temperature=tau, mask=mask)
    assert loss.item() == pytest.approx((terms[0] + terms[1]) / 2, rel=1e-6)
    assert distillation_loss(student, teacher, temperature=tau).item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    mse = distillation_loss(student, teacher, kind="mse", mask=mask)
    assert mse.item() == pytest.approx((1.0**2 + 3.0**2) / 2, rel=1e-6)


def test_margin_is_the_difference_of_rewards():
    """margin(c, r, u) = r(c, u) − r(r, u) for both models; a new personalized model starts as the shared one."""
    torch.manual_seed(0)
    features, users = torch.randn(6, 5), torch.tensor([0, 1, 2])
    for personalized in (True, False):
        model = RewardModel(5, 3, hidden=8, k=3, personalized=personalized)
        expected = model(features[:3], users) - model(features[3:], users)
        torch.testing.assert_close(model.margin(features[:3], features[3:], users), expected)
    model = RewardModel(5, 3, hidden=8, k=3)
    torch.testing.assert_close(model(features[:3], users), model(features[:3], torch.tensor([2, 2, 2])))
    assert RewardModel(5, 3, personalized=False).user_penalty(users).item() == 0.0


@pytest.mark.parametrize("chosen, rejected", [
    ([0, 1, 2], [3, 4, 5]),  # all distinct
    ([0, 0, 1, 1], [2, 3, 2, 3]),  # responses shared between pairs
    ([4, 2, 5], [2, 4, 5]),  # a response on both sides, and a pair of a response with itself
])
@pytest.mark.parametrize("normalise", [False, True])
def test_indexed_margin_equals_margin_on_gathered_rows(chosen, rejected, normalise):
    """g applied once per distinct response gives the same margins (and gradients) as applying it per pair side."""
    torch.manual_seed(0)
    features, users = torch.randn(6, 5), torch.arange(len(chosen)) % 3
    model = RewardModel(5, 3, hidden=8, k=3, normalise=normalise)
    torch.nn.init.normal_(model.w.weight)
    c, r = torch.tensor(chosen), torch.tensor(rejected)
    direct = model.margin(features[c], features[r], users)
    indexed = model.indexed_margin(features, c, r, users)
    torch.testing.assert_close(indexed, direct)
    grads = [torch.autograd.grad(m.sum(), list(model.parameters())) for m in (direct, indexed)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adamw_matches_torch_adamw_bit_for_bit(weight_decay):
    """pafo.optim.AdamW (no torch._dynamo import) gives exactly torch.optim.AdamW's parameters, per-user group too."""
    torch.manual_seed(0)
    features, users = torch.randn(40, 6), torch.randint(0, 5, (20,))
    models = [RewardModel(6, 5, hidden=8, k=3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())

    def groups(model):
        return [{"params": [p for n, p in model.named_parameters() if n != "w.weight"]},
                {"params": [model.w.weight], "lr": 3e-2, "weight_decay": 0.0}]

    optimisers = [AdamW(groups(models[0]), lr=1e-2, weight_decay=weight_decay),
                  torch.optim.AdamW(groups(models[1]), lr=1e-2, weight_decay=weight_decay)]
    for _ in range(30):
        rows = torch.randperm(40)
        for model, optimiser in zip(models, optimisers, strict=True):
            optimiser.zero_grad()
            bt_loss(model.margin(features[rows[:20]], features[rows[20:]], users), torch.zeros(20)).backward()
            optimiser.step()
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- separable toy data


def _toy_pairs(direction_of_user: np.ndarray, n_pairs: int, seed: int = 0) -> tuple[torch.Tensor, PairSet]:
    """Random features; user u prefers the response with the larger direction_of_user[u] · x."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((120, 8)).astype(np.float32)
    v = rng.standard_normal(8)
    a = rng.integers(0, 120, n_pairs)
    b = (a + rng.integers(1, 120, n_pairs)) % 120
    users = np.arange(n_pairs) % len(direction_of_user)
    better = (features[a] - features[b]) @ v * direction_of_user[users] > 0
    return torch.from_numpy(features), PairSet(np.where(better, a, b), np.where(better, b, a), users)


TOY_TRAIN = TrainConfig(epochs=40, batch_size=64, lr=1e-2, hidden=32, k=4, user_l2=1e-3, patience=40)


def test_bt_model_fits_separable_data():
    """One linear direction decides every label: the bt model reaches ≥ 98% train accuracy."""
    features, pairs = _toy_pairs(np.ones(10), 400)
    torch.manual_seed(0)
    model = RewardModel(8, 10, hidden=32, k=4, personalized=False)
    result = train_model(model, features, pairs, pairs, TOY_TRAIN)
    accuracy = (pair_margins(model, features, pairs) > 0).mean()
    assert accuracy >= 0.98, f"bt train accuracy {accuracy:.3f}"
    assert result.best_val["overall"] == pytest.approx(accuracy)


def test_personalized_model_fits_two_opposite_user_types():
    """Two user types with opposite directions: the personalized model fits both (≥ 98%), the bt model cannot."""
    features, pairs = _toy_pairs(np.array([1.0] * 5 + [-1.0] * 5), 400)
    accuracy = {}
    for personalized in (True, False):
        torch.manual_seed(0)
        model = RewardModel(8, 10, hidden=32, k=4, personalized=personalized)
        train_model(model, features, pairs, pairs, TOY_TRAIN)
        accuracy[personalized] = (pair_margins(model, features, pairs) > 0).mean()
    assert accuracy[True] >= 0.98, f"personalized train accuracy {accuracy[True]:.3f}"
    assert accuracy[False] <= 0.75, f"a shared reward cannot fit opposite users ({accuracy[False]:.3f})"


@pytest.mark.parametrize("keep_initial", [False, True])
def test_keep_initial_returns_the_starting_model_when_no_epoch_beats_it(keep_initial):
    """A fine-tune whose every epoch scores below the start keeps the start only with keep_initial (best_epoch 0)."""
    features, pairs = _toy_pairs(np.ones(10), 200)
    torch.manual_seed(0)
    model = RewardModel(8, 10, hidden=16, k=4)
    train_model(model, features, pairs, pairs, TOY_TRAIN)
    before = pair_margins(model, features, pairs)
    config = TrainConfig(epochs=3, batch_size=64, lr=1e-2, hidden=16, k=4, patience=3)
    flipped = PairSet(pairs.rejected, pairs.chosen, pairs.users)  # reversed labels: every epoch loses accuracy
    result = train_model(model, features, flipped, pairs, config, keep_initial=keep_initial)
    after = pair_margins(model, features, pairs)
    if keep_initial:
        assert result.best_epoch == 0 and result.best_val == result.initial_val
        np.testing.assert_array_equal(after, before)
    else:
        assert result.best_epoch >= 1 and result.initial_val is None
        assert not np.array_equal(after, before)


# ------------------------------------------------------------------------------------------- methods


CLOSED_FORM = ("mixture", "pafo")  # built from the baseline and the cluster teachers, no epochs of their own


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_and_keeps_a_validated_epoch(name, ctx):
    """Each method returns a RewardModel with finite margins and the epoch its selection rule kept."""
    config = PAFOConfig(dense=4, restarts=4) if name in ("pafo", "mixture") else METHOD_CONFIGS[name]()
    output = fit_method(name, ctx, config, (0.0, 1.0))
    assert isinstance(output.model, RewardModel)
    assert output.model.personalized is (name != "bt")
    margins = pair_margins(output.model, ctx.features, ctx.val)
    assert margins.shape == (len(ctx.val),) and np.isfinite(margins).all()
    if name in CLOSED_FORM:
        assert output.result.best_epoch == 0 and output.result.history == []
        return
    assert 1 <= output.result.best_epoch <= len(output.result.history) <= ctx.train_config.epochs
    assert output.result.history[output.result.best_epoch - 1].get("kept")
    if name == "groupdro":
        q = output.extra["group_weights"]
        assert len(q) == 2 and sum(q) == pytest.approx(1.0) and min(q) > 0


def _record_fits(monkeypatch) -> list[dict]:
    """Spy on MethodContext.fit: the stage and the training/validation pairs of every model trained."""
    calls, original = [], MethodContext.fit

    def spy(self, model, train, val, stage, span, **kwargs):
        calls.append({"stage": stage, "train": copy.deepcopy(train), "val": copy.deepcopy(val), **kwargs})
        return original(self, model, train, val, stage, span, **kwargs)

    monkeypatch.setattr(MethodContext, "fit", spy)
    return calls


def test_teachers_see_only_their_groups_pairs(ctx, monkeypatch):
    """Regression: each PAFO teacher trains (and validates) on its own group's pairs only, and on all of them."""
    calls = _record_fits(monkeypatch)
    fit_method("pafo", ctx, PAFOConfig(dense=4, teachers="groups"), (0.0, 1.0))
    assert [c["stage"] for c in calls] == ["baseline", "teacher:majority", "teacher:minority", "student"]
    for call, group in ((calls[1], Group.MAJORITY), (calls[2], Group.MINORITY)):
        assert set(ctx.user_group[call["train"].users]) == {group}
        assert set(ctx.user_group[call["val"].users]) == {group}
        assert len(call["train"]) == int((ctx.user_group[ctx.train.users] == group).sum())
        assert len(call["val"]) == int((ctx.user_group[ctx.val.users] == group).sum())
    assert set(ctx.user_group[calls[3]["train"].users]) == set(Group)  # the student sees everybody


def test_teachers_and_student_stop_with_the_finetune_patience(ctx, monkeypatch):
    """Teachers and student (fine-tunes of the baseline) use finetune_patience; the baseline keeps TrainConfig's."""
    calls = _record_fits(monkeypatch)
    fit_method("pafo", ctx, PAFOConfig(dense=4, finetune_patience=2, teachers="groups"), (0.0, 1.0))
    assert "config" not in calls[0]  # the baseline: ctx.train_config
    assert [c["config"].patience for c in calls[1:]] == [2, 2, 2]
    assert ctx.train_config.patience != 2


def test_reweight_gives_each_group_equal_total_weight(ctx, monkeypatch):
    """reweight: the majority's and the minority's training pairs weigh the same in total."""
    calls = _record_fits(monkeypatch)
    fit_method("reweight", ctx, METHOD_CONFIGS["reweight"](), (0.0, 1.0))
    train = calls[0]["train"]
    totals = [train.weight[train.group == g].sum() for g in tuple(Group)]
    assert totals[0] == pytest.approx(totals[1], rel=1e-5)
    assert train.weight.sum() == pytest.approx(len(train), rel=1e-5)


def test_student_forward_takes_no_group_input():
    """The model's inputs are features and user indices only: there is no group parameter to pass."""
    for method in (RewardModel.forward, RewardModel.margin):
        names = list(inspect.signature(method).parameters)
        assert not any("group" in n for n in names), names
    assert list(inspect.signature(RewardModel.forward).parameters) == ["self", "features", "users"]
    assert list(inspect.signature(RewardModel.margin).parameters) == ["self", "chosen", "rejected", "users"]


def test_student_training_ignores_the_pairs_group(ctx):
    """Regression: the PairSet's group never reaches the student: flipped or absent groups train the same model."""
    config = PAFOConfig(dense=4, teachers="groups")
    base = baseline_output(ctx, (0.0, 0.3))
    teachers = {g: methods_mod._teacher(ctx, base.model, config, g, (0.3, 0.6)) for g in tuple(Group)}
    pairs = student_pairs(ctx, teachers, config)
    select = pareto_score(base.result.best_val["majority"], ctx.epsilon)
    margins = []
    for group in (pairs.group, 1 - pairs.group, None):
        student = copy.deepcopy(base.model)
        variant = copy.copy(pairs)
        variant.group = group
        ctx.fit(student, variant, ctx.val, "student", (0.6, 1.0), objective=Objective(lam=1.0), select=select)
        margins.append(pair_margins(student, ctx.features, ctx.val))
    np.testing.assert_array_equal(margins[0], margins[1])
    np.testing.assert_array_equal(margins[0], margins[2])
    assert not np.array_equal(margins[0], pair_margins(base.model, ctx.features, ctx.val))  # it did train


LAMBDA0_TOLERANCE = 1e-4  # absolute, on margins of order 1: float rounding of Σw·l/Σw vs mean(l), nothing more


def test_lambda_zero_student_equals_a_baseline_fine_tune(ctx):
    """With λ = 0 (and no dense pairs) PAFO's student is BT fine-tuning of the baseline on the same pairs.

    Compared with fine-tuning a copy of the baseline with the same TrainConfig, seed and Pareto selection:
    margins agree within LAMBDA0_TOLERANCE and the same epoch is kept.
    """
    config = PAFOConfig(lam=0.0, dense=0, teachers="groups")
    student = fit_method("pafo", ctx, config, (0.0, 1.0))
    base = ctx.cache["baseline"]
    select = pareto_score(base.result.best_val["majority"], ctx.epsilon)
    tuned = copy.deepcopy(base.model)
    result = ctx.fit(tuned, ctx.train, ctx.val, "fine-tune", (0.0, 1.0), select=select)
    assert result.best_epoch == student.result.best_epoch
    for pairs in (ctx.train, ctx.val):
        np.testing.assert_allclose(pair_margins(student.model, ctx.features, pairs),
                                   pair_margins(tuned, ctx.features, pairs), rtol=0, atol=LAMBDA0_TOLERANCE)
    assert [h["val"] for h in result.history] == [h["val"] for h in student.result.history]
    moved = np.abs(pair_margins(tuned, ctx.features, ctx.val) - pair_margins(base.model, ctx.features, ctx.val))
    assert moved.max() > 100 * LAMBDA0_TOLERANCE  # the fine-tune really moved away from the baseline


def test_student_batch_grows_with_dense_pairs(ctx):
    """With scale_batch the student takes as many steps per epoch as the baseline, and its user vectors' learning
    rate grows by √(pairs / labelled pairs); without it, the student trains with the baseline's settings."""
    n_labelled = len(ctx.train)
    n_steps = math.ceil(n_labelled / ctx.train_config.batch_size)
    scaled = student_config(ctx, PAFOConfig(finetune_patience=ctx.train_config.patience), 4 * n_labelled)
    assert math.ceil(4 * n_labelled / scaled.batch_size) == n_steps
    assert scaled.user_lr_scale == pytest.approx(2.0 * ctx.train_config.user_lr_scale)
    assert scaled.lr == ctx.train_config.lr
    same_patience = ctx.train_config.patience
    assert student_config(ctx, PAFOConfig(scale_batch=False, finetune_patience=same_patience),
                          4 * n_labelled) == ctx.train_config
    assert student_config(ctx, PAFOConfig(finetune_patience=same_patience), n_labelled) == ctx.train_config


@pytest.mark.parametrize("with_blocks", [False, True])
def test_epoch_order_is_a_seeded_permutation_running_through_whole_blocks(with_blocks):
    """Every pair once per epoch, the same order for the same seed; with blocks, each block's pairs are contiguous
    and the blocks come in a random order."""
    rng = np.random.default_rng(0)
    block = rng.integers(0, 12, 500) if with_blocks else None
    pairs = PairSet(np.arange(500), np.arange(500), np.zeros(500, dtype=np.int64), block=block)
    order = epoch_order(pairs, np.random.default_rng(3))
    assert sorted(order.tolist()) == list(range(500))
    np.testing.assert_array_equal(order, epoch_order(pairs, np.random.default_rng(3)))
    if with_blocks:
        runs = block[order][np.r_[True, np.diff(block[order]) != 0]]
        assert len(runs) == len(np.unique(block))  # one contiguous run per block
        assert not np.array_equal(runs, np.sort(runs))  # not simply sorted by block id
        assert not np.array_equal(order, epoch_order(pairs, np.random.default_rng(4)))


@pytest.mark.parametrize("batches", ["random", "by_prompt"])
def test_student_pairs_are_blocked_by_prompt_only_when_asked(ctx, batches):
    """by_prompt marks each student pair with its prompt (both responses share it); random leaves no blocks."""
    teachers = {g: baseline_output(ctx, (0.0, 1.0)) for g in tuple(Group)}
    pairs = student_pairs(ctx, teachers, PAFOConfig(dense=3, batches=batches))
    if batches == "random":
        assert pairs.block is None
    else:
        prompts = ctx.prompt_of_response
        np.testing.assert_array_equal(pairs.block, prompts[pairs.chosen])
        np.testing.assert_array_equal(prompts[pairs.chosen], prompts[pairs.rejected])


def test_dense_pairs_come_from_the_users_training_prompts(ctx):
    """Dense pairs: unlabelled by that user, from that user's training prompts only (never a test prompt)."""
    extra = dense_pairs(ctx, 5, np.random.default_rng(0))
    assert len(extra) > 0 and (extra.chosen != extra.rejected).all()
    assert np.bincount(extra.users, minlength=ctx.n_users).max() <= 5
    prompt_of = {int(r): p for p, rows in ctx.prompt_responses.items() for r in rows}
    labelled = set(zip(ctx.train.users.tolist(), np.minimum(ctx.train.chosen, ctx.train.rejected).tolist(),
                       np.maximum(ctx.train.chosen, ctx.train.rejected).tolist()))
    for user, a, b in zip(extra.users.tolist(), extra.chosen.tolist(), extra.rejected.tolist()):
        assert prompt_of[a] == prompt_of[b] and prompt_of[a] in set(ctx.train_prompts_of_user[user].tolist())
        assert (user, min(a, b), max(a, b)) not in labelled
    np.testing.assert_array_equal(extra.group, ctx.user_group[extra.users])


def test_student_pairs_carry_conditional_teacher_targets(ctx):
    """Labelled pairs get their group teacher's margin; dense pairs are oriented by it and unlabelled."""
    config = PAFOConfig(dense=3, condition="group+agree")
    base = baseline_output(ctx, (0.0, 0.5))
    teachers = {g: methods_mod._teacher(ctx, base.model, config, g, (0.5, 1.0)) for g in tuple(Group)}
    pairs = student_pairs(ctx, teachers, config)
    n = len(ctx.train)
    for group, teacher in teachers.items():
        rows = np.flatnonzero(ctx.user_group[ctx.train.users] == group)
        expected = pair_margins(teacher.model, ctx.features, ctx.train.subset(rows))
        np.testing.assert_allclose(pairs.target[rows], expected, rtol=1e-6)
    np.testing.assert_array_equal(pairs.target_mask[:n], (pairs.target[:n] > 0).astype(np.float32))
    assert pairs.labelled[:n].all() and not pairs.labelled[n:].any()
    assert (pairs.target[n:] >= 0).all() and (pairs.target_mask[n:] == 1).all()


def test_recentre_keeps_every_users_reward():
    """Recentring b on a group's mean user vector leaves each b + w_u, hence every margin, unchanged."""
    torch.manual_seed(0)
    model = RewardModel(5, 4, hidden=8, k=3)
    torch.nn.init.normal_(model.w.weight)
    features, users = torch.randn(8, 5), torch.arange(4).repeat(2)
    before = model.margin(features[:8], features.flip(0), users).detach()
    recentre(model, np.array([1, 3]))
    torch.testing.assert_close(model.margin(features[:8], features.flip(0), users).detach(), before)
    torch.testing.assert_close(model.b.detach(), (model.b + model.w.weight[[1, 3]]).mean(0).detach())


def test_pareto_score_prefers_minority_among_epochs_that_keep_the_majority():
    """Epochs whose majority accuracy stays within ε of the baseline rank first, by minority accuracy."""
    score = pareto_score(0.80, 0.01)
    ok_low = {"overall": 0.85, "majority": 0.80, "minority": 0.60}
    ok_high = {"overall": 0.80, "majority": 0.795, "minority": 0.70}
    too_low = {"overall": 0.90, "majority": 0.70, "minority": 0.95}
    assert max([ok_low, ok_high, too_low], key=score) is ok_high
    assert score(too_low)[0] == 0 and score(ok_low)[0] == 1


def test_penalty_counts_only_pairs_that_carry_a_loss():
    """Regression: with λ = 0 the dense teacher pairs carry no loss, yet they used to dilute the L2 prior on w_u
    (scale labelled/all), so 'PAFO without distillation' silently trained a less regularised baseline."""
    import numpy as np

    from pafo.training import PairSet, UserPenalty

    n = np.arange(4)
    pairs = PairSet(n, n + 4, np.array([0, 0, 1, 1]), labelled=np.array([True, True, False, False]),
                    target=np.ones(4, dtype=np.float32), target_mask=np.ones(4, dtype=np.float32))
    assert UserPenalty.for_pairs(1.0, pairs, distilled=False).scale == 1.0
    assert UserPenalty.for_pairs(1.0, pairs, distilled=True).scale == 0.5


def test_the_method_registry_drives_config_flags_forms_and_colours():
    """Guards the 8-file method list (issue 12): every registered method must be reachable from the one registry —
    its options a config section and CLI flags, its fit function importable, a colour of its own — with nothing
    written elsewhere by hand."""
    import dataclasses

    from pafo import report
    from pafo.cli import build_parser
    from pafo.experiment import ExperimentConfig, method_config_of
    from pafo.method_configs import METHOD_SPECS, METHODS, method_sections

    config = ExperimentConfig()
    sections = config.to_dict()
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["experiment"]._actions}
    for spec in METHOD_SPECS:
        assert callable(spec.fit_function())
        options = method_config_of(config, spec.name)
        owner = spec.config if spec.section in (None, spec.name) else method_sections()[spec.section]
        assert isinstance(options, owner)
        if spec.section == spec.name:
            assert spec.name in sections
            assert {f.name for f in dataclasses.fields(spec.config)} <= flags
    assert list(method_sections()) == [n for n in sections if n not in ("data", "groups", "run", "train")]
    assert len({spec.colour for spec in METHOD_SPECS}) == len(METHODS)
    assert report.method_order(reversed(METHODS)) == list(METHODS)
    assert [report.method_color(name) for name in METHODS] == [spec.colour for spec in METHOD_SPECS]
