import math

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from mtl_lightning import GradientReversalSchedule, MultiTaskModule, grl_lambda
from mtl_lightning.nn import CNNTrunk
from mtl_lightning.tasks import TaskSpec


@pytest.mark.parametrize(
    ("schedule", "kwargs", "expected"),
    [
        ("constant", {"max_lambda": 0.7}, [0.7, 0.7, 0.7]),
        ("linear", {"max_lambda": 2.0}, [0.0, 1.0, 2.0]),
        ("linear", {"max_lambda": 1.0, "warmup": 0.25}, [0.0, 1.0, 1.0]),
        # dann: 2 / (1 + e^{-10 p}) - 1 -> 0, 0.98661429, 0.99990920
        ("dann", {}, [0.0, 0.9866142981514305, 0.9999092042625951]),
        (
            "dann",
            {"max_lambda": 0.5, "gamma": 2.0},
            [0.0, 0.5 * 0.46211715726000974, 0.5 * 0.7615941559557649],
        ),
    ],
)
def test_schedule_values_at_p_0_half_1(schedule, kwargs, expected):
    got = [grl_lambda(p, schedule, **kwargs) for p in (0.0, 0.5, 1.0)]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_dann_matches_tanh_identity():
    # 2/(1+e^{-x}) - 1 == tanh(x/2)
    for p in (0.1, 0.33, 0.8):
        assert grl_lambda(p, "dann", gamma=7.0) == pytest.approx(math.tanh(3.5 * p))


def test_invalid_schedule_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        GradientReversalSchedule("cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_lambda"):
        GradientReversalSchedule(max_lambda=float("nan"))


class _RecordLambda(Callback):
    def __init__(self):
        self.values: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # runs after GradientReversalSchedule (callbacks run in list order)
        self.values[trainer.global_step] = pl_module.grl_lambda


def _trainer(tmp_path, recorder, **kwargs):
    return pl.Trainer(
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[
            GradientReversalSchedule("dann", gamma=5.0),
            recorder,
            *kwargs.pop("callbacks", []),
        ],
        **kwargs,
    )


def test_resumed_run_continues_the_schedule_exactly(tmp_path, tiny_speech):
    pl.seed_everything(0)
    full = _RecordLambda()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1, filename="{step}"
    )
    model = MultiTaskModule(tiny_speech.tasks, trunk=CNNTrunk(channels=(4, 4, 4), out_features=8))
    _trainer(tmp_path, full, callbacks=[ckpt]).fit(model, tiny_speech)
    total = max(full.values) + 1
    assert total == 3 * 4  # 110 samples / 32 per batch = 4 steps per epoch
    # lambda rises monotonically from 0 with the step
    assert full.values[0] == 0.0
    assert all(full.values[s] < full.values[s + 1] for s in range(total - 1))

    resumed = _RecordLambda()
    model2 = MultiTaskModule(tiny_speech.tasks, trunk=CNNTrunk(channels=(4, 4, 4), out_features=8))
    _trainer(tmp_path, resumed).fit(
        model2, tiny_speech, ckpt_path=str(tmp_path / "ckpt" / "step=5.ckpt")
    )
    assert min(resumed.values) == 5
    for step, value in resumed.values.items():
        assert value == full.values[step], step
    assert model2.grl_lambda == pytest.approx(full.values[total - 1])


def test_a_module_needs_a_settable_grl_lambda_of_its_class_or_its_own():
    """The schedule sets a class's ``grl_lambda`` property or an instance's own attribute, and
    names the module that has neither."""
    from types import SimpleNamespace

    trainer = SimpleNamespace(
        global_step=5, estimated_stepping_batches=10, log_every_n_steps=0,
        should_stop=False, fast_dev_run=False,
    )  # fmt: skip
    schedule = GradientReversalSchedule("linear")
    own = pl.LightningModule()
    own.grl_lambda = 0.0
    schedule.on_train_batch_start(trainer, own, None, 0)
    assert own.grl_lambda == pytest.approx(0.5)
    model = MultiTaskModule([TaskSpec("a", 2)])
    schedule.on_train_batch_start(trainer, model, None, 0)
    assert model.grl_lambda == pytest.approx(0.5)
    with pytest.raises(AttributeError, match="LightningModule has no `grl_lambda`"):
        schedule.on_train_batch_start(trainer, pl.LightningModule(), None, 0)
