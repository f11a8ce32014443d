import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtl_lightning import probe as probe_module
from mtl_lightning.commands import main
from mtl_lightning.probe import bootstrap_balanced_accuracy, probe_embeddings


def _data(n, informative, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    z = torch.randn(n, 16, generator=g)
    if informative:
        z[:, :4] += 3.0 * torch.nn.functional.one_hot(y, 4)  # the attribute is linearly present
    return z, y


def test_probe_finds_an_attribute_that_is_there():
    (tz, ty), (vz, vy) = _data(400, True, 0), _data(400, True, 1)
    for r in probe_embeddings(tz, ty, vz, vy, "speaker", 4, n_boot=200):
        assert r.balanced_acc > 0.8 and r.ci_low > r.chance
        assert r.verdict == "leaks"


def test_probe_reports_chance_on_random_features():
    (tz, ty), (vz, vy) = _data(400, False, 0), _data(400, False, 1)
    for r in probe_embeddings(tz, ty, vz, vy, "speaker", 4, n_boot=200):
        assert r.ci_low <= 0.25 <= r.ci_high, r
        assert r.verdict == "no leak detected"


def test_probe_subcommand_on_a_run(in_tmp, capsys):
    main(
        [
            "fit",
            "--data.init_args.per_pair",
            "2",
            "--data.init_args.per_pair_eval",
            "1",
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    ckpt = in_tmp / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    main(["probe", "--ckpt_path", str(ckpt), "--n_boot", "50"])
    out = capsys.readouterr().out
    assert "speaker  linear" in out and "speaker  mlp" in out
    # progress while it works: loading, embedding, each task's probes (before the table)
    assert out.index("probe: loading") < out.index("probe: 110 + 55 embeddings in")
    assert out.index("probe: speaker: training linear and mlp probes on 110 samples") < out.rindex(
        "speaker  linear"
    )
    summary = json.loads((ckpt.parents[1] / "summary.json").read_text())
    assert {r["probe"] for r in summary["probe"]} == {"linear", "mlp"}
    assert summary["val"]["tasks"][0]["task"] == "emotion"  # fit's section is kept
    # TensorBoard: probe/{task}/{probe}/{key} in the run directory, equal to summary.json's
    events = EventAccumulator(str(ckpt.parents[1]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    keys = ("balanced_acc", "ci_low", "ci_high", "chance")
    expected = {f"probe/speaker/{p}/{k}" for p in ("linear", "mlp") for k in keys}
    assert expected <= tags, sorted(tags)
    assert not any(t.startswith("probe/emotion/") for t in tags)
    for row in summary["probe"]:
        assert row["chance"] == pytest.approx(1 / 11) and row["classes_present"] == 11
        for key in keys:
            # the fit's own LeakageProbe wrote first; the subcommand's value is the latest
            scalar = events.Scalars(f"probe/{row['task']}/{row['probe']}/{key}")[-1]
            assert scalar.value == pytest.approx(row[key], rel=1e-6), (row, key)
    with pytest.raises(ValueError, match="cannot probe"):
        main(["probe", "--ckpt_path", str(ckpt), "--tasks", "gender"])


def test_balanced_accuracy_ignores_a_class_absent_from_the_held_out_targets(monkeypatch):
    """K = 3, but the held-out targets hold only classes 0 and 1; class 2 is predicted once.

    Recall of class 0: 1/2 (one of its two samples predicted as 2); of class 1: 2/2. Class 2
    has no held-out sample, so it has no recall: balanced accuracy is macro recall over the
    classes present, (1/2 + 1) / 2 = 0.75 (sklearn's ``balanced_accuracy_score``), not
    (1/2 + 1 + 0) / 3 = 0.5, and chance is 1 / 2 classes present, not 1/3.
    """
    target = torch.tensor([0, 0, 1, 1])
    preds = torch.tensor([0, 2, 1, 1])
    point, low, high = bootstrap_balanced_accuracy(preds, target, 3, n_boot=200)
    assert point == pytest.approx(0.75)
    assert 0.0 <= low <= point <= high <= 1.0

    # the probe's reported result: the same figure and chance 1/2, with fixed probe predictions
    monkeypatch.setattr(probe_module, "fit_probe", lambda *args, **kwargs: preds)
    z = torch.zeros(4, 2)
    [result] = probe_embeddings(z, target, z, target, "speaker", 3, kinds=["linear"], n_boot=50)
    assert result.balanced_acc == pytest.approx(0.75)
    assert result.chance == pytest.approx(0.5)
    assert result.classes_present == 2
    # a probe that always predicts the absent class is at 0, below the 1/2 chance
    monkeypatch.setattr(probe_module, "fit_probe", lambda *args, **kwargs: torch.full((4,), 2))
    [result] = probe_embeddings(z, target, z, target, "speaker", 3, kinds=["linear"], n_boot=50)
    assert (result.balanced_acc, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0)


def test_bootstrap_resamples_use_the_classes_present_in_each_resample():
    """Each resample's figure is macro recall over the classes in that resample's targets
    (a plain loop as the reference); rare classes make some resamples miss a class."""
    target = torch.tensor([0] * 6 + [1] * 6 + [2])
    preds = torch.tensor([0, 0, 0, 1, 2, 2, 1, 1, 1, 1, 0, 2, 2])
    n_boot, seed = 400, 7
    point, low, high = bootstrap_balanced_accuracy(preds, target, 3, n_boot=n_boot, seed=seed)
    assert point == pytest.approx((3 / 6 + 4 / 6 + 1 / 1) / 3)
    idx = torch.randint(0, 13, (n_boot, 13), generator=torch.Generator().manual_seed(seed))
    stats = []
    for row in idx.tolist():
        recalls = []
        for c in sorted({int(target[i]) for i in row}):
            mine = [i for i in row if int(target[i]) == c]
            recalls.append(sum(int(preds[i]) == c for i in mine) / len(mine))
        stats.append(sum(recalls) / len(recalls))
    assert any(2 not in {int(target[i]) for i in row} for row in idx.tolist())
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    ref = torch.quantile(torch.tensor(stats, dtype=torch.float64), q)
    assert (low, high) == pytest.approx(ref.tolist(), abs=1e-9)


def test_no_labelled_held_out_sample_is_an_error():
    z, y = _data(40, True, 0)
    with pytest.raises(ValueError, match="no labelled held-out samples"):
        probe_embeddings(z, y, z[:0], y[:0], "speaker", 4, kinds=["linear"], n_boot=10)
