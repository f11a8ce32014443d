"""ImageManifestDataModule: decoding, transforms, conditions, bad images, checkpoints."""

import csv
from pathlib import Path

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from torchvision.io import decode_image, encode_jpeg, encode_png  # noqa: E402
from torchvision.transforms import v2  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from mtl_lightning.data import ImageManifestDataModule, ManifestError  # noqa: E402
from mtl_lightning.data.image_sets import sample_seed  # noqa: E402
from mtl_lightning.validation import IGNORE_INDEX  # noqa: E402

CONDITIONS = {"quality": {"seed": ["yes"]}}


def _image(seed: int, height: int = 24, width: int = 24, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (channels, height, width), generator=g, dtype=torch.uint8)


def _write(root: Path, rows: list[dict], images: dict[str, bytes | torch.Tensor]) -> Path:
    """``images``: path -> raw bytes, or a tensor written as PNG (``.png``) or JPEG."""
    for name, data in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, torch.Tensor):
            encode = encode_png if name.endswith(".png") else encode_jpeg
            data = encode(data).numpy().tobytes()
        (root / name).write_bytes(data)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _seed_rows(n: int = 24) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """``n`` rows cycling no / good / rotten / raw (``n/a`` as the no-seed grade)."""
    rows, images = [], {}
    for i in range(n):
        kind = ["no", "good", "rotten", "raw"][i % 4]
        path = f"img/{i:03d}.{'png' if i % 2 else 'jpg'}"
        rows.append(
            {
                "path": path,
                "seed": "no" if kind == "no" else "yes",
                "quality": "n/a" if kind == "no" else kind,
            }
        )
        images[path] = _image(i)
    return rows, images


def _dm(manifest: Path, **kw) -> ImageManifestDataModule:
    kw = {
        "label_columns": ["seed", "quality"],
        "conditions": CONDITIONS,
        "image_size": 16,
        "decode_threads": 1,
        "batch_size": 4,
        **kw,
    }
    return ImageManifestDataModule(str(manifest), **kw)


def test_decoding_resizes_and_centre_crops_png_jpeg_and_grey(tmp_path):
    wide = torch.zeros(3, 20, 40, dtype=torch.uint8)
    wide[:, :, 20:] = 255  # left half black, right half white
    grey = _image(1, 20, 20, channels=1)
    rows = [
        {"path": p, "y": y, "split": s}
        for p, y, s in [
            ("wide.png", "a", "train"),
            ("grey.png", "b", "train"),
            ("c.jpg", "a", "val"),
            ("d.png", "b", "test"),
        ]
    ]
    manifest = _write(
        tmp_path, rows, {"wide.png": wide, "grey.png": grey, "c.jpg": _image(2), "d.png": _image(3)}
    )
    dm = ImageManifestDataModule(
        str(manifest), ["y"], image_size=10, normalize="none", split="manifest", min_label_count=1
    )
    images = dm._load_images()
    assert [tuple(x.shape) for x in images] == [(3, 10, 10)] * 4
    # shorter side 20 -> 10, so the 40-wide image becomes 20 wide; the centre 10 columns are
    # half black and half white, as torchvision's own resize + centre crop says
    expected = TF.center_crop(TF.resize(wide, [10], antialias=True), [10, 10])
    assert torch.equal(images[0], expected)
    assert images[0][:, :, :4].max() < 30 and images[0][:, :, 6:].min() > 225
    # a grey image read as RGB repeats its one channel
    assert torch.equal(images[1][0], images[1][1]) and torch.equal(images[1][1], images[1][2])
    one = ImageManifestDataModule(
        str(manifest), ["y"], image_size=10, channels=1, split="manifest", min_label_count=1
    )
    assert [tuple(x.shape) for x in one._load_images()] == [(1, 10, 10)] * 4


def test_conditions_and_partial_grades(tmp_path):
    rows, images = _seed_rows(24)
    rows[1]["quality"] = ""  # a seed whose grade is unknown
    manifest = _write(tmp_path, rows, images)
    with pytest.raises(
        ManifestError, match=r"line 3: img/001.png: no quality label \(seed is 'yes'\)"
    ):
        _dm(manifest).setup("fit")
    dm = _dm(manifest, partial_tasks=["quality"])
    assert [(t.name, t.size, t.only_when) for t in dm.tasks] == [
        ("seed", 2, None),
        ("quality", 3, {"seed": [1]}),
    ]
    assert dm.vocab.names["quality"] == ["good", "raw", "rotten"]  # `n/a` is not a class
    dm.setup("fit")
    everything = dm.datasets["all"]
    seed, quality = everything.targets["seed"], everything.targets["quality"]
    labels = [rows[i] for i in everything.rows]
    for s, q, row in zip(seed.tolist(), quality.tolist(), labels, strict=True):
        assert s == (row["seed"] == "yes")
        if row["seed"] == "no" or not row["quality"]:
            assert q == IGNORE_INDEX
        else:
            assert dm.vocab.names["quality"][q] == row["quality"]


def test_every_bad_image_is_reported_with_its_line_and_path(tmp_path):
    rows, images = _seed_rows(24)
    png = encode_png(_image(50)).numpy().tobytes()
    jpg = encode_jpeg(_image(51)).numpy().tobytes()
    bad = {
        "img/003.png": png[: len(png) // 2],
        "img/004.jpg": jpg[: len(jpg) // 2],
        "img/005.png": b"",
        "img/006.jpg": b"<html>not an image</html>",
    }
    images = {**images, **bad}
    rows[7]["path"] = "img/missing.png"
    manifest = _write(tmp_path, rows, images)
    with pytest.raises(ManifestError) as caught:
        _dm(manifest).setup("fit")
    message = str(caught.value)
    assert "5 bad row(s)" in message
    for line, path, reason in [
        (5, "img/003.png", "not a readable image (truncated or corrupt?)"),
        (6, "img/004.jpg", "not a readable image (truncated or corrupt?)"),
        (7, "img/005.png", "empty file (0 bytes)"),
        (8, "img/006.jpg", "not a readable image"),
        (9, "img/missing.png", "file not found"),
    ]:
        assert f"line {line}: {path}: {reason}" in message
    dm = _dm(manifest, on_error="skip", min_label_count=1)
    with pytest.warns(UserWarning, match="skipped 5 bad row"):
        dm.setup("fit")
    kept = sorted(dm.row_path(i) for s in ("train", "val", "test") for i in dm.datasets[s].rows)
    assert kept == sorted(r["path"] for i, r in enumerate(rows) if i not in (3, 4, 5, 6, 7))


def test_evaluation_is_deterministic_and_augmentation_is_seeded_per_sample_and_epoch(tmp_path):
    rows, images = _seed_rows(24)
    manifest = _write(tmp_path, rows, images)
    augment = [v2.RandomHorizontalFlip(), v2.RandomRotation(30), v2.ColorJitter(0.3, 0.3)]
    dm = _dm(manifest, augment=augment)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert torch.equal(val[0]["features"], val[0]["features"])  # no randomness in evaluation
    assert val.augment is None and train.augment is not None
    state = torch.get_rng_state()
    a, b, c = train[(0, 0)]["features"], train[(0, 0)]["features"], train[(0, 1)]["features"]
    assert torch.equal(torch.get_rng_state(), state)  # dropout's stream is left alone
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the same as applying the transforms under the sample's seed by hand
    torch.manual_seed(sample_seed(0, 0, 0))
    by_hand = v2.Compose(augment)(train.images[0])
    expected = (by_hand.float() / 255 - train.mean) / train.std
    torch.testing.assert_close(a, expected)
    # a training item without an epoch (e.g. a user's own loader) is not augmented
    assert torch.equal(
        train[0]["features"], (train.images[0].float() / 255 - train.mean) / train.std
    )


def test_loaders_are_worker_safe_and_the_same_with_and_without_workers(tmp_path):
    rows, images = _seed_rows(24)
    manifest = _write(tmp_path, rows, images)
    augment = [v2.RandomRotation(30)]
    batches = {}
    for workers in (0, 2):
        dm = _dm(manifest, augment=augment, num_workers=workers)
        dm.setup("fit")
        loader = dm.train_dataloader()
        batches[workers] = [[b["features"] for b in loader] for _ in range(2)]  # two epochs
        loader.sampler.set_epoch(1)
        batches[workers].append([b["features"] for b in loader])
    for epoch_a, epoch_b in zip(batches[0], batches[2], strict=True):
        for x, y in zip(epoch_a, epoch_b, strict=True):
            assert torch.equal(x, y)


def test_augment_that_changes_the_size_is_an_error_naming_the_row(tmp_path):
    rows, images = _seed_rows(24)
    dm = _dm(_write(tmp_path, rows, images), augment=[v2.Resize(8)])
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"augment must return the image as it got it .*row \d+"):
        dm.datasets["train"][(0, 0)]


def test_dataset_statistics_equal_an_independent_computation(tmp_path):
    rows, images = _seed_rows(24)
    dm = _dm(_write(tmp_path, rows, images))
    dm.setup("fit")
    train = torch.stack([dm._images[i] for i in dm.datasets["train"].rows]).double() / 255
    mean = train.mean(dim=(0, 2, 3))
    std = train.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    torch.testing.assert_close(torch.tensor(dm.stats["mean"]).double(), mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(dm.stats["std"]).double(), std, atol=1e-6, rtol=0)
    features = torch.stack([dm.datasets["train"][i]["features"] for i in range(len(dm.train_set))])
    assert features.mean().abs() < 1e-4 and (features.std() - 1).abs() < 1e-2
    imagenet = _dm(_write(tmp_path, rows, images), normalize="imagenet")
    imagenet.setup("fit")
    assert imagenet.stats == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_checkpoint_state_restores_vocabulary_and_statistics(tmp_path):
    rows, images = _seed_rows(24)
    manifest = _write(tmp_path, rows, images)
    dm = _dm(manifest)
    dm.setup("fit")
    state = dm.state_dict()
    assert state["images"] == {"image_size": 16, "channels": 3}
    # the manifest changes (fewer classes); the restored datamodule keeps the checkpoint's
    changed = [r for r in rows if r["quality"] != "raw"]
    other = _dm(_write(tmp_path / "later", changed, images))
    other.load_state_dict(state)
    assert other.vocab.names == dm.vocab.names and [t.size for t in other.tasks] == [2, 3]
    other.setup("test")
    assert other.stats == {"mean": state["mean"], "std": state["std"]}
    with pytest.raises(ValueError, match="differ from this datamodule's"):
        _dm(manifest, image_size=32).load_state_dict(state)


def test_predict_reads_every_row_without_labels(tmp_path):
    rows, images = _seed_rows(24)
    manifest = _write(tmp_path, rows, images)
    dm = _dm(manifest)
    dm.setup("fit")
    state = dm.state_dict()
    unlabelled = _write(tmp_path / "new", [{"path": r["path"]} for r in rows[:5]], images)
    new = _dm(unlabelled, predict_split="all")
    new._stage = "predict"
    new.load_state_dict(state)
    new.setup("predict")
    batch = next(iter(new.predict_dataloader()))
    assert batch["features"].shape == (4, 3, 16, 16) and batch["index"].tolist() == [0, 1, 2, 3]
    assert new.row_path(2) == rows[2]["path"]
    assert decode_image(str(tmp_path / "new" / rows[0]["path"])).shape[0] == 3


def test_argument_errors_name_the_argument(tmp_path):
    rows, images = _seed_rows(8)
    manifest = _write(tmp_path, rows, images)
    with pytest.raises(ValueError, match="split must be 'stratified' or 'manifest'"):
        _dm(manifest, split="speaker_disjoint")
    with pytest.raises(ValueError, match="normalize must be"):
        _dm(manifest, normalize="imagenette")
    with pytest.raises(ValueError, match="channels must be 1"):
        _dm(manifest, channels=4)
    with pytest.raises(ValueError, match=r"conditions\['quality'\]: unknown task 'seeds'"):
        _dm(manifest, conditions={"quality": {"seeds": ["yes"]}})
