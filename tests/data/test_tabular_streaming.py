"""StreamingTabularDataModule against TabularDataModule on the same files: the same splits,
rows, targets, statistics and vocabulary; the same bad-row, label and duplicate messages; shards
written once and reused; checkpoints' classes applied; predictions naming their lines."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from mtl_lightning.checks import MissingClassWarning
from mtl_lightning.data import StreamingTabularDataModule, TabularDataModule, write_example_table
from mtl_lightning.data.manifest import ManifestError
from mtl_lightning.data.shards import _HOST, _TMP

pytest.importorskip("litdata")

FIVE = [{"name": f"y{k}"} for k in range(1, 6)]


def _pair(tmp_path, tasks, **kwargs):
    """The in-memory and the streaming datamodule on the same arguments, both set up."""
    memory = TabularDataModule(tasks, **kwargs)
    stream = StreamingTabularDataModule(
        tasks, shard_dir=str(tmp_path / "shards"), block_rows=7, **kwargs
    )
    return memory, stream


def _rows(dataset):
    items = [dataset[i] for i in range(len(dataset))]
    x = torch.stack([it["features"] for it in items])
    names = items[0]["targets"].keys()
    return x, {t: torch.stack([it["targets"][t] for it in items]) for t in names}


def assert_same(memory, stream, splits=("train", "val", "test")):
    assert [(t.name, t.size, t.kind, t.only_when) for t in stream.tasks] == [
        (t.name, t.size, t.kind, t.only_when) for t in memory.tasks
    ]
    assert stream.vocab.names == memory.vocab.names
    np.testing.assert_allclose(stream.stats.mean, memory.stats.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stream.stats.std, memory.stats.std, rtol=1e-12, atol=1e-12)
    for split in splits:
        ref, got = getattr(memory, f"{split}_set"), getattr(stream, f"{split}_set")
        assert len(got) == len(ref), split
        x, targets = _rows(got)
        torch.testing.assert_close(x, ref.features, rtol=1e-6, atol=1e-6)
        for task, y in ref.targets.items():
            torch.testing.assert_close(targets[task], y, equal_nan=True, msg=f"{split} {task}")


def _csv(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _mixed_rows(n=90):
    """Classes with missing cells, a condition, regression with gaps, multilabel."""
    rows = []
    for i in range(n):
        seed = "yes" if i % 3 else "no"
        grade = ["", "low", "mid", "high"][i % 4] if seed == "yes" else "n/a"
        reg = "" if i % 7 == 0 else f"{np.sin(i):.5f}"
        tags = "," if i % 5 == 0 else f"{i % 2},{(i // 2) % 2}"
        rows.append(f"{i * 0.37:.4f},{(i * i) % 11},{seed},{grade},{reg},{tags}")
    return rows


MIXED = [
    {"name": "seed"},
    {"name": "grade", "only_when": {"seed": ["yes"]}},
    {"name": "reg", "kind": "regression"},
    {"name": "tags", "kind": "multilabel", "columns": ["t0", "t1"]},
]


def test_the_same_rows_targets_and_statistics_as_in_memory(tmp_path):
    path = write_example_table(tmp_path / "five.csv", n=150, seed=2)
    memory, stream = _pair(tmp_path, FIVE, path=str(path), features="x")
    memory.setup("fit"), stream.setup("fit")
    assert_same(memory, stream)
    # conditions, missing labels, regression and multilabel targets, a stratified split
    mixed = _csv(tmp_path / "mixed.csv", "x0,x1,seed,grade,reg,t0,t1", _mixed_rows())
    memory, stream = _pair(tmp_path, MIXED, path=mixed, stratify="seed")
    memory.setup("fit"), stream.setup("fit")
    assert_same(memory, stream)


def test_split_column_split_files_parquet_and_npy(tmp_path):
    rows = [f"{i},{i % 5},{'ab'[i % 2]},{('train', 'val', 'test')[i % 3]}" for i in range(40)]
    path = _csv(tmp_path / "s.csv", "x0,x1,y,part", rows)
    memory, stream = _pair(tmp_path, [{"name": "y"}], path=path, split_column="part")
    memory.setup("fit"), stream.setup("fit")
    assert_same(memory, stream)
    files = {k: _csv(tmp_path / f"{k}.csv", "x0,x1,y", [r.rsplit(",", 1)[0] for r in rows
             if r.endswith(k)]) for k in ("train", "val", "test")}  # fmt: skip
    memory, stream = _pair(
        tmp_path, [{"name": "y"}], train_path=files["train"], val_path=files["val"],
        test_path=files["test"],
    )  # fmt: skip
    memory.setup("fit"), stream.setup("fit")
    assert_same(memory, stream)
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    x = np.random.default_rng(0).normal(size=(60, 3))
    y = [None if i % 9 == 0 else "ab"[i % 2] for i in range(60)]
    table = pa.table({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "y": y})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=11)
    memory, stream = _pair(tmp_path, [{"name": "y"}], path=str(tmp_path / "t.parquet"))
    memory.setup("fit"), stream.setup("fit")
    assert_same(memory, stream)
    np.save(tmp_path / "t.npy", np.column_stack([x, np.arange(60) % 3]))
    memory, stream = _pair(tmp_path, [{"name": "x3", "column": "x3"}], path=str(tmp_path / "t.npy"))
    memory.setup("fit"), stream.setup("fit")
    assert_same(memory, stream)


def _message(dm) -> str:
    with pytest.raises(ManifestError) as error:
        dm.setup("fit")
    return str(error.value)


def test_bad_rows_duplicates_and_suspicious_labels_read_as_in_memory(tmp_path):
    rows = [f"{i},{i % 3},{'ab'[i % 2]}" for i in range(30)]
    rows[3] = "3,x,a"  # not a number
    rows[5] = "5,inf,b"  # not finite
    rows[8] = "8,2"  # too few cells
    rows[12] = rows[1].replace(",b", ",a")  # a duplicate of line 3
    rows[20] = "20,2,c"  # a label outside the declared classes
    path = _csv(tmp_path / "bad.csv", "x0,x1,y", rows)
    tasks = [{"name": "y", "classes": ["a", "b"]}]
    memory, stream = _pair(tmp_path, tasks, path=path)
    assert _message(stream) == _message(memory)
    assert "line 14: the same features as line 3" in _message(stream)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memory, stream = _pair(tmp_path, tasks, path=path, on_error="skip")
        memory.setup("fit"), stream.setup("fit")
    assert_same(memory, stream)
    # rare and near-duplicate labels, over two tasks: one message listing both
    rows = [f"{i},{i % 3},{('happy', 'sad', 'calm')[i % 3]},{'uv'[i % 2]}" for i in range(40)]
    rows[4], rows[9], rows[17] = "4,1,Happy ,u", "9,0,sad,w", "17,2,nuetral,v"
    path = _csv(tmp_path / "labels.csv", "x0,x1,y,z", rows)
    memory, stream = _pair(tmp_path, [{"name": "y"}, {"name": "z"}], path=path)
    assert _message(stream) == _message(memory)
    # across files: the duplicate names the other file
    train = _csv(tmp_path / "train.csv", "x0,x1,y", [f"{i},0,{'ab'[i % 2]}" for i in range(10)])
    val = _csv(tmp_path / "val.csv", "x0,x1,y", ["3,0,b", "0.5,0,a", "1.5,0,b"])
    memory, stream = _pair(tmp_path, [{"name": "y"}], train_path=train, val_path=val)
    assert _message(stream) == _message(memory)
    only_header = _csv(tmp_path / "h.csv", "x0,x1,y", [])
    memory, stream = _pair(tmp_path, [{"name": "y"}], path=only_header)
    assert _message(stream) == _message(memory)
    example = write_example_table(tmp_path / "e.csv", n=60)
    memory, stream = _pair(tmp_path, FIVE, path=str(example), val_fraction=0.0)
    assert _message(stream) == _message(memory)
    with pytest.raises(ManifestError, match="the val split has no rows"):
        stream.setup("fit")


def test_encoding_errors_and_npz_name_the_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("x0,y\n1,a\n2,caf\u00e9\n".encode("latin-1"))
    memory, stream = _pair(tmp_path, [{"name": "y"}], path=str(path))
    with pytest.raises(ValueError) as ref:
        memory.setup("fit")
    with pytest.raises(ValueError) as got:
        stream.setup("fit")
    assert str(got.value) == str(ref.value) and "line 3 is not valid UTF-8" in str(got.value)
    np.savez(tmp_path / "t.npz", x=np.zeros((4, 2)))
    dm = StreamingTabularDataModule([{"name": "y"}], path=str(tmp_path / "t.npz"))
    with pytest.raises(ManifestError, match=r"t.npz: an .npz archive cannot be read in pieces"):
        dm.setup("fit")


def test_shards_are_written_once_reused_and_rewritten_when_the_file_changes(tmp_path):
    path = write_example_table(tmp_path / "five.csv", n=120)
    args = dict(path=str(path), shard_dir=str(tmp_path / "shards"), block_rows=16)
    StreamingTabularDataModule(FIVE, **args).setup("fit")
    (written,) = (tmp_path / "shards").iterdir()
    before = (written / "meta.json").stat().st_mtime_ns
    again = StreamingTabularDataModule(FIVE, **args)
    again.setup("fit")
    assert (written / "meta.json").stat().st_mtime_ns == before and len(again.train_set) == 84
    stale = tmp_path / "shards" / f"{_TMP}abc-{_HOST}-{2**22 + 12345}"  # a killed writer's
    stale.mkdir()
    os.utime(path, ns=(before + 10**9, before + 10**9))  # the file changed
    StreamingTabularDataModule(FIVE, **args).setup("fit")
    assert len(list((tmp_path / "shards").iterdir())) == 2 and not stale.exists()


def test_a_checkpoint_s_classes_and_statistics_are_used(tmp_path):
    path = write_example_table(tmp_path / "five.csv", n=150)
    fitted = StreamingTabularDataModule(FIVE, path=str(path), shard_dir=str(tmp_path / "s"))
    fitted.setup("fit")
    ckpt = tmp_path / "dm.ckpt"
    torch.save({"StreamingTabularDataModule": fitted.state_dict()}, ckpt)
    torch.save({"TabularDataModule": fitted.state_dict()}, tmp_path / "memory.ckpt")
    lines = path.read_text().splitlines()
    kept = [r for r in lines[1:] if r.split(",")[22] not in ("0",)]  # y3 without class 0
    new = _csv(tmp_path / "new.csv", lines[0], kept)
    memory = TabularDataModule(FIVE, path=new, restore_from=str(tmp_path / "memory.ckpt"))
    stream = StreamingTabularDataModule(FIVE, path=new, restore_from=str(ckpt), block_rows=9,
                                        shard_dir=str(tmp_path / "s"))  # fmt: skip
    memory.setup("validate"), stream.setup("validate")
    assert stream.tasks[2].size == 4 and stream.vocab.names == fitted.vocab.names
    assert_same(memory, stream)
    # a label the checkpoint does not know is a bad row, with its line
    unknown = _csv(tmp_path / "unknown.csv", lines[0], [*lines[1:40], lines[40][:-1] + "7"])
    memory = TabularDataModule(FIVE, path=unknown, restore_from=str(tmp_path / "memory.ckpt"))
    stream = StreamingTabularDataModule(FIVE, path=unknown, restore_from=str(ckpt),
                                        shard_dir=str(tmp_path / "s"))  # fmt: skip
    assert _message(stream) == _message(memory) and "line 41" in _message(stream)


def test_predict_reads_every_good_row_with_its_line(tmp_path):
    path = write_example_table(tmp_path / "five.csv", n=120)
    header = ",".join(f"x{j}" for j in range(20))
    rows = [",".join(r.split(",")[:20]) for r in path.read_text().splitlines()[1:30]]
    rows[4] = ",".join(["oops"] + rows[4].split(",")[1:])
    x_only = _csv(tmp_path / "x.csv", header, rows)
    kwargs = dict(path=str(path), predict_path=x_only, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memory, stream = _pair(tmp_path, FIVE, **kwargs)
        memory.setup("predict"), stream.setup("predict")
    assert len(stream.predict_set) == len(memory.predict_set) == 28
    got = [stream.predict_set[i] for i in range(28)]
    torch.testing.assert_close(torch.stack([g["features"] for g in got]),
                               memory.predict_set.features, rtol=1e-6, atol=1e-6)  # fmt: skip
    assert [g["index"] for g in got] == list(range(28))
    assert [stream.row_path(i) for i in (3, 4)] == [memory.row_path(i) for i in (3, 4)]
    assert stream.row_path(4) == "line 7" and int(got[0]["targets"]["y1"]) == -100


def test_a_class_only_validation_has_is_warned_about(tmp_path):
    rows = [f"{i},{i % 3},{'ab'[i % 2] if i < 30 else 'c'},{'train' if i < 30 else 'val'}"
            for i in range(34)]  # fmt: skip
    rows += [f"{i},1,a,val" for i in range(40, 44)] + [f"{i},1,b,test" for i in range(50, 54)]
    path = _csv(tmp_path / "t.csv", "x0,x1,y,part", rows)
    with pytest.warns(MissingClassWarning, match=r"class 2 occurs in the val split \(4 sample"):
        StreamingTabularDataModule([{"name": "y"}], path=path, split_column="part").setup("fit")


def test_training_order_reads_few_blocks_at_a_time_and_splits_across_processes(tmp_path):
    path = write_example_table(tmp_path / "five.csv", n=400)
    dm = StreamingTabularDataModule(FIVE, path=str(path), block_rows=10, lanes=2,
                                    shuffle_window=2, batch_size=8)  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    order = [i for i, _ in loader.sampler]
    assert sorted(order) == list(range(len(dm.train_set)))
    # any 40 consecutive positions come from at most 2 lanes x 2 blocks x (2 windows)
    assert max(len({i // 10 for i in order[k : k + 40]}) for k in range(0, 200, 40)) <= 8
    epoch0 = [b["features"] for b in loader]
    loader.sampler.set_epoch(1)
    assert not torch.equal(torch.cat(epoch0), torch.cat([b["features"] for b in loader]))
    meta = json.loads(next((tmp_path / ".table_shards").glob("*/meta.json")).read_text())
    assert meta["splits"]["train"]["rows"] == len(dm.train_set) == 280
