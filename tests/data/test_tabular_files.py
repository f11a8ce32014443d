"""TabularDataModule on tiny files: tasks, splits, standardisation, checkpoints, and bad input
(each error names the file, the line, the column and the value at fault)."""

from __future__ import annotations

import typing

import pytest
import torch

import mtl_lightning.tasks
from mtl_lightning.checks import DataError
from mtl_lightning.data import TabularDataModule, write_example_table
from mtl_lightning.data.manifest import ManifestError

MULTILABEL = pytest.mark.skipif(
    "multilabel" not in typing.get_args(mtl_lightning.tasks.TaskKind),
    reason="TaskSpec has no multilabel kind yet",
)


def _csv(path, header: str, rows: list[str]):
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _grid(n: int, labels=("a", "b")) -> list[str]:
    """``n`` rows ``x0,x1,y`` with distinct features, labels cycling over ``labels``."""
    return [f"{i},{i % 3},{labels[i % len(labels)]}" for i in range(n)]


def _dm(path, tasks=None, **kwargs):
    kwargs.setdefault("val_fraction", 0.25)
    kwargs.setdefault("test_fraction", 0.25)
    return TabularDataModule(tasks or [{"name": "y"}], path=path, **kwargs)


# ---------------------------------------------------------------- what it builds
def test_example_table_splits_stratified_and_standardised_on_train_only(tmp_path):
    path = write_example_table(tmp_path / "five.csv", n=120, seed=1)
    dm = TabularDataModule([{"name": f"y{k}"} for k in range(1, 6)], path=str(path), features="x")
    dm.setup("fit")
    assert [(t.name, t.size) for t in dm.tasks] == [
        ("y1", 3), ("y2", 2), ("y3", 4), ("y4", 2), ("y5", 3)
    ]  # fmt: skip
    sizes = [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert sum(sizes) == 120 and sizes[1] == sizes[2] == 18
    x = dm.train_set.features
    assert x.shape[1] == 20
    torch.testing.assert_close(x.mean(0), torch.zeros(20), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(20), atol=1e-4, rtol=0)
    assert dm.val_set.features.mean(0).abs().max() > 1e-3  # val is not re-standardised
    y1 = [s.targets["y1"].bincount(minlength=3) for s in (dm.train_set, dm.val_set)]
    assert (y1[1] > 0).all() and y1[0].sum() > y1[1].sum()


def test_features_by_list_prefix_or_rest_and_constant_columns_get_std_1(tmp_path):
    rows = [f"{i},5,{i * i},{'ab'[i % 2]}" for i in range(12)]
    path = _csv(tmp_path / "t.csv", "x_a,x_const,other,y", rows)
    prefixed = _dm(path, features="x_")
    prefixed.setup()
    assert prefixed._feature_names == ["x_a", "x_const"]
    dm = _dm(path)
    dm.setup()
    assert dm._feature_names == ["x_a", "x_const", "other"]
    assert dm.stats.std[1] == 1.0 and dm.train_set.features[:, 1].abs().max() == 0
    raw = _dm(path, features=["other"], standardize=False)
    raw.setup()
    values = torch.cat([s.features for s in (raw.train_set, raw.val_set, raw.test_set)])
    assert sorted(values.flatten().tolist()) == [float(i * i) for i in range(12)]


def test_split_column_and_split_files(tmp_path):
    rows = [f"{i},{i % 2},{('train', 'train', 'val', 'test')[i % 4]}" for i in range(16)]
    path = _csv(tmp_path / "t.csv", "x0,y,split", rows)
    dm = TabularDataModule([{"name": "y"}], path=path, split_column="split")
    dm.setup()
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [8, 4, 4]
    assert dm.train_set.features.shape[1] == 1  # the split column is not a feature
    train = _csv(tmp_path / "train.csv", "x0,x1,y", _grid(8))
    val = _csv(tmp_path / "val.csv", "x0,x1,y", [f"{i + 0.5},0,{'ab'[i % 2]}" for i in range(4)])
    files = TabularDataModule([{"name": "y"}], train_path=train, val_path=val)
    files.setup()
    assert [len(files.train_set), len(files.val_set), files.test_set] == [8, 4, None]
    with pytest.raises(RuntimeError, match=r"no test set \(give test_path\)"):
        files.test_dataloader()


def test_regression_single_and_multi_output_with_missing_targets(tmp_path):
    rows = [f"{i},{i * 0.5},{'' if i == 3 else i},{-i}" for i in range(8)]
    path = _csv(tmp_path / "t.csv", "x0,r,px,py", rows)
    tasks = [
        {"name": "r", "kind": "regression"},
        {"name": "pos", "kind": "regression", "columns": ["px", "py"], "weight": 0.5},
    ]
    dm = TabularDataModule(tasks, path=path, val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    assert [(t.name, t.kind, t.size, t.weight) for t in dm.tasks] == [
        ("r", "regression", 1, 1.0),
        ("pos", "regression", 2, 0.5),
    ]
    everything = torch.cat([s.targets["pos"] for s in (dm.train_set, dm.val_set, dm.test_set)])
    assert everything.shape == (8, 2) and int(everything[:, 0].isnan().sum()) == 1
    assert dm.train_set.targets["r"].shape[1] == 1
    rows[5] = "5,2.5,5,minus five"
    bad = _csv(tmp_path / "b.csv", "x0,r,px,py", rows)
    with pytest.raises(
        ManifestError, match=r"line 7: pos column 'py': 'minus five' is not a finite"
    ):
        TabularDataModule(tasks, path=bad).setup()


def test_conditions_and_extra_keys_reach_taskspec(tmp_path):
    rows = [
        f"{i},{'yes' if i % 2 else 'no'},{'n/a' if i % 2 == 0 else 'hl'[i % 4 == 1]}"
        for i in range(16)
    ]
    path = _csv(tmp_path / "t.csv", "x0,seed,quality", rows)
    tasks = [
        {"name": "seed"},
        {"name": "quality", "only_when": {"seed": ["yes"]}, "label_smoothing": 0.1},
        {"name": "spk", "column": "seed", "role": "adversarial", "adversary": "confusion"},
    ]
    dm = TabularDataModule(tasks, path=path, val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    quality = {t.name: t for t in dm.tasks}["quality"]
    assert quality.only_when == {"seed": [1]} and quality.label_smoothing == 0.1
    assert dm.vocab.names["quality"] == ["h", "l"]  # 'n/a' rows are not scored, not a class
    assert {t.name: t for t in dm.tasks}["spk"].adversary == "confusion"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        TabularDataModule([{"name": "y", "colour": 1}], path=path)


def test_state_dict_restores_vocab_and_statistics(tmp_path):
    path = _csv(tmp_path / "t.csv", "x0,x1,y", _grid(12, ("1", "2", "10")))
    dm = _dm(path)
    dm.setup()
    assert dm.vocab.names["y"] == ["1", "2", "10"]  # integer labels sort as numbers
    state = dm.state_dict()
    assert set(state) == {"vocab", "features", "mean", "std"}
    other = _csv(
        tmp_path / "o.csv", "x0,x1,y", [f"{i + 100},{i},{'1' if i % 2 else '2'}" for i in range(12)]
    )
    restored = _dm(other)
    restored.setup()
    restored.load_state_dict(state)
    assert restored.vocab.names["y"] == ["1", "2", "10"] and restored.tasks[0].size == 3
    torch.testing.assert_close(torch.from_numpy(restored.stats.mean), state["mean"])
    unknown = _csv(tmp_path / "u.csv", "x0,x1,y", _grid(12, ("1", "2", "7")))
    torch.save({"TabularDataModule": state}, tmp_path / "c.ckpt")
    with pytest.raises(ManifestError, match=r"line 4: y label '7' \(column 'y'\) is not a class"):
        _dm(unknown, restore_from=str(tmp_path / "c.ckpt")).setup()


# ---------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        _dm(str(tmp_path / "absent.csv")).setup()


def test_a_task_column_that_does_not_exist_names_the_columns_that_do(tmp_path):
    path = _csv(tmp_path / "t.csv", "x0,x1,y", _grid(8))
    with pytest.raises(
        ManifestError, match=r"no task column\(s\) \['label'\]; the columns are \['x0', 'x1', 'y'\]"
    ):
        _dm(path, [{"name": "label"}], features=["x0"]).setup()


def test_non_numeric_and_non_finite_features_name_line_column_and_value(tmp_path):
    rows = _grid(12)
    rows[2] = "2,abc,a"
    rows[5] = "nan,2,b"
    rows[7] = "7,inf,b"
    path = _csv(tmp_path / "t.csv", "x0,x1,y", rows)
    with pytest.raises(ManifestError) as error:
        _dm(path).setup()
    message = str(error.value)
    assert "3 bad row(s)" in message
    assert "line 4: feature 'x1': 'abc' is not a number" in message
    assert "line 7: feature 'x0': nan is not finite (NaN/inf)" in message
    assert "line 9: feature 'x1': inf is not finite (NaN/inf)" in message


def test_on_error_skip_leaves_bad_rows_out_with_a_warning(tmp_path):
    rows = _grid(12)
    rows[2] = "2,,a"
    path = _csv(tmp_path / "t.csv", "x0,x1,y", rows)
    dm = _dm(path, on_error="skip")
    with pytest.warns(
        UserWarning, match=r"skipped 1 bad row\(s\), kept 11:\n  line 4: feature 'x1': empty cell"
    ):
        dm.setup()
    assert sum(len(s) for s in (dm.train_set, dm.val_set, dm.test_set)) == 11


def test_integer_label_out_of_declared_range(tmp_path):
    rows = _grid(12, ("0", "1", "2"))
    rows[4] = "4,1,3"
    path = _csv(tmp_path / "t.csv", "x0,x1,y", rows)
    with pytest.raises(
        ManifestError, match=r"line 6: y label '3' \(column 'y'\) is not a class: \[0, 1, 2\]"
    ):
        _dm(path, [{"name": "y", "size": 3}]).setup()
    named = _dm(path, [{"name": "y", "classes": ["0", "1", "2", "3"]}], min_label_count=1)
    named.setup()
    assert named.tasks[0].size == 4


@MULTILABEL
def test_multilabel_cells(tmp_path):
    rows = [f"{i},{i % 2},{(i // 2) % 2}" for i in range(12)]
    rows[1] = "1,,"  # wholly missing: all-NaN
    path = _csv(tmp_path / "t.csv", "x0,tag_a,tag_b", rows)
    task = [{"name": "tags", "kind": "multilabel", "columns": ["tag_a", "tag_b"]}]
    dm = _dm(path, task)
    dm.setup()
    assert dm.tasks[0].size == 2 and dm.tasks[0].kind == "multilabel"
    targets = torch.cat([s.targets["tags"] for s in (dm.train_set, dm.val_set, dm.test_set)])
    assert targets.shape == (12, 2) and int(targets.isnan().all(1).sum()) == 1
    assert set(targets[~targets.isnan()].tolist()) == {0.0, 1.0}
    rows[3], rows[5] = "3,2,0", "5,1,"
    bad = _csv(tmp_path / "b.csv", "x0,tag_a,tag_b", rows)
    with pytest.raises(ManifestError) as error:
        _dm(bad, task).setup()
    assert "line 5: tags column 'tag_a': '2' is not 0, 1 or empty" in str(error.value)
    assert "line 7: tags: cells of ['tag_b'] are empty, the others are not" in str(error.value)


def test_fewer_than_two_classes(tmp_path):
    path = _csv(tmp_path / "t.csv", "x0,x1,y", _grid(8, ("only",)))
    with pytest.raises(
        ManifestError,
        match=r"task 'y' \(column 'y'\) needs >= 2 classes; the data has 1: \['only'\]",
    ):
        _ = _dm(path).tasks


def test_empty_split_after_filtering(tmp_path):
    rows = [f"{i},{i % 2},{'val' if i < 2 else 'train'}" for i in range(10)]
    rows[0] = rows[1] = "x,0,val"  # the only val rows are bad
    path = _csv(tmp_path / "t.csv", "x0,y,split", rows)
    dm = TabularDataModule([{"name": "y"}], path=path, split_column="split", on_error="skip")
    with (
        pytest.warns(UserWarning),
        pytest.raises(ManifestError, match=r"the val split has no rows \(8 usable"),
    ):
        dm.setup()


def test_a_file_with_only_a_header(tmp_path):
    path = _csv(tmp_path / "t.csv", "x0,x1,y", [])
    with pytest.raises(ManifestError, match=r"t.csv: only a header, no data rows"):
        _dm(path).setup()


def test_duplicate_feature_rows_name_both_lines_also_across_files(tmp_path):
    rows = _grid(12)
    rows[6] = rows[1].replace(",b", ",a")  # the same features, another label
    path = _csv(tmp_path / "t.csv", "x0,x1,y", rows)
    with pytest.raises(ManifestError, match=r"line 8: the same features as line 3 \(a duplicate"):
        _dm(path).setup()
    _dm(path, allow_duplicates=True).setup()
    train = _csv(tmp_path / "train.csv", "x0,x1,y", _grid(8))
    val = _csv(tmp_path / "val.csv", "x0,x1,y", ["3,0,b", "0.5,0,a", "1.5,0,b", "2.5,1,a"])
    with pytest.raises(
        ManifestError,
        match=r"val.csv: 1 bad row.*\n  line 2: the same features as line 5 of train.csv",
    ):
        TabularDataModule([{"name": "y"}], train_path=train, val_path=val).setup()


def test_rare_and_near_duplicate_labels_are_errors_unless_opted_out(tmp_path):
    rows = _grid(12, ("happy", "sad", "neutral"))
    rows[3], rows[9] = "3,0,nuetral", "9,0,Sad"
    path = _csv(tmp_path / "t.csv", "x0,x1,y", rows)
    with pytest.raises(ManifestError) as error:
        _dm(path).setup()
    message = str(error.value)
    assert "labels 'neutral' and 'nuetral' look like one label written two ways" in message
    assert "'Sad' at line(s) 11; 'sad' at line(s) 3, 6, 9" in message
    assert "label 'nuetral' is seen in 1 row(s)" in message
    _dm(path, [{"name": "y", "check_labels": False}], stratify=None).setup()
    _dm(path, min_label_count=1, near_duplicate_check=False).setup()


def test_a_val_fraction_of_zero_leaves_an_empty_split(tmp_path):
    path = _csv(tmp_path / "t.csv", "x0,x1,y", _grid(8))
    with pytest.raises(ManifestError, match="the val split has no rows"):
        _dm(path, val_fraction=0.0).setup()


def test_check_splits_runs_after_setup(tmp_path, monkeypatch):
    from mtl_lightning.data.base import TensorTaskDataset

    path = _csv(tmp_path / "t.csv", "x0,x1,y", _grid(8))
    dm = _dm(path)
    empty = TensorTaskDataset(torch.zeros(0, 2), {"y": torch.zeros(0, dtype=torch.long)})
    monkeypatch.setattr(dm, "_dataset", lambda part: empty)
    with pytest.raises(DataError, match="split is empty"):
        dm.setup()


def test_stratify_must_name_a_classification_task(tmp_path):
    path = _csv(tmp_path / "t.csv", "x0,x1,y", _grid(8))
    with pytest.raises(
        ValueError, match=r"stratify: 'x1' is not a classification task; those are \['y'\]"
    ):
        _dm(path, stratify="x1")


def test_parquet_and_npz_files_report_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import numpy as np
    import pyarrow.parquet as pq

    x = np.arange(24.0).reshape(12, 2)
    labels = ["a", "b", None] + ["a", "b"] * 4 + ["c"]  # row 3 unlabelled: -100
    pq.write_table(pa.table({"x0": x[:, 0], "x1": x[:, 1], "y": labels}), tmp_path / "t.parquet")
    dm = _dm(str(tmp_path / "t.parquet"), min_label_count=1)
    dm.setup()
    everything = torch.cat([s.targets["y"] for s in (dm.train_set, dm.val_set, dm.test_set)])
    assert sorted(everything.tolist()) == [-100] + [0] * 5 + [1] * 5 + [2]
    x[4, 1] = np.nan
    np.savez(tmp_path / "t.npz", X=x, y=np.arange(12) % 2)
    with pytest.raises(
        ManifestError, match=r"t\.npz: 1 bad row.*\n  row 5: feature 'x1': nan is not finite"
    ):
        _dm(str(tmp_path / "t.npz")).setup()


def test_a_split_file_missing_a_feature_column_names_it(tmp_path):
    train = _csv(tmp_path / "train.csv", "x0,x1,y", _grid(8))
    val = _csv(tmp_path / "val.csv", "x0,y", ["0.5,a", "1.5,b"])
    with pytest.raises(
        ManifestError,
        match=r"val.csv: no feature column\(s\) \['x1'\]; the columns are \['x0', 'y'\]",
    ):
        TabularDataModule([{"name": "y"}], train_path=train, val_path=val).setup()
    with pytest.raises(ValueError, match=r"role must be 'main' or 'adversarial', got 'side'"):
        TabularDataModule([{"name": "y", "role": "side"}], train_path=train, val_path=val)


def test_predict_reads_features_only_and_reports_bad_rows(tmp_path):
    path = _csv(tmp_path / "t.csv", "x0,x1,y", _grid(12))
    x_only = _csv(tmp_path / "p.csv", "x1,x0", ["0,100", "1,101", "2,oops"])
    dm = _dm(path, predict_path=x_only)  # no checkpoint: the training split's statistics
    with pytest.raises(ManifestError, match=r"p\.csv: 1 bad row.*\n  line 4: feature 'x0': 'oops'"):
        dm.setup("predict")
    dm = _dm(path, predict_path=x_only, on_error="skip")
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        dm.setup("predict")
    assert dm.train_set is not None and len(dm.predict_set) == 2
    expected = (
        torch.tensor([[100.0, 0.0], [101.0, 1.0]]) - torch.from_numpy(dm.stats.mean)
    ) / torch.from_numpy(dm.stats.std)
    torch.testing.assert_close(dm.predict_set.features, expected.float())
    assert dm.predict_set[1]["targets"]["y"] == -100 and dm.row_path(1) == "line 3"
