"""`TorchvisionTrunk`: a torchvision classification backbone as the shared trunk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["TorchvisionTrunk", "load_backbone_weights"]


def _classifier(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of the model's last ``nn.Linear`` (its classifier)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no linear classifier to remove (models whose last "
            "layer is a convolution, e.g. squeezenet, are not supported)"
        )
    return linears[-1]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local weights file (a torchvision ``state_dict``, or ``{"state_dict": ...}``).

    The classifier's weights are left out (it is replaced by the heads), so weights of any
    number of classes fit; every other parameter and buffer must be in the file and nothing
    else may be, or a ``ValueError`` names what is missing and what is unexpected.

    Example:
        >>> import tempfile, torchvision
        >>> net = torchvision.models.resnet18(num_classes=10)
        >>> path = f"{tempfile.mkdtemp()}/r18.pt"; torch.save(net.state_dict(), path)
        >>> fresh = torchvision.models.resnet18(); load_backbone_weights(fresh, path)
        >>> bool(torch.equal(fresh.conv1.weight, net.conv1.weight))
        True
    """
    state: Any = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors), got {type(state)}")
    head, _ = _classifier(model)
    state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes differ: another architecture
        raise ValueError(f"{path}: not weights of {type(model).__name__}: {error}") from None
    missing = [k for k in missing if not k.startswith(f"{head}.")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: not weights of {type(model).__name__}: {len(missing)} missing "
            f"({missing[:3]}), {len(unexpected)} unexpected ({unexpected[:3]})"
        )


class TorchvisionTrunk(nn.Module):
    """A torchvision backbone (e.g. ResNet-18) without its classifier: images -> embedding.

    Built with ``weights=None``, so nothing is downloaded at run time; ``weights_path`` loads
    a local file instead (e.g. ImageNet weights saved once with ``torch.save(
    torchvision.models.resnet18(weights="DEFAULT").state_dict(), "resnet18.pt")``; pair them
    with the datamodule's ``normalize: imagenet``). The classifier (the model's last linear
    layer) is replaced by the identity; ``out_features`` is the width of what it received, or
    of an added linear projection.

    Args:
        name: A torchvision classification model (``torchvision.models.list_models()``).
        weights_path: A local ``state_dict`` file for the backbone (see
            :func:`load_backbone_weights`).
        freeze: Keep the backbone fixed: no gradients, BatchNorm statistics frozen (eval mode
            even while training). Only the projection (if any) and the heads learn.
        out_features: Width of a linear projection after the backbone (``None``: no projection).
        dropout: Dropout before the projection.
        model_kwargs: Passed to the torchvision constructor (e.g. ``{"norm_layer": ...}``).

    Example:
        >>> trunk = TorchvisionTrunk("resnet18")
        >>> trunk.out_features, trunk(torch.zeros(2, 3, 64, 64)).shape
        (512, torch.Size([2, 512]))
        >>> TorchvisionTrunk("resnet18", freeze=True, out_features=32).trainable_parameters()
        16416
    """

    def __init__(
        self,
        name: str = "resnet18",
        weights_path: str | None = None,
        freeze: bool = False,
        out_features: int | None = None,
        dropout: float = 0.0,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        backbone = _build(name, model_kwargs or {})
        if weights_path is not None:
            load_backbone_weights(backbone, weights_path)
        head, classifier = _classifier(backbone)
        width = classifier.in_features
        _replace(backbone, head, nn.Identity())
        first = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
        self.in_channels = first.in_channels if first is not None else None
        self.name, self.freeze = name, freeze
        self.backbone = backbone
        if freeze:
            self.backbone.requires_grad_(False)
        self.project: nn.Module = nn.Identity()
        if out_features is not None:
            self.project = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, out_features))
        self.out_features = out_features if out_features is not None else width

    def train(self, mode: bool = True) -> TorchvisionTrunk:
        super().train(mode)
        if self.freeze:
            self.backbone.eval()  # frozen BatchNorm statistics
        return self

    def trainable_parameters(self) -> int:
        """How many parameters learn (0 for a frozen backbone without projection)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or (self.in_channels is not None and x.shape[1] != self.in_channels):
            raise ValueError(
                f"TorchvisionTrunk({self.name}) expects images [batch, {self.in_channels}, "
                f"height, width], got {list(x.shape)} (a datamodule's channels must match)"
            )
        return self.project(self.backbone(x))


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ValueError(
            f"unknown torchvision classification model {name!r}; e.g. "
            f"{[m for m in known if m.startswith(('resnet', 'mobilenet', 'efficientnet_b0'))]}"
        )
    return torchvision.models.get_model(name, weights=None, **kwargs)
