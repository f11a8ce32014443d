"""Exact resume after a hard kill, and checkpoints that survive a crash while being written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from _cli_run import start_fit
from _resume_helpers import same

from mtl_lightning.checkpoint_io import AtomicCheckpointIO, atomic_torch_save, find_last_checkpoint
from mtl_lightning.cli import DEFAULT_CONFIG
from mtl_lightning.data.base import ResumableDataLoader, ResumableSampler

TESTS = Path(__file__).resolve().parent
BATCHES_PER_EPOCH = 14  # 110 training samples, batch size 8
EVERY = 4  # checkpoint every 4 optimizer steps
KILL_AT = 19  # epoch 1, batch 5: the last checkpoint (step 16) is 2 batches into epoch 1


def _config(kill_at: int | None) -> dict:
    """The packaged default, tiny, deterministic, with a checkpoint every EVERY steps."""
    config = yaml.safe_load(Path(DEFAULT_CONFIG).read_text())
    config["trainer"].update(
        max_epochs=2,
        deterministic=True,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        log_every_n_steps=1,
    )
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "every_n_train_steps": EVERY,
                "save_top_k": -1,
                "save_last": True,
                "filename": "step-{step}",
            },
        }
    ]
    if kill_at is not None:
        callbacks.append(
            {"class_path": "_resume_helpers.KillAtStep", "init_args": {"step": kill_at}}
        )
    config["trainer"]["callbacks"] = callbacks
    config["data"]["init_args"].update(
        per_pair=2, per_pair_eval=1, n_mels=16, frames=16, batch_size=8
    )
    config["model"]["trunk"]["init_args"].update(channels=[4, 8, 8], out_features=16, freq_bins=4)
    config["model"]["head_hidden"] = 8
    config["summary"]["print_table"] = False
    return config


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    out, _ = process.communicate(timeout=240)
    return process.returncode, out


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _train_epoch_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return {
        tag: [(s.step, s.value) for s in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag.startswith("train/") and not tag.endswith("_step") and "grl" not in tag
    }


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    full, killed = (
        start_fit(tmp_path / "full", _config(None)),
        start_fit(tmp_path / "kill", _config(KILL_AT)),
    )
    rc_full, out_full = _finish(full)
    rc_kill, out_kill = _finish(killed)
    assert rc_full == 0, out_full[-3000:]
    assert rc_kill == -signal.SIGKILL, out_kill[-3000:]  # a real kill, not an exception

    first = tmp_path / "kill" / "lightning_logs" / "version_0" / "checkpoints"
    at_kill = _load(first / "last.ckpt")
    assert at_kill["global_step"] == 16 and at_kill["epoch"] == 1  # mid-epoch, not at a boundary
    assert at_kill["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 16 - BATCHES_PER_EPOCH}
    ]
    assert "RNGStateCheckpoint" in at_kill["callbacks"]

    # `--ckpt_path last` finds the killed run's last.ckpt although this run logs to version_1
    rc, out = _finish(start_fit(tmp_path / "kill", _config(None), "--ckpt_path", "last"))
    assert rc == 0, out[-3000:]
    assert "Restored all states" in out and "version_0/checkpoints/last.ckpt" in out

    a_run = tmp_path / "full" / "lightning_logs" / "version_0"
    b_run = tmp_path / "kill" / "lightning_logs" / "version_1"
    a, b = _load(a_run / "checkpoints" / "last.ckpt"), _load(b_run / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 2 * BATCHES_PER_EPOCH
    # model (including the reversal lambda buffer set by the schedule), bit for bit
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k, v in a["state_dict"].items() if not same(v, b["state_dict"][k])]
    assert not different, different
    assert "reversal.lambda_" in a["state_dict"]
    # optimizer moments and the LR scheduler
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert a["lr_schedulers"] == b["lr_schedulers"]
    # the steps after the kill saw the same batches: the checkpoints in between agree as well
    for step in (20, 24):
        mid_a = _load(a_run / "checkpoints" / f"step-step={step}.ckpt")["state_dict"]
        mid_b = _load(b_run / "checkpoints" / f"step-step={step}.ckpt")["state_dict"]
        assert all(same(v, mid_b[k]) for k, v in mid_a.items()), step

    # metrics: the validation summary and the interrupted epoch's training metrics
    val_a = json.loads((a_run / "summary.json").read_text())["val"]
    val_b = json.loads((b_run / "summary.json").read_text())["val"]
    for key in ("epoch", "global_step", "loss", "tasks", "grl_lambda"):
        assert val_a[key] == val_b[key], key
    train_a, train_b = _train_epoch_scalars(a_run), _train_epoch_scalars(b_run)
    assert "train/emotion/acc" in train_b
    for tag, values in train_b.items():  # every value the resumed run logged, at its step
        uninterrupted = dict(train_a[tag])
        assert all(uninterrupted[step] == value for step, value in values), tag


WEIGHTING = {
    "famo": {"class_path": "mtl_lightning.weighting.FAMO"},
    "upgrad_rep": {
        "class_path": "mtl_lightning.weighting.JacobianAggregation",
        "init_args": {"aggregator": {"class_path": "torchjd.aggregation.UPGrad"}, "level": "rep"},
    },
}


def _five_task_config(kill_at: int | None, weighting: str) -> dict:
    """configs/five_task_affinity.yaml, tiny: TaskAffinity every 2 steps, a stateful weighting."""
    config = yaml.safe_load((TESTS.parent / "configs" / "five_task_affinity.yaml").read_text())
    config["trainer"].update(
        max_epochs=2, deterministic=True, accelerator="cpu", devices=1,
        enable_progress_bar=False, log_every_n_steps=1,
    )  # fmt: skip
    callbacks = _config(kill_at)["trainer"]["callbacks"]  # checkpoint every EVERY steps (+ kill)
    affinity = {"class_path": "mtl_lightning.callbacks.TaskAffinity"}
    affinity["init_args"] = {"every_n_steps": 2, "lr": None, "log_image": False}
    config["trainer"]["callbacks"] = [affinity, *callbacks]
    config["data"]["init_args"].update(n_train=96, n_eval=32, batch_size=8)  # 12 batches / epoch
    config["model"]["weighting"] = WEIGHTING[weighting]
    config["summary"]["print_table"] = False
    return config


@pytest.mark.parametrize("weighting", list(WEIGHTING))
def test_sigkill_resume_restores_weighting_and_affinity_state(tmp_path, weighting):
    full = start_fit(tmp_path / "full", _five_task_config(None, weighting))
    killed = start_fit(tmp_path / "kill", _five_task_config(KILL_AT, weighting))
    (rc_full, out_full), (rc_kill, out_kill) = _finish(full), _finish(killed)
    assert rc_full == 0, out_full[-3000:]
    assert rc_kill == -signal.SIGKILL, out_kill[-3000:]
    at_kill = _load(
        tmp_path / "kill" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    )
    assert at_kill["global_step"] == 16 and at_kill["epoch"] == 1  # 4 batches into epoch 1
    affinity_at_kill = next(v for k, v in at_kill["callbacks"].items() if "TaskAffinity" in k)
    assert affinity_at_kill["count"] == 2 and len(affinity_at_kill["history"]) == 1  # mid-epoch

    rc, out = _finish(
        start_fit(tmp_path / "kill", _five_task_config(None, weighting), "--ckpt_path", "last")
    )
    assert rc == 0, out[-3000:]
    a_run = tmp_path / "full" / "lightning_logs" / "version_0"
    b_run = tmp_path / "kill" / "lightning_logs" / "version_1"
    a, b = _load(a_run / "checkpoints" / "last.ckpt"), _load(b_run / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 24
    # model and weighting state (FAMO's logits and last losses live in the module's state_dict)
    assert any(k.startswith("weighting.") for k in a["state_dict"]) or weighting != "famo"
    different = [k for k, v in a["state_dict"].items() if not same(v, b["state_dict"][k])]
    assert not different, different
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    # the affinity accumulated before the kill is kept: both epochs' matrices agree exactly
    affinity_a = json.loads((a_run / "affinity.json").read_text())
    affinity_b = json.loads((b_run / "affinity.json").read_text())
    assert [e["measurements"] for e in affinity_b["epochs"]] == [6, 6]
    assert affinity_a == affinity_b
    train_a, train_b = _train_epoch_scalars(a_run), _train_epoch_scalars(b_run)
    assert "train/weight/t1" in train_b
    for tag, values in train_b.items():
        uninterrupted = dict(train_a[tag])
        assert all(uninterrupted[step] == value for step, value in values), tag


def _loader(data: list[int], batch: int = 3, **kw: int) -> ResumableDataLoader:
    return ResumableDataLoader(data, batch_size=batch, sampler=ResumableSampler(data, seed=5, **kw))


def _batches(loader: ResumableDataLoader) -> list[list[int]]:
    return [b.tolist() for b in loader]


def test_loader_resumes_twice_in_one_epoch_and_rolls_over_at_the_end():
    data = list(range(20))
    reference = _loader(data)
    reference.sampler.set_epoch(2)
    epoch2 = _batches(reference)

    loader = _loader(data)
    loader.sampler.set_epoch(2)
    it = iter(loader)
    seen = [next(it).tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 2}

    second = _loader(data)  # first resume: read one more batch, checkpoint again
    second.load_state_dict(state)
    it = iter(second)
    seen.append(next(it).tolist())
    assert second.state_dict() == {"epoch": 2, "batches": 3}  # absolute, not "1 since resume"

    third = _loader(data)  # second resume
    third.load_state_dict(second.state_dict())
    assert seen + _batches(third) == epoch2
    assert third.state_dict() == {"epoch": 2, "batches": len(epoch2)}

    fourth = _loader(data)  # a finished epoch resumes at the start of the next one
    fourth.load_state_dict(third.state_dict())
    assert fourth.sampler.epoch == 3
    reference.sampler.set_epoch(3)
    assert _batches(fourth) == _batches(reference)
    assert len(fourth) == len(reference) == 7  # len() is always the full epoch


def test_sampler_shards_are_disjoint_and_resume_per_rank():
    data = list(range(23))
    shards = [list(ResumableSampler(data, seed=5, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [8, 8, 8]  # padded like DistributedSampler
    assert set().union(*shards) == set(data)
    first_epoch = torch.utils.data.DistributedSampler(data, num_replicas=3, rank=1, seed=5)
    assert shards[1] == list(first_epoch)  # exactly DistributedSampler's order
    for rank in range(3):  # every rank skips the same number of its own batches
        loader = _loader(data, batch=2, num_replicas=3, rank=rank)
        loader.load_state_dict({"epoch": 0, "batches": 3})
        assert sum(_batches(loader), []) == shards[rank][6:]


def test_loader_iterators_leave_the_global_rng_alone():
    data = list(range(10))
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    _batches(_loader(data))
    assert torch.equal(torch.rand(1), expected)


# ---------------------------------------------------------------- crash while writing a checkpoint
def test_exception_midway_through_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def half_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(max(1, f.tell() // 2))  # a torn write ...
        raise OSError("disk full")  # ... then the writer dies

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no debris


def test_sigkill_during_a_write_leaves_a_loadable_checkpoint_and_no_false_last(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"step": 1}, path)
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from mtl_lightning.checkpoint_io import atomic_torch_save
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # die before the rename
        atomic_torch_save({{"step": 2, "w": torch.zeros(1000)}}, {str(path)!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL
    debris = [p for p in path.parent.iterdir() if p.name != "last.ckpt"]
    assert len(debris) == 1 and debris[0].name.startswith(".last.ckpt.tmp-")  # the torn file
    assert torch.load(path, weights_only=True) == {"step": 1}  # the previous one is intact

    class _Trainer:  # what find_last_checkpoint reads
        checkpoint_callbacks: list = []
        logger = None
        default_root_dir = str(tmp_path)

    assert find_last_checkpoint(_Trainer()) == str(path)  # debris is never taken as "last"
    path.unlink()
    path.symlink_to(tmp_path / "gone.ckpt")  # a dangling link is not a checkpoint either
    assert find_last_checkpoint(_Trainer()) is None
