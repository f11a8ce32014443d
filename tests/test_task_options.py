"""Per-task loss and head options: class_weights, label_smoothing, head_hidden, head_depth."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from mtl_lightning.losses import (
    ClassWeights,
    balanced_class_weights,
    balanced_pos_weight,
    task_loss,
)
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.nn.heads import MLPHead, task_heads
from mtl_lightning.tasks import TaskSpec
from tests._multilabel_helpers import NAN, TinyData, TinyTrunk, tiny_trainer

OLD_KEYS = ["name", "size", "kind", "role", "weight", "adversary", "only_when"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"class_weights": [1.0, 2.0]},
            r"task 'a': class_weights must be 'balanced' or a list of 3",
        ),
        (
            {"class_weights": [1.0, 0.0, 2.0]},
            r"task 'a': class_weights must be finite and > 0; entry 1",
        ),
        ({"class_weights": "equal"}, r"task 'a': class_weights must be 'balanced' or a list"),
        (
            {"class_weights": "balanced", "kind": "regression"},
            r"task 'a': class_weights .* regression",
        ),
        (
            {"class_weights": "balanced", "role": "adversarial"},
            r"task 'a': class_weights .* adversarial",
        ),
        ({"label_smoothing": 1.0}, r"task 'a': label_smoothing must be in \[0, 1\), got 1.0"),
        ({"label_smoothing": -0.1}, r"task 'a': label_smoothing must be in \[0, 1\)"),
        (
            {"label_smoothing": 0.1, "kind": "multilabel"},
            r"task 'a': label_smoothing .* multilabel",
        ),
        ({"head_hidden": -1}, r"task 'a': head_hidden must be an integer >= 0 or None, got -1"),
        ({"head_depth": 1.5}, r"task 'a': head_depth must be an integer >= 0 or None"),
        ({"head_depth": 0, "head_hidden": 8}, r"task 'a': head_depth 0 is a linear head"),
        ({"head_depth": 2, "head_hidden": 0}, r"task 'a': head_depth 2 needs a hidden width > 0"),
    ],
)
def test_options_are_validated_naming_task_and_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskSpec("a", 3, **kwargs)


def test_defaults_keep_the_old_dict_and_old_dicts_still_load():
    spec = TaskSpec("a", 3)
    assert list(spec.to_dict()) == OLD_KEYS
    old = {k: v for k, v in spec.to_dict().items()}
    assert TaskSpec(**old) == spec
    custom = TaskSpec("a", 3, class_weights=[1, 2, 3], label_smoothing=0.1, head_depth=2)
    assert TaskSpec(**custom.to_dict()) == custom
    assert custom.to_dict()["class_weights"] == [1.0, 2.0, 3.0]


def test_class_weights_and_label_smoothing_are_torchs_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 2, -100, 1])
    mask = y != -100
    w = torch.tensor([0.5, 2.0, 1.5])
    spec = TaskSpec("a", 3, class_weights=w.tolist(), label_smoothing=0.2)
    expected = F.cross_entropy(logits, y, weight=w, label_smoothing=0.2)  # ignore_index=-100
    assert float(task_loss(spec, logits, y, mask)) == pytest.approx(float(expected), rel=1e-6)
    # weighted mean by hand: sum_i w_{y_i} * nll_i / sum_i w_{y_i}
    nll = -logits.log_softmax(-1)[mask].gather(1, y[mask, None]).squeeze(1)
    hand = (w[y[mask]] * nll).sum() / w[y[mask]].sum()
    weighted = TaskSpec("a", 3, class_weights=w.tolist())
    assert float(task_loss(weighted, logits, y, mask)) == pytest.approx(float(hand), rel=1e-6)


def test_balanced_weights_from_counts_and_errors_name_the_class():
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2, -100])  # n=7, K=3, counts 4, 1, 2
    expected = [7 / (3 * 4), 7 / (3 * 1), 7 / (3 * 2)]
    assert balanced_class_weights(TaskSpec("a", 3), labels).tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"task 'a': .*cannot weight class 2: it never occurs"):
        balanced_class_weights(TaskSpec("a", 3), torch.tensor([0, 1, 1]))
    tags = TaskSpec("tags", 2, kind="multilabel")
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [NAN, NAN]])
    assert balanced_pos_weight(tags, y).tolist() == pytest.approx([2 / 2, 3 / 1])
    with pytest.raises(ValueError, match=r"task 'tags': .*label 1: it is never positive"):
        balanced_pos_weight(tags, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"task 'tags': .*label 0: it is never negative"):
        balanced_pos_weight(tags, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))


def test_balanced_needs_training_labels_and_is_an_error_before_it_is_resolved():
    tasks = [TaskSpec("a", 3, class_weights="balanced")]
    weights = ClassWeights(tasks)
    with pytest.raises(ValueError, match=r"task 'a': class_weights='balanced' needs the training"):
        weights.resolve_from(SimpleNamespace(datamodule=object()))
    with pytest.raises(ValueError, match=r"task 'a': class_weights='balanced' are not resolved"):
        task_loss(tasks[0], torch.zeros(2, 3), torch.tensor([0, 1]))


def test_balanced_weights_resolve_at_fit_start_and_come_back_from_the_checkpoint(tmp_path):
    tasks = [
        TaskSpec("cls", 3, class_weights="balanced", label_smoothing=0.1),
        TaskSpec("tags", 3, kind="multilabel", class_weights="balanced"),
    ]
    dm = TinyData(tasks)
    model = MultiTaskModule(dm.tasks, trunk=TinyTrunk(), head_hidden=8)
    assert torch.isnan(model.class_weights.get("cls")).all()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", filename="last")
    tiny_trainer(tmp_path, enable_checkpointing=True, callbacks=[ckpt]).fit(model, dm)
    train = dm.train_set.targets
    cls_expected = balanced_class_weights(tasks[0], train["cls"]).float()
    tags_expected = balanced_pos_weight(tasks[1], train["tags"]).float()
    torch.testing.assert_close(model.class_weights.get("cls"), cls_expected)
    torch.testing.assert_close(model.class_weights.get("tags"), tags_expected)
    assert model.tasks[0].class_weights == tuple(cls_expected.tolist())  # synced into the spec
    assert model.hparams["tasks"][0]["class_weights"] == "balanced"  # the config is unchanged

    # the loss the module trains with is torch's weighted, smoothed cross-entropy
    batch = next(iter(dm.val_dataloader()))
    step = model.forward_losses(batch, 0)
    expected = F.cross_entropy(
        step.outputs["cls"], batch["targets"]["cls"], weight=cls_expected, label_smoothing=0.1
    )
    assert float(step.losses["cls"]) == pytest.approx(float(expected), rel=1e-5)

    # other training labels: validate with the checkpoint uses the saved weights, not new ones
    other = TinyData(tasks, seed=7)
    fresh = MultiTaskModule(other.tasks, trunk=TinyTrunk(), head_hidden=8)
    tiny_trainer(tmp_path).validate(fresh, other, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    torch.testing.assert_close(fresh.class_weights.get("cls"), cls_expected)
    resumed = MultiTaskModule(other.tasks, trunk=TinyTrunk(), head_hidden=8)
    resume = tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=0)
    resume.fit(resumed, other, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert resume.current_epoch == 2  # it did resume and train
    torch.testing.assert_close(resumed.class_weights.get("cls"), cls_expected)
    assert resumed.tasks[0].class_weights == tuple(cls_expected.tolist())
    loaded = MultiTaskModule.load_from_checkpoint(
        tmp_path / "ck" / "last.ckpt", trunk=TinyTrunk(), weights_only=True
    )
    assert loaded.tasks[1].class_weights == tuple(tags_expected.tolist())


def test_head_options_per_task_and_default_heads_unchanged():
    tasks = [
        TaskSpec("a", 3),
        TaskSpec("b", 2, head_hidden=4, head_depth=3),
        TaskSpec("c", 2, head_depth=0),
        TaskSpec("d", 2, head_hidden=5),
    ]
    heads = task_heads(tasks, width=16, hidden=8)
    shapes = {n: [tuple(p.shape) for p in h.parameters()] for n, h in heads.items()}
    assert shapes["a"] == [(8, 16), (8,), (3, 8), (3,)]
    assert shapes["b"] == [(4, 16), (4,), (4, 4), (4,), (4, 4), (4,), (2, 4), (2,)]
    assert shapes["c"] == [(2, 16), (2,)]
    assert shapes["d"] == [(5, 16), (5,), (2, 5), (2,)]
    # the default head keeps its state-dict keys (old checkpoints load)
    assert list(MLPHead(16, 3, 8).state_dict()) == [
        "net.0.weight",
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
    ]
    assert list(MLPHead(16, 3, 0).state_dict()) == ["net.weight", "net.bias"]
    with pytest.raises(ValueError, match=r"task 'e': head_hidden None \(model head_hidden 0\)"):
        task_heads([TaskSpec("e", 2, head_depth=2)], width=16, hidden=0)


def test_head_options_on_an_attacker_ensemble_task_are_an_error():
    from mtl_lightning.adversary import AdversaryConfig

    tasks = [TaskSpec("e", 2), TaskSpec("s", 3, role="adversarial", head_hidden=4)]
    with pytest.raises(ValueError, match=r"task 's': head_hidden/head_depth .* attacker ensemble"):
        MultiTaskModule(tasks, trunk=TinyTrunk(), adversary_config=AdversaryConfig())
    MultiTaskModule(tasks, trunk=TinyTrunk())  # a reversal head: the options shape it
