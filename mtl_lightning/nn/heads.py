"""Task heads: plain ``nn.Module``s mapping the shared embedding to a task's outputs."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor, nn

from mtl_lightning.tasks import TaskSpec


class MLPHead(nn.Module):
    """``Linear(in, hidden) -> ReLU -> ... -> Linear(hidden, out)`` with ``depth`` hidden layers.

    ``depth=None`` keeps the classic head: one hidden layer, or a linear head when
    ``hidden=0``; ``depth=0`` is a linear head.

    Raises:
        ValueError: for a negative ``hidden`` or ``depth``, or ``depth > 0`` with ``hidden=0``.

    Example:
        >>> import torch
        >>> MLPHead(128, 5, hidden=64)(torch.zeros(2, 128)).shape
        torch.Size([2, 5])
        >>> [type(m).__name__ for m in MLPHead(8, 2, hidden=4, depth=2).net]
        ['Linear', 'ReLU', 'Linear', 'ReLU', 'Linear']
    """

    def __init__(
        self, in_features: int, out_features: int, hidden: int = 64, depth: int | None = None
    ) -> None:
        super().__init__()
        depth = (1 if hidden > 0 else 0) if depth is None else depth
        if hidden < 0 or depth < 0 or (depth > 0 and hidden == 0):
            raise ValueError(
                f"MLPHead: hidden must be >= 0 and depth >= 0, and depth > 0 needs hidden > 0; "
                f"got hidden {hidden}, depth {depth}"
            )
        if depth == 0:
            self.net: nn.Module = nn.Linear(in_features, out_features)
            return
        layers: list[nn.Module] = [nn.Linear(in_features, hidden), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def task_heads(
    tasks: Sequence[TaskSpec], width: int, hidden: int, skip: Collection[str] = ()
) -> nn.ModuleDict:
    """One :class:`MLPHead` per task (but those in ``skip``), with the task's ``head_hidden``
    and ``head_depth`` where set, else the model's ``hidden`` and the classic depth.

    Raises:
        ValueError: naming the task when its options cannot make a head, or when a task in
            ``skip`` (an attacker ensemble's) sets them.

    Example:
        >>> heads = task_heads([TaskSpec("a", 3), TaskSpec("b", 2, head_depth=0)], 16, 8)
        >>> type(heads["a"].net).__name__, type(heads["b"].net).__name__
        ('Sequential', 'Linear')
    """
    heads = nn.ModuleDict()
    for t in tasks:
        if t.name in skip:
            if t.head_hidden is not None or t.head_depth is not None:
                raise ValueError(
                    f"task {t.name!r}: head_hidden/head_depth shape a task's MLP head, but this "
                    "task is trained by an attacker ensemble (its AdversaryConfig sets the "
                    "attackers' widths); remove them"
                )
            continue
        task_hidden = hidden if t.head_hidden is None else t.head_hidden
        try:
            heads[t.name] = MLPHead(width, t.size, task_hidden, t.head_depth)
        except ValueError as error:
            raise ValueError(
                f"task {t.name!r}: head_hidden {t.head_hidden} (model head_hidden {hidden}), "
                f"head_depth {t.head_depth}: {error}"
            ) from None
    return heads


def decode(task: TaskSpec, output: Tensor) -> dict[str, Tensor]:
    """A head's output as predictions: ``pred`` (class index; 0/1 per label; the regression
    output) and, for classes and labels, ``prob`` (softmax; sigmoid per label).

    Example:
        >>> decode(TaskSpec("tags", 2, kind="multilabel"), torch.tensor([[2.0, -1.0]]))["pred"]
        tensor([[1, 0]])
    """
    if task.is_classification:
        return {"pred": output.argmax(-1), "prob": output.softmax(-1)}
    if task.is_multilabel:
        return {"pred": (output > 0).long(), "prob": torch.sigmoid(output)}
    return {"pred": output}
