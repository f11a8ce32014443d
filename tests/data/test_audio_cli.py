"""The audio config through the CLI: fit once, then predict / validate / probe from its checkpoint
with other manifests (a class missing, no labels at all, an unknown label)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from _manifest_io import read_rows as _rows
from _manifest_io import write_rows as _write

from mtl_lightning import MultiTaskModule
from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus
from mtl_lightning.commands import main
from mtl_lightning.data import AudioFeatureDataModule, ManifestError

CONFIG = str(Path(__file__).parents[2] / "configs" / "audio_speaker_adversarial.yaml")


def _args(manifest: Path, logs: Path, *extra: str) -> list[str]:
    return [
        "--config",
        CONFIG,
        "--data.init_args.manifest",
        str(manifest),
        "--data.init_args.n_mels",
        "16",
        "--data.init_args.num_extract_workers",
        "1",
        "--data.init_args.progress",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(logs),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--summary.print_table",
        "false",
        *extra,
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of the audio config (tiny trunk) on 6 speakers x 3 emotions x 3 utterances;
    whole utterances (crop_frames: null). Returns (manifest, logs folder, last checkpoint)."""
    root = tmp_path_factory.mktemp("audio_cli")
    spec = CorpusSpec(speakers=6, emotions=3, per_pair=3, min_seconds=0.3, max_seconds=0.5)
    manifest = write_corpus(root / "corpus", spec)
    cli = main(
        [
            "fit",
            *_args(manifest, root / "logs"),
            "--trainer.max_epochs",
            "1",
            "--model.trunk.init_args.channels",
            "[4, 8, 8]",
            "--model.trunk.init_args.out_features",
            "16",
        ]
    )
    ckpt = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and cli.datamodule.hparams.crop_frames is None
    return manifest, root / "logs", ckpt


def _predictions(cli) -> list[dict[str, str]]:
    return _rows(Path(cli.trainer.log_dir) / "predictions.csv")


def test_predict_from_a_checkpoint_with_other_manifests(run):
    manifest, logs, ckpt = run
    vocab = torch.load(ckpt, weights_only=True)["AudioFeatureDataModule"]["vocab"]
    assert vocab["emotion"] == ["happy", "neutral", "sad"]
    rows = _rows(manifest)
    for row in rows:
        row["path"] = str(manifest.parent / row["path"])  # the manifests live elsewhere
    folder = logs.parent
    # a class missing (its own vocabulary would size the emotion head 2), some cells empty
    no_happy = [r for r in rows if r["emotion"] != "happy"]
    for row in no_happy[::4]:
        row["emotion"] = row["speaker"] = ""
    # new recordings without any label column, nor speaker or split
    unlabelled = _write(folder / "unlabelled.csv", rows[::3], columns=["path"])
    predicted = {}
    for name, other in [
        ("no_happy", _write(folder / "no_happy.csv", no_happy)),
        ("unlabelled", unlabelled),
    ]:
        cli = main(
            [
                "predict",
                *_args(other, logs, "--data.init_args.predict_split", "all"),
                "--ckpt_path",
                str(ckpt),
            ]
        )
        assert cli.datamodule.vocab.to_dict() == vocab
        assert [t.size for t in cli.model.tasks] == [3, len(vocab["speaker"])]
        written = _predictions(cli)
        assert [w["path"] for w in written] == [r["path"] for r in _rows(other)]
        assert {w["emotion"] for w in written} <= set(vocab["emotion"])
        assert {w["speaker"] for w in written} <= set(vocab["speaker"])
        predicted[name] = {w["path"]: (w["emotion"], w["emotion_prob"]) for w in written}
    # the checkpoint's statistics normalise both manifests: the same file, the same prediction
    shared = predicted["no_happy"].keys() & predicted["unlabelled"].keys()
    assert len(shared) >= 8
    assert all(predicted["no_happy"][p] == predicted["unlabelled"][p] for p in shared)


def test_a_label_the_checkpoint_does_not_know_is_a_bad_row(run):
    manifest, logs, ckpt = run
    rows = _rows(manifest)
    for row in rows:
        row["path"] = str(manifest.parent / row["path"])
    changed = set()
    for line, row in enumerate(rows, start=2):
        if row["emotion"] == "sad":
            row["emotion"], _ = "bored", changed.add(line)
    other = _write(logs.parent / "bored.csv", rows)
    with pytest.raises(ManifestError) as err:
        main(["validate", *_args(other, logs), "--ckpt_path", str(ckpt)])
    listed = [line for line in changed if f"line {line}: " in str(err.value)]
    assert listed and "emotion label 'bored' is not a class of the model" in str(err.value)
    assert f"{len(listed)} bad row(s)" in str(err.value)  # and no other row
    with pytest.warns(UserWarning, match=rf"skipped {len(listed)} bad row\(s\)"):
        cli = main(
            [
                "validate",
                *_args(other, logs, "--data.init_args.on_error", "skip"),
                "--ckpt_path",
                str(ckpt),
            ]
        )
    assert cli.datamodule.vocab.names["emotion"] == ["happy", "neutral", "sad"]

    # the same through a Trainer, where the vocabulary arrives after setup (load_state_dict)
    data = AudioFeatureDataModule(
        str(other), adversarial=["speaker"], n_mels=16, split="speaker_disjoint",
        val_fraction=0.2, test_fraction=0.2, heldout_fraction=0.25, progress=False,
    )  # fmt: skip
    assert data.vocab.names["emotion"] == ["bored", "happy", "neutral"]  # its own, for now
    model = MultiTaskModule.load_from_checkpoint(ckpt)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ManifestError, match="emotion label 'bored' is not a class of the model"):
        trainer.validate(model, datamodule=data, ckpt_path=ckpt)


def test_probe_a_whole_utterance_audio_run(run, capsys):
    _, _, ckpt = run
    main(["probe", "--ckpt_path", str(ckpt), "--n_boot", "20"])
    out = capsys.readouterr().out
    assert "speaker  linear" in out and "speaker  mlp" in out
