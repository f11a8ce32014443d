"""TorchvisionTrunk: built offline, local weights, out_features, freeze."""

import pytest
import torch
from torch import nn

torchvision = pytest.importorskip("torchvision")

from mtl_lightning.nn import TorchvisionTrunk  # noqa: E402
from mtl_lightning.nn.vision import load_backbone_weights  # noqa: E402


def test_built_without_downloading(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    for name, width in [("resnet18", 512), ("mobilenet_v3_small", 1024)]:
        trunk = TorchvisionTrunk(name)
        assert trunk.out_features == width
        assert trunk.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, width)
    projected = TorchvisionTrunk("resnet18", out_features=24).eval()
    assert projected(torch.zeros(1, 3, 32, 32)).shape == (1, 24)


def test_weights_path_loads_every_backbone_tensor_and_rejects_other_weights(tmp_path):
    source = torchvision.models.resnet18(num_classes=7)  # another classifier size: left out
    with torch.no_grad():
        source.layer1[0].bn1.running_mean.add_(0.5)  # buffers are loaded too
    path = tmp_path / "r18.pt"
    torch.save(source.state_dict(), path)
    trunk = TorchvisionTrunk("resnet18", weights_path=str(path))
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    loaded = {k.removeprefix("backbone."): v for k, v in trunk.state_dict().items()}
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    torch.save({"state_dict": source.state_dict()}, tmp_path / "wrapped.pt")
    TorchvisionTrunk(
        "resnet18", weights_path=str(tmp_path / "wrapped.pt")
    )  # a checkpoint-like dict
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ValueError, match=r"r34.pt: not weights of ResNet: 0 missing .* unexpected"):
        TorchvisionTrunk("resnet18", weights_path=str(tmp_path / "r34.pt"))
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pt")
    with pytest.raises(ValueError, match="r50.pt: not weights of ResNet"):
        load_backbone_weights(torchvision.models.resnet18(), tmp_path / "r50.pt")


def test_freeze_keeps_the_backbone_and_its_batchnorm_statistics_fixed():
    trunk = TorchvisionTrunk("resnet18", freeze=True, out_features=8)
    before = {k: v.clone() for k, v in trunk.backbone.state_dict().items()}
    trunk.train()
    assert not trunk.backbone.training and trunk.project.training
    optimizer = torch.optim.SGD([p for p in trunk.parameters() if p.requires_grad], lr=0.1)
    trunk(torch.randn(4, 3, 32, 32)).square().sum().backward()
    optimizer.step()
    assert all(p.grad is None for p in trunk.backbone.parameters())
    for key, value in trunk.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights and running statistics
    assert trunk.trainable_parameters() == 512 * 8 + 8
    assert TorchvisionTrunk("resnet18", freeze=False).trainable_parameters() > 11_000_000


def test_errors_name_the_model_and_the_fix():
    with pytest.raises(ValueError, match="unknown torchvision classification model 'resnet19'"):
        TorchvisionTrunk("resnet19")
    with pytest.raises(ValueError, match="no linear classifier"):
        TorchvisionTrunk("squeezenet1_0")
    with pytest.raises(
        ValueError, match=r"expects images \[batch, 3, height, width\], got \[2, 1, 32, 32\]"
    ):
        TorchvisionTrunk("resnet18")(torch.zeros(2, 1, 32, 32))


def test_works_as_the_trunk_of_a_multitask_module():
    from mtl_lightning import MultiTaskModule
    from mtl_lightning.tasks import TaskSpec

    model = MultiTaskModule(
        tasks=[TaskSpec("seed", 2), TaskSpec("quality", 3, only_when={"seed": [1]})],
        trunk=TorchvisionTrunk("resnet18", out_features=16),
    )
    out = model(torch.zeros(2, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"seed": (2, 2), "quality": (2, 3)}
    assert isinstance(model.trunk.backbone.fc, nn.Identity)
