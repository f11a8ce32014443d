"""`python -m mtl_lightning erase` on a run, and LeakageProbe over the epochs in a default fit."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtl_lightning import MultiTaskModule
from mtl_lightning.commands import main
from mtl_lightning.probe import bootstrap_balanced_accuracy, embed_dataset, fit_probe, load_run

TINY = ["--data.init_args.per_pair", "3", "--data.init_args.per_pair_eval", "1"]


def test_leakage_over_the_epochs_and_probe_columns_in_the_table(in_tmp, capsys):
    main(
        [
            "fit",
            *TINY,
            "--trainer.max_epochs",
            "2",
            "--trainer.callbacks.every_n_epochs=1",  # the default config's LeakageProbe
            "--trainer.callbacks.n_boot=50",
        ]
    )
    run = in_tmp / "lightning_logs" / "version_0"
    events = EventAccumulator(str(run))
    events.Reload()
    for kind in ("linear", "mlp"):
        steps = [s.step for s in events.Scalars(f"probe/speaker/{kind}/balanced_acc")]
        assert len(steps) == 2 and steps[0] < steps[1]  # after each epoch, none twice at the end
    out = capsys.readouterr().out
    assert "linear probe  mlp probe" in out
    speaker = json.loads((run / "summary.json").read_text())["val"]["tasks"][1]
    probe = json.loads((run / "summary.json").read_text())["probe"]
    assert speaker["probe_linear"] == pytest.approx(
        next(r["balanced_acc"] for r in probe if r["probe"] == "linear")
    )


def test_erase_fits_leace_retrains_the_heads_and_writes_a_checkpoint(in_tmp, capsys):
    main(["fit", *TINY, "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"])
    ckpt = in_tmp / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    main(["erase", "--ckpt_path", str(ckpt), "--epochs", "3", "--n_boot", "50"])
    out = capsys.readouterr().out
    erased = ckpt.with_name("erased.ckpt")
    assert f"checkpoint written to {erased}" in out and "speaker  linear" in out
    summary = json.loads((ckpt.parents[1] / "summary.json").read_text())
    assert summary["erase"]["checkpoint"] == str(erased)
    assert summary["erase"]["erased_tasks"] == ["speaker"] and "val" in summary  # fit's kept
    model = MultiTaskModule.load_from_checkpoint(erased)
    assert bool(model.adversaries["speaker"].eraser.fitted)
    # the guarantee, on the data the eraser was fitted on: a linear probe is at chance
    model, data, _ = load_run(erased)
    z, y = embed_dataset(model, data.train_dataloader(), ["speaker"])
    preds = fit_probe(z, y["speaker"], z, y["speaker"], 11, "linear")
    acc, low, high = bootstrap_balanced_accuracy(preds, y["speaker"], 11, n_boot=200)
    assert low <= 1 / 11 <= high, (acc, low, high)
    # without erasure the same probe finds the speaker on this barely trained trunk
    plain = MultiTaskModule.load_from_checkpoint(ckpt).eval()
    z0, _ = embed_dataset(plain, data.train_dataloader(), ["speaker"])
    preds0 = fit_probe(z0, y["speaker"], z0, y["speaker"], 11, "linear")
    assert float((preds0 == y["speaker"]).float().mean()) > 0.5
    assert torch.isfinite(z).all()


def test_erase_names_what_it_cannot_erase(in_tmp):
    main(["fit", *TINY, "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"])
    ckpt = in_tmp / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"cannot erase \['emotion'\]"):
        main(["erase", "--ckpt_path", str(ckpt), "--tasks", "emotion"])
