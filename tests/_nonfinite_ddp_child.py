"""Run by test_nonfinite_ddp.py: 2 CPU processes where only rank 1 turns non-finite.

``python _nonfinite_ddp_child.py OUT.pt DEVICES`` fits the tiny model of test_nonfinite.py once
with an inf loss and once with a NaN gradient from the third step on, on rank 1 only, with
``nonfinite="skip"``; rank 0 saves the skip counts, the parameters after the two clean steps and
the final parameters.
"""

from __future__ import annotations

import os
import sys
import warnings

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, os.path.dirname(__file__))
from test_nonfinite import PoisonTrunk  # noqa: E402

from mtl_lightning.data.base import TensorTaskDataset  # noqa: E402
from mtl_lightning.module import MultiTaskModule  # noqa: E402
from mtl_lightning.tasks import TaskSpec  # noqa: E402

warnings.filterwarnings("ignore")
RANK = int(os.environ.get("LOCAL_RANK", "0"))


class Snapshot(pl.Callback):
    """The parameters after the second (last clean) step."""

    def __init__(self) -> None:
        self.after_clean: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:
            self.after_clean = {k: v.clone() for k, v in pl_module.state_dict().items()}


def fit(mode: str, devices: int) -> dict[str, object]:
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    ds = TensorTaskDataset(
        torch.randn(64, 3, generator=g),
        {
            "a": torch.randint(0, 2, (64,), generator=g),
            "b": torch.randint(0, 3, (64,), generator=g),
        },
    )
    # rank 0 never turns non-finite: whatever it skips, it skips because rank 1 did
    trunk = PoisonTrunk(mode, poison_at=2 if RANK == 1 else 10**6)
    model = MultiTaskModule(
        [TaskSpec("a", 2), TaskSpec("b", 3)], trunk=trunk, head_hidden=0, nonfinite="skip"
    )
    snapshot = Snapshot()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=devices,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        # the progress bar stays on: it reads the metrics on rank zero only
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[snapshot],
    )
    loader = DataLoader(
        ds, batch_size=8, sampler=DistributedSampler(ds, devices, RANK, shuffle=False)
    )
    trainer.fit(model, loader)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    return {
        "skipped": int(model.skipped_steps),
        "steps": trainer.global_step,
        "after_clean": snapshot.after_clean,
        "final": final,
    }


def main() -> None:
    out, devices = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    results = {mode: fit(mode, devices) for mode in ("loss", "grad")}
    if RANK == 0:
        torch.save(results, out)


if __name__ == "__main__":
    main()
