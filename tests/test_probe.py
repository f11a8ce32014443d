import json

import pytest
import torch

from mtl_lightning.cli import main
from mtl_lightning.probe import probe_embeddings


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
    summary = json.loads((ckpt.parents[1] / "summary.json").read_text())
    assert {r["probe"] for r in summary["probe"]} == {"linear", "mlp"}
    assert summary["val"]["tasks"][0]["task"] == "emotion"  # fit's section is kept
    with pytest.raises(ValueError, match="cannot probe"):
        main(["probe", "--ckpt_path", str(ckpt), "--tasks", "gender"])
