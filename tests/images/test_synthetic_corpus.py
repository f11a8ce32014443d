"""The generated seed-quality image corpus: manifest counts, files, determinism, learnability."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from mtl_lightning.images.synthetic_corpus import (  # noqa: E402
    GRADES,
    ImageCorpusSpec,
    draw_image,
    main,
    write_image_corpus,
)

SPEC = ImageCorpusSpec(n_images=300, size=32, seed_rate=0.5, missing_quality=0.1)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict[str, str]], torch.Tensor]:
    """The corpus of SPEC: its manifest, its rows and every image decoded ``[N, 3, H, W]``."""
    manifest = write_image_corpus(tmp_path_factory.mktemp("seed_images"), SPEC)
    rows = _rows(manifest)
    images = [torchvision.io.decode_image(str(manifest.parent / r["path"])) for r in rows]
    return manifest, rows, torch.stack(images)


def test_manifest_header_and_counts(corpus):
    manifest, rows, _ = corpus
    assert manifest.read_text().splitlines()[0] == "path,seed,quality"
    assert len(rows) == SPEC.n_images
    seed_rows = [r for r in rows if r["seed"] == "yes"]
    assert {r["seed"] for r in rows} == {"yes", "no"}
    assert len(seed_rows) == round(SPEC.seed_rate * SPEC.n_images)
    assert all((r["quality"] == "n/a") == (r["seed"] == "no") for r in rows)
    empty = [r for r in seed_rows if r["quality"] == ""]
    assert len(empty) == round(SPEC.missing_quality * len(seed_rows))
    grades = Counter(r["quality"] for r in seed_rows if r["quality"])
    assert set(grades) == set(GRADES)
    assert max(grades.values()) - min(grades.values()) <= 1
    # the seed images sit at shuffled positions, not in one block
    assert 0 < [r["seed"] for r in rows[:100]].count("yes") < 100


def test_every_file_decodes_in_both_formats(corpus):
    manifest, rows, images = corpus
    assert images.shape == (SPEC.n_images, 3, SPEC.size, SPEC.size)
    assert images.dtype == torch.uint8
    assert {Path(r["path"]).suffix for r in rows} == {".png", ".jpg"}
    assert all(r["path"].startswith("images/img_") for r in rows)
    assert len(list((manifest.parent / "images").iterdir())) == SPEC.n_images


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    spec = ImageCorpusSpec(n_images=6, size=24)
    a = write_image_corpus(tmp_path / "a", spec)
    b = write_image_corpus(tmp_path / "b", spec)
    c = write_image_corpus(tmp_path / "c", ImageCorpusSpec(n_images=6, size=24, seed=1))
    assert a.read_text() == b.read_text()
    pngs = sorted(p.name for p in (a.parent / "images").glob("*.png"))
    assert len(pngs) == 3
    for name in pngs:
        assert (a.parent / "images" / name).read_bytes() == (
            b.parent / "images" / name
        ).read_bytes()
    assert any(
        (a.parent / "images" / name).read_bytes() != (c.parent / "images" / name).read_bytes()
        for name in pngs
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_images", 0),
        ("size", 8),
        ("seed_rate", 1.5),
        ("seed_rate", -0.1),
        ("missing_quality", 2.0),
        ("formats", ()),
        ("formats", ("gif",)),
    ],
)
def test_spec_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        ImageCorpusSpec(**{field: value})


def test_draw_image_needs_a_grade_for_a_seed():
    with pytest.raises(ValueError, match="grade"):
        draw_image(True, None, 32, np.random.default_rng(0))
    assert draw_image(False, None, 20, np.random.default_rng(0)).shape == (3, 20, 20)


def test_cli_writes_a_corpus(tmp_path, capsys):
    main([str(tmp_path / "out"), "--n-images", "4", "--size", "16", "--seed-rate", "1.0"])
    manifest = Path(capsys.readouterr().out.strip())
    assert manifest == tmp_path / "out" / "manifest.csv"
    assert [r["seed"] for r in _rows(manifest)] == ["yes"] * 4


def _nearest_centroid(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    """Held-out accuracy of a nearest-centroid classifier on standardised features."""
    f = (features - features[train].mean(0)) / (features[train].std(0) + 1e-6)
    classes = np.unique(labels)
    centroids = np.stack([f[train & (labels == c)].mean(0) for c in classes])
    pred = classes[np.argmin(((f[:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    return float((pred == labels)[~train].mean())


def _labels(rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Seed (1/0) and grade index (-1 where unlabelled) per row."""
    seed = np.array([r["seed"] == "yes" for r in rows], dtype=np.int64)
    grade = np.array([GRADES.index(r["quality"]) if r["quality"] in GRADES else -1 for r in rows])
    return seed, grade


def test_mean_colour_alone_does_not_give_the_labels(corpus):
    _, rows, images = corpus
    seed, grade = _labels(rows)
    mean_rgb = images.float().mean(dim=(2, 3)).numpy()
    train = np.arange(len(rows)) < 200
    seed_acc = _nearest_centroid(mean_rgb, seed, train)
    graded = grade >= 0
    grade_acc = _nearest_centroid(mean_rgb[graded], grade[graded], train[graded])
    print(f"mean-colour held-out accuracy: seed {seed_acc:.3f}, grade {grade_acc:.3f}")
    assert seed_acc < 0.75
    assert grade_acc < 0.75


def test_a_small_cnn_learns_both_tasks(corpus, one_thread):
    _, rows, images = corpus
    seed, grade = (torch.from_numpy(x) for x in _labels(rows))
    x = images.float() / 255.0
    x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-3)
    torch.manual_seed(0)
    body = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(),
    )  # fmt: skip
    seed_head, grade_head = torch.nn.Linear(32, 2), torch.nn.Linear(32, len(GRADES))
    modules = torch.nn.ModuleList([body, seed_head, grade_head])
    optimizer = torch.optim.Adam(modules.parameters(), lr=3e-3)
    cross_entropy = torch.nn.functional.cross_entropy
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = torch.randint(0, 200, (32,), generator=generator)
        h = body(x[batch])
        graded = grade[batch] >= 0
        loss = cross_entropy(seed_head(h), seed[batch])
        if graded.any():
            loss = loss + cross_entropy(grade_head(h[graded]), grade[batch][graded])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        h = body(x[200:])
        seed_acc = (seed_head(h).argmax(1) == seed[200:]).float().mean().item()
        graded = grade[200:] >= 0
        grade_pred = grade_head(h[graded]).argmax(1)
        grade_acc = (grade_pred == grade[200:][graded]).float().mean().item()
    print(f"cnn held-out accuracy: seed {seed_acc:.3f}, grade {grade_acc:.3f}")
    assert seed_acc > 0.8, seed_acc
    assert grade_acc > 0.6, grade_acc
