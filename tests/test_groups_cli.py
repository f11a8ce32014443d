"""`python -m mtl_lightning groups`: reads a TaskAffinity file, prints and saves the grouping."""

import contextlib
import json

import numpy as np
import pytest

from mtl_lightning.commands import main


def write_affinity(path, tasks, matrices):
    path.write_text(json.dumps({"tasks": tasks, "epochs": [{"affinity": m} for m in matrices]}))


def test_groups_subcommand_averages_epochs_and_finds_planted_groups(in_tmp, capsys):
    z = np.full((4, 4), -0.2)
    z[:2, :2] = z[2:, 2:] = 0.4
    noise = np.random.default_rng(0).normal(scale=0.01, size=(4, 4))
    write_affinity(
        in_tmp / "a.json", ["w", "x", "y", "z"], [(z + noise).tolist(), (z - noise).tolist()]
    )
    found = main(["groups", "--affinity", "a.json", "--max-groups", "2", "--output", "g.json"])
    assert found.groups == ((0, 1), (2, 3))  # the command's result, as saved below
    result = json.loads((in_tmp / "g.json").read_text())
    assert result["groups"] == [["w", "x"], ["y", "z"]]
    assert result["score"] == np.float64(1.6)  # mean of the epochs cancels the noise: 4 * 0.4
    assert result["served_by"] == {"w": 0, "x": 0, "y": 1, "z": 1}
    out = capsys.readouterr().out
    assert "group 1: w, x" in out and "candidate sets" in out


def test_groups_last_epoch_and_partition(in_tmp, capsys):
    first = [[1, 0.5, -0.5], [0.5, 1, -0.5], [-0.5, -0.5, 1]]
    last = [[1, -0.5, 0.5], [-0.5, 1, -0.5], [0.5, -0.5, 1]]
    write_affinity(in_tmp / "a.json", ["a", "b", "c"], [first, last])
    main(["groups", "--affinity", "a.json", "--max-groups", "2", "--epochs", "last",
          "--partition", "--output", "g.json"])  # fmt: skip
    assert json.loads((in_tmp / "g.json").read_text())["groups"] == [["a", "c"], ["b"]]


def test_help_lists_the_extra_subcommands(capsys):
    with contextlib.suppress(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "groups" in out and "compare" in out


def test_unmeasured_pairs_average_over_measured_epochs_or_are_named(tmp_path):
    from mtl_lightning.groups import load_affinity

    path = tmp_path / "a.json"
    write_affinity(path, ["a", "b"], [[[1, None], [0.2, 1]], [[1, 0.6], [0.4, 1]]])
    assert load_affinity(path)[1].tolist() == [[1.0, 0.6], [0.30000000000000004, 1.0]]
    write_affinity(path, ["a", "b"], [[[1, None], [0.2, 1]], [[1, None], [0.4, 1]]])
    with pytest.raises(ValueError, match=r"never measured for \['a->b'\]"):
        load_affinity(path)
