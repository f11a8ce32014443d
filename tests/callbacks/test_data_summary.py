"""The data summary printed at the start of fit: sizes, classes, chance, labelled, speakers."""

from __future__ import annotations

import torch

from mtl_lightning import TaskSpec
from mtl_lightning.callbacks.data_summary import describe_data
from mtl_lightning.data.normalize import FeatureNorm
from mtl_lightning.data.utterances import UtteranceDataset


def _utterances(speakers: list[str], emotion: list[int]) -> UtteranceDataset:
    n = len(speakers)
    return UtteranceDataset(
        [torch.zeros(4, 5)] * n, {"emotion": torch.tensor(emotion), "speaker": torch.zeros(n,
        dtype=torch.long)}, FeatureNorm("none"), speakers, list(range(n)),
    )  # fmt: skip


def test_recordings_show_speakers_per_split_and_conditions_count_labels():
    class Corpus:
        train_set = _utterances(["s1", "s1", "s2"], [0, 1, -100])
        val_set = _utterances(["s3"], [1])

    tasks = [TaskSpec("emotion", 2), TaskSpec("speaker", 3, role="adversarial")]
    text = describe_data(Corpus(), tasks)
    assert text.splitlines()[0] == "Data (Corpus): train 3, val 1 samples"
    assert (
        "emotion  classification        2   0.500  2/1" in text
    )  # the missing label is not counted
    assert "speaker  classification        3   0.333  3/1" in text
    assert text.splitlines()[-1] == "speakers: train 2, val 1"


def test_a_dataset_without_label_tensors_shows_a_question_mark():
    class Streamed:
        train_set = [0, 1, 2]

    assert describe_data(Streamed(), [TaskSpec("a", 2)]).splitlines()[-1].endswith("  ?")
