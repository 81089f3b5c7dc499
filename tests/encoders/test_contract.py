"""Every encoder honours the contract of finecut.encoders (shapes, strides, channels, gradients,
determinism, zero-initialised extra input channels, input checks)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from finecut import encoders
from finecut.encoders import Encoder

# name -> (constructor(in_channels), expected out_channels, expected strides, stem conv path)
CASES: dict[str, tuple[Callable[[int], Encoder], tuple[int, ...], tuple[int, ...], str]] = {
    "efficientnet_lite0": (
        lambda c: encoders.efficientnet_lite0(pretrained=False, in_channels=c),
        (16, 24, 40, 112, 320),
        (2, 4, 8, 16, 32),
        "stem.conv",
    ),
    "mobilenet_v2": (
        lambda c: encoders.mobilenet_v2(in_channels=c),
        (16, 24, 32, 96, 320),
        (2, 4, 8, 16, 32),
        "features.0.0",
    ),
    "resnet50": (
        lambda c: encoders.resnet50(in_channels=c),
        (64, 256, 512, 1024, 2048),
        (2, 4, 8, 16, 32),
        "conv1",
    ),
    "resnet50_dilated": (
        lambda c: encoders.resnet50(
            in_channels=c, replace_stride_with_dilation=(False, True, True)
        ),
        (64, 256, 512, 1024, 2048),
        (2, 4, 8, 8, 8),
        "conv1",
    ),
}
_BUILT: dict[tuple[str, int], Encoder] = {}


def build(name: str, in_channels: int) -> Encoder:
    """One fresh-initialised model per (name, in_channels) for the whole module (saves time)."""
    key = (name, in_channels)
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = CASES[name][0](in_channels)
    return _BUILT[key]


@pytest.mark.parametrize("in_channels", [3, 4])
@pytest.mark.parametrize("name", list(CASES))
def test_shapes_strides_channels(name: str, in_channels: int) -> None:
    _, channels, strides, _ = CASES[name]
    model = build(name, in_channels).eval()
    assert isinstance(model, Encoder)
    assert model.out_channels == channels
    assert model.strides == strides
    assert model.in_channels == in_channels
    for height, width in [(64, 64), (96, 80), (50, 37)]:
        x = torch.rand(2, in_channels, height, width)
        with torch.no_grad():
            maps = model(x)
        assert isinstance(maps, list) and len(maps) == 5
        for m, c, s in zip(maps, channels, strides, strict=True):
            assert m.shape == (2, c, math.ceil(height / s), math.ceil(width / s)), (height, width)
            assert torch.isfinite(m).all()


@pytest.mark.parametrize("in_channels", [3, 4])
@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "resnet50"])
def test_backward_reaches_every_parameter(name: str, in_channels: int) -> None:
    model = build(name, in_channels).train()
    model.zero_grad()
    torch.manual_seed(1)
    maps = model(torch.rand(2, in_channels, 64, 64))
    # random projections: a plain mean would give exactly zero gradient through train-mode BN
    loss = sum((m * torch.randn_like(m)).sum() for m in maps)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"
    model.zero_grad()
    model.eval()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "resnet50"])
def test_eval_is_deterministic_and_follows_dtype(name: str) -> None:
    model = build(name, 4).eval()
    x = torch.rand(1, 4, 64, 48)
    with torch.no_grad():
        first, second = model(x), model(x)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    double = CASES[name][0](4).double().eval()
    with torch.no_grad():
        maps = double(x.double())
    assert all(m.dtype == torch.float64 for m in maps)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "resnet50"])
def test_extra_channel_starts_with_zero_weight(name: str) -> None:
    stem_path = CASES[name][3]
    model3, model4 = build(name, 3).eval(), build(name, 4).eval()
    stem4 = model4.get_submodule(stem_path).weight
    assert stem4.shape[1] == 4
    assert torch.count_nonzero(stem4[:, 3:]) == 0
    # give the 4-channel model the 3-channel model's weights (its own zero 4th-channel column)
    state = model3.state_dict()
    key = f"{stem_path}.weight"
    state[key] = torch.cat([state[key], stem4[:, 3:].detach()], dim=1)
    twin = CASES[name][0](4).eval()
    twin.load_state_dict(state)
    torch.manual_seed(2)
    rgb = torch.rand(2, 3, 64, 64)
    noise = torch.rand(2, 1, 64, 64) * 2 - 1  # e.g. a coarse mask in [-1, 1]
    with torch.no_grad():
        expected = model3(rgb)
        got = twin(torch.cat([rgb, noise], dim=1))
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_rgb_normalisation_known_answer() -> None:
    """The first map is the documented layers applied to the documented normalisation."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.rand(1, 4, 32, 32)
    rgb, extra = x[:, :3], x[:, 3:]
    with torch.no_grad():
        lite = build("efficientnet_lite0", 4).eval()
        expect = lite.stages[0](lite.stem(torch.cat([(rgb - 0.5) / 0.5, extra], 1)))
        torch.testing.assert_close(lite(x)[0], expect)
        mnv2 = build("mobilenet_v2", 4).eval()
        expect = mnv2.features[1](mnv2.features[0](torch.cat([(rgb - mean) / std, extra], 1)))
        torch.testing.assert_close(mnv2(x)[0], expect)
        r50 = build("resnet50", 4).eval()
        expect = r50.relu(r50.bn1(r50.conv1(torch.cat([(rgb - mean) / std, extra], 1))))
        torch.testing.assert_close(r50(x)[0], expect)
        torch.testing.assert_close(r50(x)[1], r50.layer1(r50.maxpool(expect)))


def test_normalize_rgb_function() -> None:
    x = torch.tensor([0.485, 0.456, 0.406, -0.7]).view(1, 4, 1, 1).expand(2, 4, 3, 5)
    y = encoders.normalize_rgb(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, :3], torch.zeros(2, 3, 3, 5))
    torch.testing.assert_close(y[:, 3:], torch.full((2, 1, 3, 5), -0.7))
    ones = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    three = encoders.normalize_rgb(ones, (0.5,) * 3, (0.5,) * 3)
    assert three.dtype == torch.float64
    torch.testing.assert_close(three, torch.ones(1, 3, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "resnet50"])
def test_input_checks(name: str) -> None:
    model = build(name, 4)
    expected = r"expects input of shape \(B, 4, H, W\).*got \(1, 3, 32, 32\)"
    with pytest.raises(ValueError, match=expected):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        model(torch.rand(4, 32, 32))
    with pytest.raises(ValueError, match="in_channels must be an int >= 3"):
        CASES[name][0](2)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "efficientnet_lite0",
            ["stem.conv"] + [f"stages.{i}.0.depthwise.conv" for i in (1, 2, 3, 5)],
        ),
        ("mobilenet_v2", ["features.0.0"] + [f"features.{i}.conv.1.0" for i in (2, 4, 7, 14)]),
        (
            "resnet50",
            ["conv1", "maxpool"]
            + [f"layer{i}.0.{n}" for i in (2, 3, 4) for n in ("conv2", "downsample.0")],
        ),
        ("resnet50_dilated", ["conv1", "maxpool", "layer2.0.conv2", "layer2.0.downsample.0"]),
    ],
)
def test_downsampling_layers(name: str, expected: list[str]) -> None:
    model = build(name, 3)
    found = model.downsampling_layers()
    assert [n for n, _ in found] == expected
    for qualified, module in found:
        assert model.get_submodule(qualified) is module
        assert module.stride in (2, (2, 2))


def test_strided_conv_is_stride1_conv_subsampled() -> None:
    """What a later stride-1-conv + pooling swap relies on (symmetric-padding encoders): a
    stride-2 conv equals the same weights at stride 1, sampled at even positions."""
    model = build("mobilenet_v2", 3)
    name, conv = model.downsampling_layers()[1]
    assert isinstance(conv, nn.Conv2d)
    x = torch.rand(1, conv.in_channels, 10, 9)
    dense = nn.functional.conv2d(x, conv.weight, None, 1, conv.padding, 1, conv.groups)
    torch.testing.assert_close(conv(x), dense[..., ::2, ::2])


def test_resnet_dilation_follows_torchvision() -> None:
    """torchvision semantics: a dilated layer's first block keeps the previous dilation."""
    model = build("resnet50_dilated", 3)
    conv2 = {
        f"{layer}.{b}": getattr(model, layer)[b].conv2
        for layer in ("layer3", "layer4")
        for b in (0, 1)
    }
    assert {k: (c.stride, c.dilation, c.padding) for k, c in conv2.items()} == {
        "layer3.0": ((1, 1), (1, 1), (1, 1)),
        "layer3.1": ((1, 1), (2, 2), (2, 2)),
        "layer4.0": ((1, 1), (2, 2), (2, 2)),
        "layer4.1": ((1, 1), (4, 4), (4, 4)),
    }
    assert model.layer3[0].downsample[0].stride == (1, 1)
    plain = build("resnet50", 3)
    assert plain.layer4[0].conv2.stride == (2, 2) and plain.layer4[1].conv2.dilation == (1, 1)
