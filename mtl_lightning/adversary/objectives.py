"""What the trunk minimises against an adversarial task: pure functions of embeddings and logits.

- :func:`reversal_objective`: minus the attackers' cross-entropy (the trunk maximises their loss,
  as gradient reversal does; Ganin & Lempitsky, 2015).
- :func:`confusion_objective`: the cross-entropy between each attacker's prediction and the
  uniform distribution, minus ``log K`` (maximum entropy; Roy & Boddeti, 2019).
- :func:`class_mmd`: a kernel measure of *all* dependence between the embedding and the labels
  (an HSIC with a class kernel; Gretton et al., 2005): no attacker to fool, so nothing lags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def reversal_objective(logits: Tensor, target: Tensor) -> Tensor:
    """``-mean_i CE(logits[i], target)`` over the attackers ``logits`` (``[M, B, K]``).

    Example:
        >>> logits = torch.zeros(2, 4, 3)  # two attackers, uniform predictions
        >>> round(float(reversal_objective(logits, torch.tensor([0, 1, 2, 0]))), 4)
        -1.0986
    """
    m, b, k = logits.shape
    return -F.cross_entropy(logits.reshape(m * b, k), target.repeat(m))


def confusion_objective(logits: Tensor) -> Tensor:
    """``mean_i CE(softmax(logits[i]), uniform) - log K`` over the attackers (``>= 0``).

    Zero exactly when every attacker predicts the uniform distribution for every sample.

    Example:
        >>> round(float(confusion_objective(torch.zeros(2, 4, 3))), 6)
        0.0
        >>> bool(confusion_objective(torch.tensor([[[5.0, 0.0, 0.0]]])) > 0)
        True
    """
    return -torch.log_softmax(logits.float(), dim=-1).mean() - math.log(logits.shape[-1])


def class_mmd(
    embedding: Tensor, target: Tensor, num_classes: int, bandwidths: Sequence[float] = (1.0,)
) -> Tensor:
    """``sum_c p_c MMD^2(P(z | c), P(z))``: how far each class's embeddings sit from the batch's.

    The embedding is standardised per dimension over the batch (as a probe standardises its
    inputs, so shrinking a direction hides nothing), and compared with a Gaussian kernel
    ``exp(-|z_i - z_j|^2 / (b * m))`` averaged over the ``bandwidths`` ``b``, where ``m`` is
    the batch's median squared distance. With a characteristic kernel this is zero only when the
    class-conditional distributions are equal, i.e. the embedding carries no information about
    the class. It is the biased HSIC estimate ``tr(K H L H) / n`` with the label kernel
    ``L_ij = 1[y_i = y_j] / n_{y_i}`` (``n_c``: the batch's samples of class ``c``). Computed in
    float32.

    Example:
        >>> z = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)); y = torch.arange(64) % 4
        >>> leaky = z + 3 * torch.nn.functional.one_hot(y, 8)
        >>> bool(class_mmd(leaky, y, 4) > 2 * class_mmd(z, y, 4))
        True
    """
    z = embedding.float()
    n = z.shape[0]
    if n < 2:
        return z.sum() * 0.0
    z = (z - z.mean(0)) / (z.std(0) + 1e-5)
    d2 = torch.cdist(z, z).pow(2)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
    median = d2.detach()[off_diagonal].median().clamp_min(1e-6)
    kernel = sum(torch.exp(-d2 / (b * median)) for b in bandwidths) / len(bandwidths)
    centred = kernel - kernel.mean(0, keepdim=True) - kernel.mean(1, keepdim=True) + kernel.mean()
    onehot = F.one_hot(target.long(), num_classes).float()  # [n, K]
    counts = onehot.sum(0).clamp_min(1.0)
    # sum_c (1 / (n n_c)) sum_{i, j in c} Kc_ij
    within = (onehot.T @ centred @ onehot).diagonal()  # each class's block sum
    return (within / counts).sum() / n
