"""Lookahead affinity: hand-computed values, aligned/opposed gradients, no side effects."""

import pytest
import torch
from torch import nn

from mtl_lightning import MultiTaskModule, TaskSpec
from mtl_lightning.affinity import affinity_from_losses, cosine_matrix
from mtl_lightning.callbacks import TaskAffinity
from mtl_lightning.data import SyntheticTabularDataModule
from mtl_lightning.nn import DenseTrunk


def scalar_model(targets: dict[str, float]) -> tuple[MultiTaskModule, dict]:
    """Trunk w=1 (Linear 1->1), linear heads fixed to 1: task t's loss is (w - y_t)^2 at x=1."""
    tasks = [TaskSpec(n, 1, kind="regression") for n in targets]
    model = MultiTaskModule(tasks, trunk=nn.Linear(1, 1, bias=False), head_hidden=0)
    with torch.no_grad():
        model.trunk.weight.fill_(1.0)
        for head in model.heads.values():
            head.net.weight.fill_(1.0)
            head.net.bias.zero_()
    batch = {
        "features": torch.ones(1, 1),
        "targets": {n: torch.tensor([[y]]) for n, y in targets.items()},
    }
    return model, batch


def test_opposed_gradients_give_negative_affinity_hand_computed():
    # L_a = (w-3)^2 = 4, g_a = -4; L_b = (w+1)^2 = 4, g_b = 4; lr 0.25: w -> 2 (step a), 0 (step b)
    model, batch = scalar_model({"a": 3.0, "b": -1.0})
    z, cos = TaskAffinity().measure(model, batch, lr=0.25)
    expected = torch.tensor([[1 - 1 / 4, 1 - 9 / 4], [1 - 9 / 4, 1 - 1 / 4]])
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(cos, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))


def test_aligned_gradients_give_positive_affinity_hand_computed():
    # L_a = (w-3)^2 = 4, g_a = -4; L_b = (w-2)^2 = 1, g_b = -2; step a: w=2, step b: w=1.5
    model, batch = scalar_model({"a": 3.0, "b": 2.0})
    z, cos = TaskAffinity().measure(model, batch, lr=0.25)
    expected = torch.tensor([[1 - 1 / 4, 1 - 0 / 1], [1 - 2.25 / 4, 1 - 0.25 / 1]])
    torch.testing.assert_close(z, expected)
    assert z[0, 1] > 0 and z[1, 0] > 0
    torch.testing.assert_close(cos, torch.ones(2, 2))


@pytest.mark.parametrize("seed", range(5))
def test_self_affinity_positive_for_small_step_on_convex_problem(seed):
    torch.manual_seed(seed)
    tasks = [TaskSpec(n, 2, kind="regression") for n in ("a", "b", "c")]
    model = MultiTaskModule(tasks, trunk=nn.Linear(6, 4), head_hidden=0)  # convex in the trunk
    batch = {"features": torch.randn(32, 6), "targets": {t.name: torch.randn(32, 2) for t in tasks}}
    z, _ = TaskAffinity().measure(model, batch, lr=1e-3)
    assert (z.diagonal() > 0).all()


def test_affinity_from_losses_rejects_bad_shapes():
    with pytest.raises(ValueError):
        affinity_from_losses(torch.ones(2), torch.ones(3, 3))


def test_cosine_matrix_matches_pairwise_cosine():
    g = torch.randn(4, 10)
    expected = torch.nn.functional.cosine_similarity(g[:, None], g[None, :], dim=-1)
    torch.testing.assert_close(cosine_matrix(g), expected)


def test_lookahead_leaves_parameters_buffers_optimizer_and_rng_bit_identical():
    torch.manual_seed(0)
    dm = SyntheticTabularDataModule(n_train=64, n_eval=16)
    dm.setup()
    model = MultiTaskModule(dm.tasks, trunk=DenseTrunk(120, dropout=0.3), head_hidden=8)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = next(iter(dm.train_dataloader()))
    model.shared_step(batch, 0, "train").backward()  # populate .grad, BN stats, Adam state
    optimizer.step()
    params = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    opt_state = {k: {n: t.clone() for n, t in s.items()} for k, s in optimizer.state.items()}
    rng = torch.get_rng_state()
    z, _ = TaskAffinity().measure(model, batch, lr=0.1)
    assert z.shape == (5, 5) and torch.isfinite(z).all()
    for k, v in model.state_dict().items():  # parameters and BN running stats / counters
        assert torch.equal(v, params[k]), k
    for k, p in model.named_parameters():
        assert torch.equal(p.grad, grads[k]), k
    for k, s in optimizer.state.items():
        for n, t in s.items():
            assert torch.equal(t, opt_state[k][n])
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training


def test_missing_regression_labels_are_left_out_hand_computed():
    # the opposed case above, with a second sample whose 'a' label is missing (NaN): a's loss is
    # over sample 0 only, b's over both (identical) samples, so the matrix is the one above
    model, batch = scalar_model({"a": 3.0, "b": -1.0})
    batch["features"] = torch.ones(2, 1)
    batch["targets"] = {"a": torch.tensor([[3.0], [float("nan")]]), "b": torch.tensor([[-1.0]] * 2)}
    z, cos = TaskAffinity().measure(model, batch, lr=0.25)
    expected = torch.tensor([[1 - 1 / 4, 1 - 9 / 4], [1 - 9 / 4, 1 - 1 / 4]])
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(cos, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))


def test_task_without_labels_in_the_batch_gives_unmeasured_pairs():
    model, batch = scalar_model({"a": 3.0, "b": 2.0, "c": 0.0})
    batch["targets"]["c"] = torch.tensor([[float("nan")]])
    z, cos, measured = TaskAffinity().measure_pairs(model, batch, lr=0.25)
    assert measured.tolist() == [[True, True, False], [True, True, False], [False, False, False]]
    expected = torch.tensor([[1 - 1 / 4, 1 - 0 / 1], [1 - 2.25 / 4, 1 - 0.25 / 1]])
    torch.testing.assert_close(z[:2, :2], expected)  # the a/b pairs are unaffected by c
    masked, _ = TaskAffinity().measure(model, batch, lr=0.25)
    assert masked[:, 2].isnan().all() and masked[2].isnan().all()


def test_conditional_task_ignores_labels_outside_its_condition():
    torch.manual_seed(0)
    tasks = [TaskSpec("seed", 2), TaskSpec("grade", 3, only_when={"seed": [1]}), TaskSpec("c", 2)]
    model = MultiTaskModule(tasks, trunk=DenseTrunk(6, divisors=(1,), dropout=0.0), head_hidden=0)
    seed = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
    batch = {
        "features": torch.randn(8, 6),
        "targets": {
            "seed": seed,
            "grade": torch.randint(0, 3, (8,)),
            "c": torch.randint(0, 2, (8,)),
        },
    }
    z, cos = TaskAffinity().measure(model, batch, lr=0.5)
    # other (valid) grade labels on the samples that are not seeds must change nothing
    other = {**batch["targets"], "grade": torch.where(seed == 1, batch["targets"]["grade"], 2)}
    z2, cos2 = TaskAffinity().measure(model, {**batch, "targets": other}, lr=0.5)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z2, z, rtol=0, atol=0)
    torch.testing.assert_close(cos2, cos, rtol=0, atol=0)
