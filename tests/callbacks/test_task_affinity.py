"""TaskAffinity in a real (tiny) fit: outputs, checkpoint state, and no effect on training."""

import json

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from mtl_lightning import MultiTaskModule
from mtl_lightning.callbacks import TaskAffinity
from mtl_lightning.data import SyntheticTabularDataModule
from mtl_lightning.nn import DenseTrunk


def fit(tmp_path, callbacks, name):
    pl.seed_everything(0, verbose=False)
    dm = SyntheticTabularDataModule(n_train=128, n_eval=32, batch_size=32)
    model = MultiTaskModule(dm.tasks, trunk=DenseTrunk(120, dropout=0.2), head_hidden=8)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name=name),
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        callbacks=callbacks,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    return trainer, model


def test_fit_writes_per_epoch_matrices_logs_and_checkpoints_state(tmp_path):
    callback = TaskAffinity(every_n_steps=2)
    trainer, _ = fit(tmp_path, [callback], "with")
    data = json.loads((tmp_path / "with" / "version_0" / "affinity.json").read_text())
    assert data["tasks"] == ["t1", "t2", "t3", "t4", "t5"]
    assert [e["epoch"] for e in data["epochs"]] == [0, 1]
    assert [e["measurements"] for e in data["epochs"]] == [2, 2]  # steps 0, 2 | 4, 6
    for e in data["epochs"]:
        assert len(e["affinity"]) == 5 and len(e["cosine"][0]) == 5
        assert all(abs(e["cosine"][i][i] - 1) < 1e-5 for i in range(5))
    logged = trainer.callback_metrics
    assert float(logged["affinity/t1_to_t2"]) == data["epochs"][-1]["affinity"][0][1]
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if "TaskAffinity" in k)
    assert len(state["history"]) == 2 and state["count"] == 0
    events = list((tmp_path / "with" / "version_0").glob("events.out.tfevents.*"))
    assert events and b"affinity/heatmap" in b"".join(p.read_bytes() for p in events)


def test_training_is_bit_identical_with_and_without_the_callback(tmp_path):
    _, with_cb = fit(tmp_path, [TaskAffinity(every_n_steps=1)], "with")
    _, without = fit(tmp_path, [], "without")
    expected = without.state_dict()
    assert list(with_cb.state_dict()) == list(expected)
    for k, v in with_cb.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_state_dict_round_trip_keeps_the_epoch_accumulators():
    source = TaskAffinity()
    source.tasks = ["a", "b"]
    source._sum = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    source._cos_sum = torch.eye(2, dtype=torch.float64)
    source._count = 3
    source.history = [{"epoch": 0, "affinity": [[0.0]]}]
    target = TaskAffinity()
    target.load_state_dict(source.state_dict())
    assert target.tasks == ["a", "b"] and target._count == 3
    assert torch.equal(target._sum, source._sum) and torch.equal(target._cos_sum, source._cos_sum)
    assert target.history == source.history


def test_batches_without_labels_for_a_task_are_left_out_of_its_epoch_mean(tmp_path):
    # t2 is labelled on one training sample only: 3 of the 4 batches have no t2 label. Its pairs
    # are averaged over the one batch that has it, the others over all 4, and nothing is NaN.
    pl.seed_everything(0, verbose=False)
    dm = SyntheticTabularDataModule(n_train=32, n_eval=16, batch_size=8)
    dm.setup()
    dm.train_set.targets["t2"][1:] = -100
    model = MultiTaskModule(dm.tasks, trunk=DenseTrunk(120, dropout=0.0), head_hidden=8)
    callback = TaskAffinity(every_n_steps=1)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="partial"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=1,
        callbacks=[callback],
    )
    trainer.fit(model, datamodule=dm)
    (epoch,) = json.loads((tmp_path / "partial" / "version_0" / "affinity.json").read_text())[
        "epochs"
    ]
    assert epoch["measurements"] == 4
    z = torch.tensor(epoch["affinity"])
    assert torch.isfinite(z).all() and torch.isfinite(torch.tensor(epoch["cosine"])).all()
    expected = torch.full((5, 5), 4)
    expected[1, :] = expected[:, 1] = 1
    assert torch.equal(torch.tensor(epoch["pair_measurements"]), expected)
    assert float(trainer.callback_metrics["affinity/t1_to_t2"]) == epoch["affinity"][0][1]
