"""A task without labelled samples is NaN / null / "no labelled samples", never 0;
the verdict counts its samples; test and validate name the checkpoint they evaluated."""

import contextlib
import io
import json
import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from torchjd.aggregation import MGDA

from mtl_lightning import MultiTaskModule, TaskSpec
from mtl_lightning.adversary import AdversaryConfig
from mtl_lightning.callbacks import MultiTaskSummary
from mtl_lightning.data.base import TensorTaskDataset
from mtl_lightning.nn.dense import DenseTrunk
from mtl_lightning.weighting import (
    FAMO,
    DynamicWeightAverage,
    GradNorm,
    InverseMetricWeighting,
    JacobianAggregation,
    RandomLossWeighting,
    StaticWeighting,
    UncertaintyWeighting,
)

TASKS = [TaskSpec("a", 2), TaskSpec("y2", 3), TaskSpec("s", 2, role="adversarial")]
N_VAL = 40


def _data(n: int, labelled_y2: bool, seed: int) -> TensorTaskDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y2 = torch.randint(0, 3, (n,), generator=g) if labelled_y2 else torch.full((n,), -100)
    s = torch.randint(0, 2, (n,), generator=g)
    return TensorTaskDataset(x, {"a": (x[:, 0] > 0).long(), "y2": y2, "s": s})


def _trainer(root, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=CSVLogger(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two epochs; y2 is labelled in training only; two ModelCheckpoints, the second saving
    last.ckpt; then test and validate of that checkpoint from fresh trainers."""
    root = tmp_path_factory.mktemp("honest")
    pl.seed_everything(0, verbose=False)
    model = MultiTaskModule(
        TASKS,
        trunk=DenseTrunk(6, divisors=(1,), dropout=0.0),
        head_hidden=0,
        weighting=InverseMetricWeighting(metric="balanced_acc", smoothing=0.0),
        adversary_config=AdversaryConfig(attackers=[0], steps=1),
    )
    train = DataLoader(_data(64, True, 1), batch_size=32)
    val = DataLoader(_data(N_VAL, False, 2), batch_size=N_VAL)
    checkpoints = [
        ModelCheckpoint(monitor="val/a/balanced_acc", mode="max"),
        ModelCheckpoint(save_top_k=0, save_last=True),
    ]
    trainer = _trainer(root, max_epochs=2, callbacks=[MultiTaskSummary(), *checkpoints])
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.filterwarnings("ignore", ".*called before the ``update`` method.*")
        warnings.filterwarnings("ignore", ".*callbacks used to create the checkpoint.*")
        trainer.fit(model, train, val)
        fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        last = checkpoints[1].last_model_path
        for command in ("test", "validate"):
            evaluate = _trainer(root, callbacks=[MultiTaskSummary()], enable_checkpointing=False)
            getattr(evaluate, command)(model, val, ckpt_path=last)
    return {
        "root": root / "lightning_logs",
        "metrics": fit_metrics,
        "model": model,
        "last": last,
        "global_step": trainer.global_step,
        "out": out.getvalue(),
    }


def test_unlabelled_task_is_nan_in_logs_null_in_json_and_keeps_its_weight(run):
    metrics = run["metrics"]
    for key in ("acc", "balanced_acc", "f1", "loss"):
        assert math.isnan(metrics[f"val/y2/{key}"]), key  # was 0.0 for acc, balanced_acc, f1
    assert metrics["val/y2/n"] == 0 and metrics["val/a/n"] == N_VAL
    assert metrics["val/s/n"] == N_VAL  # the attackers' count
    assert metrics["train/y2/n"] == 64  # the last epoch's labelled training samples
    y2 = json.loads((run["root"] / "version_0" / "summary.json").read_text())["val"]["tasks"][1]
    assert y2["verdict"] == "no labelled samples" and y2["n"] == 0
    assert y2["acc"] is None and y2["balanced_acc"] is None and y2["loss"] is None
    # docs/weighting.md: a NaN metric keeps its weight (the fake 0.0 gave y2 1.71 vs 0.29)
    assert run["model"].weighting.current_weights() == {"a": 1.0, "y2": 1.0}


def test_test_and_validate_name_their_checkpoint_and_reach_the_training_summary(run):
    last = run["last"]
    epoch = torch.load(last, weights_only=True)["epoch"]
    training = json.loads((run["root"] / "version_0" / "summary.json").read_text())
    # every ModelCheckpoint is read: the second one saved last.ckpt
    assert training["val"]["last_checkpoint"] == last and training["val"]["best_checkpoint"]
    for version, section in ((1, "test"), (2, "validate")):
        own = json.loads((run["root"] / f"version_{version}" / "summary.json").read_text())
        for payload in (own[section], training[section]):
            assert payload["checkpoint"] == last
            assert (payload["epoch"], payload["global_step"]) == (epoch, run["global_step"])
            assert payload["tasks"][1]["verdict"] == "no labelled samples"
            assert payload["tasks"][0]["n"] == N_VAL
    assert run["global_step"] > 0 and "val" in training  # fit's section kept
    out = run["out"]
    assert (
        f"Per-task results (test, epoch {epoch}, global step {run['global_step']}, {last})" in out
    )
    summary = run["root"] / "version_0" / "summary.json"
    assert f"test results added to the training run's summary {summary}" in out
    assert f"validate results added to the training run's summary {summary}" in out


def test_in_memory_weights_name_no_checkpoint(tmp_path, capsys):
    model = MultiTaskModule(TASKS[:1], trunk=DenseTrunk(6, divisors=(1,)), head_hidden=0)
    trainer = _trainer(tmp_path, callbacks=[MultiTaskSummary()])
    data = TensorTaskDataset(torch.randn(8, 6), {"a": torch.randint(0, 2, (8,))})
    trainer.test(model, DataLoader(data, batch_size=8))
    out = capsys.readouterr().out
    assert "Per-task results (test, epoch 0, global step 0)" in out and "training run" not in out
    test = json.loads((tmp_path / "lightning_logs" / "version_0" / "summary.json").read_text())
    assert test["test"]["checkpoint"] is None and test["test"]["tasks"][0]["n"] == 8
    assert test["test"]["tasks"][0]["verdict"] == "too few samples (n=8)"


# ------------------------------------------------------------------ weighting strategies
MAIN = [TaskSpec("a", 2), TaskSpec("b", 2)]
NAN = float("nan")


def _weights(strategy, losses):
    strategy({k: torch.tensor(v) for k, v in losses.items()}, MAIN)
    return strategy.last_weights


def test_inverse_metric_and_dwa_keep_a_nan_tasks_weight():
    inverse = InverseMetricWeighting(metric="acc", smoothing=0.0)
    inverse.setup(MAIN)
    inverse.on_validation_end({"a": {"acc": 0.9}, "b": {"acc": 0.3}})
    inverse.on_validation_end({"a": {"acc": 0.6}, "b": {"acc": NAN}})
    assert inverse.current_weights() == {"a": 0.5, "b": 1.5}  # b kept 1.5; a took the rest
    dwa = DynamicWeightAverage(temperature=1.0)
    dwa.setup(MAIN)
    for epoch in ({"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": NAN}):
        dwa.on_train_epoch_end(epoch)
    # b keeps its rate 1/1; a's is now 1/1 too: equal weights
    assert dwa.current_weights() == pytest.approx({"a": 1.0, "b": 1.0})


def test_loss_strategies_weights_do_not_depend_on_an_unlabelled_tasks_zero_loss():
    """A batch without labels for b gives b a loss of exactly 0 (the module's contract)."""
    static = StaticWeighting({"b": 0.5})
    static.setup(MAIN)
    assert _weights(static, {"a": 1.0, "b": 0.0}) == _weights(static, {"a": 1.0, "b": NAN})
    rlw = RandomLossWeighting(seed=3)
    rlw.setup(MAIN)
    first = _weights(rlw, {"a": 1.0, "b": 0.0})
    assert sum(first.values()) == pytest.approx(2.0) and all(map(math.isfinite, first.values()))
    uncertainty = UncertaintyWeighting()
    uncertainty.setup(MAIN)
    assert _weights(uncertainty, {"a": 1.0, "b": 0.0}) == {"a": 1.0, "b": 1.0}


def test_famo_refuses_a_nan_loss_without_touching_its_state():
    famo = FAMO()
    famo.setup(MAIN)
    _weights(famo, {"a": 1.0, "b": 2.0})
    before = {k: v.clone() for k, v in famo.state_dict().items()}
    with pytest.raises(FloatingPointError, match="non-finite task losses"):
        _weights(famo, {"a": 1.0, "b": NAN})
    assert all(torch.equal(before[k], v) for k, v in famo.state_dict().items())


@pytest.mark.parametrize("make", [GradNorm, JacobianAggregation], ids=["gradnorm", "upgrad"])
def test_gradient_strategies_give_finite_weights_with_an_unlabelled_task(make):
    """b has no labelled sample: a zero gradient row and a zero loss."""
    strategy = make()
    strategy.setup(MAIN)
    gramian = torch.diag(torch.tensor([1.0, 0.0]))
    for _ in range(3):
        weights = strategy.gramian_weights(gramian, torch.tensor([1.0, 0.0]))
        assert bool(torch.isfinite(weights).all()), weights


# ------------------------------------------------------------------ a task with no labelled sample
def test_famo_gives_an_unlabelled_task_weight_0_and_leaves_its_logit():
    famo = FAMO(lr=0.1)
    famo.setup(MAIN)
    assert _weights(famo, {"a": 1.0, "b": 0.0}) == {"a": 1.0, "b": 0.0}  # was a 0.0, b 2.0
    three = [*MAIN, TaskSpec("c", 2)]
    famo = FAMO(lr=0.1)
    famo.setup(three)
    for a in (1.0, 0.5, 0.25):  # b unlabelled; a falls, c does not
        famo({"a": torch.tensor(a), "b": torch.tensor(0.0), "c": torch.tensor(1.0)}, three)
        famo.after_optimizer_step(
            lambda a=a: {k: torch.tensor(v) for k, v in {"a": a / 2, "b": 0.0, "c": 1.0}.items()}
        )
    assert float(famo.logits[1]) == 0.0 and float(famo.adam_m[1]) == 0.0  # b not pushed
    assert float(famo.logits[2]) > 0.0 > float(famo.logits[0])  # c, stalled, is turned up


@pytest.mark.parametrize("variant", ["paper", "normalised"])
def test_gradnorm_records_an_initially_unlabelled_tasks_first_real_loss(variant):
    """Identical tasks, b unlabelled in the first batch: the weights stay equal."""
    g = GradNorm(variant=variant)
    g.setup(MAIN)
    g.gramian_weights(torch.diag(torch.tensor([1.0, 0.0])), torch.tensor([1.0, 0.0]))
    assert g.weights.tolist() == [1.0, 1.0] and g.initialised.tolist() == [True, False]
    for step in range(20):
        loss = 0.9**step
        g.gramian_weights(torch.eye(2), torch.tensor([loss, loss]))
    assert g.initial_losses.tolist() == [1.0, 1.0]
    assert g.weights.tolist() == pytest.approx([1.0, 1.0])  # were [0.571, 1.429] (paper)


def test_gradnorm_loads_a_checkpoint_with_one_initialised_flag():
    old = GradNorm()
    old.setup(MAIN)
    state = old.state_dict()
    # before per-task flags: one scalar, and b's L(0) clamped to 1e-12 (unlabelled at step 1)
    state["initialised"] = torch.tensor(True)
    state["initial_losses"] = torch.tensor([2.0, 1e-12])
    g = GradNorm()
    g.setup(MAIN)
    g.load_state_dict(state)
    assert g.initialised.tolist() == [True, False]  # b is recorded afresh
    g.gramian_weights(torch.eye(2), torch.tensor([1.0, 0.5]))
    assert g.initial_losses.tolist() == [2.0, 0.5]


def test_uncertainty_does_not_pull_an_unlabelled_tasks_log_variance_down():
    u = UncertaintyWeighting()
    u.setup(MAIN)
    optimizer = torch.optim.Adam(u.parameters(), lr=0.01)
    for _ in range(100):
        optimizer.zero_grad()
        u({"a": torch.tensor(2.0), "b": torch.tensor(0.0)}, MAIN).backward()
        optimizer.step()
    weights = u.last_weights
    assert weights["b"] == 1.0 and weights["a"] < 1.0  # b was 2.69


def test_mgda_weights_only_the_labelled_tasks():
    mgda = JacobianAggregation(MGDA())
    mgda.setup(MAIN)
    weights = mgda.gramian_weights(torch.diag(torch.tensor([1.0, 0.0])), torch.tensor([1.0, 0.0]))
    assert weights.tolist() == [1.0, 0.0]  # was [0.0, 1.0]: no trunk update
    rows = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    weights = mgda.gramian_weights(rows @ rows.T, torch.tensor([1.0, 0.0, 2.0]))
    assert weights.tolist() == pytest.approx([0.9, 0.0, 0.1])  # MGDA of a and c alone


@pytest.mark.filterwarnings("ignore:.*no `val_dataloader`")
def test_the_module_logs_weight_0_for_an_unlabelled_task_and_moves_the_trunk(tmp_path):
    pl.seed_everything(0, verbose=False)
    tasks = [TaskSpec("a", 2), TaskSpec("y2", 3)]
    model = MultiTaskModule(
        tasks, trunk=DenseTrunk(6, divisors=(1,)), head_hidden=0,
        weighting=JacobianAggregation(MGDA()),
    )  # fmt: skip
    start = [p.detach().clone() for p in model.trunk.parameters()]
    trainer = _trainer(tmp_path, max_steps=1, log_every_n_steps=1, enable_checkpointing=False)
    x = torch.randn(8, 6)
    data = TensorTaskDataset(x, {"a": (x[:, 0] > 0).long(), "y2": torch.full((8,), -100)})
    trainer.fit(model, DataLoader(data, batch_size=8))
    assert trainer.callback_metrics["train/weight/y2"] == 0.0
    assert trainer.callback_metrics["train/weight/a"] == 1.0
    assert any(not torch.equal(p, q) for p, q in zip(start, model.trunk.parameters(), strict=True))
