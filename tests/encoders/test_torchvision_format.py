"""MobileNet-V2 and ResNet-50 use torchvision's exact state-dict format: known key names and
parameter counts, save / load round trips, and WeightsErrors naming what is wrong."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from finecut import encoders
from finecut.errors import WeightsError

# Key names and shapes as in torchvision.models.mobilenet_v2() / resnet50() state dicts.
MOBILENET_V2_KEYS = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.0.1.running_var": (32,),
    "features.1.conv.0.0.weight": (32, 1, 3, 3),
    "features.1.conv.0.1.bias": (32,),
    "features.1.conv.1.weight": (16, 32, 1, 1),
    "features.1.conv.2.running_mean": (16,),
    "features.2.conv.0.0.weight": (96, 16, 1, 1),
    "features.2.conv.1.0.weight": (96, 1, 3, 3),
    "features.2.conv.2.weight": (24, 96, 1, 1),
    "features.2.conv.3.num_batches_tracked": (),
    "features.17.conv.2.weight": (320, 960, 1, 1),
    "features.18.0.weight": (1280, 320, 1, 1),
    "features.18.1.weight": (1280,),
    "classifier.1.weight": (1000, 1280),
    "classifier.1.bias": (1000,),
}
RESNET50_KEYS = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.running_mean": (64,),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.num_batches_tracked": (),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer3.5.bn3.bias": (1024,),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fc.weight": (1000, 2048),
    "fc.bias": (1000,),
}

# name -> (classifier(**kw), encoder(**kw), known keys, parameters, state-dict entries)
FAMILIES: dict[str, tuple[Callable[..., nn.Module], Callable[..., nn.Module], dict, int, int]] = {
    "mobilenet_v2": (
        encoders.mobilenet_v2_classifier,
        encoders.mobilenet_v2,
        MOBILENET_V2_KEYS,
        3_504_872,
        314,
    ),
    "resnet50": (encoders.resnet50_classifier, encoders.resnet50, RESNET50_KEYS, 25_557_032, 320),
}
STEM_KEY = {"mobilenet_v2": "features.0.0.weight", "resnet50": "conv1.weight"}
ENCODER_PARAMETERS = {"mobilenet_v2": 1_811_712, "resnet50": 23_508_032}


def trained_looking(classifier: nn.Module) -> nn.Module:
    """Randomise BN statistics too, so a round trip that dropped them would show."""
    torch.manual_seed(3)
    with torch.no_grad():
        for m in classifier.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return classifier.eval()


@pytest.fixture(scope="module", params=list(FAMILIES))
def saved(request, tmp_path_factory):
    """(family name, classifier, path of its torchvision-format state dict)."""
    name = request.param
    classifier = trained_looking(FAMILIES[name][0]())
    path = tmp_path_factory.mktemp(name) / f"{name}.pth"
    torch.save(classifier.state_dict(), path)
    return name, classifier, path


def test_keys_and_parameter_counts(saved) -> None:
    name, classifier, _ = saved
    _, make_encoder, known, n_params, n_entries = FAMILIES[name]
    state = classifier.state_dict()
    for key, shape in known.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    assert len(state) == n_entries
    assert sum(p.numel() for p in classifier.parameters()) == n_params
    encoder = make_encoder()
    assert sum(p.numel() for p in encoder.parameters()) == ENCODER_PARAMETERS[name]
    head = ("features.18.", "classifier.", "fc.")
    assert set(encoder.state_dict()) == {k for k in state if not k.startswith(head)}


def test_round_trip(saved) -> None:
    name, classifier, path = saved
    make_classifier, make_encoder = FAMILIES[name][:2]
    x = torch.rand(1, 3, 64, 64)
    reloaded = make_classifier(weights_path=path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), classifier(x))
    encoder = make_encoder(pretrained=True, weights_path=path).eval()  # head keys ignored
    own = encoder.state_dict()
    full = classifier.state_dict()
    for key, value in own.items():
        assert torch.equal(value, full[key]), key
    # a 4-channel encoder loads the 3-channel file and starts out exactly as pretrained
    four = make_encoder(weights_path=path, in_channels=4).eval()
    mask = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        for a, b in zip(encoder(x), four(torch.cat([x, mask], dim=1)), strict=True):
            assert torch.equal(a, b)


def test_safetensors_and_old_checkpoints(saved, tmp_path) -> None:
    name, classifier, _ = saved
    make_classifier = FAMILIES[name][0]
    # torchvision's published files predate BatchNorm's num_batches_tracked counter
    state = {
        k: v.contiguous()
        for k, v in classifier.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        # equal weights; safetensors' buffer alignment may change the last bit of a conv result
        torch.testing.assert_close(make_classifier(weights_path=path).eval()(x), classifier(x))


def test_mismatched_state_dict_names_the_keys(saved, tmp_path) -> None:
    name, classifier, _ = saved
    make_classifier, make_encoder = FAMILIES[name][:2]
    state = classifier.state_dict()
    dropped = sorted(FAMILIES[name][2])[3]
    del state[dropped]
    state["bogus.weight"] = torch.zeros(3)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(
        WeightsError,
        match=rf"missing keys: {dropped}; "
        r"unexpected keys: bogus\.weight",
    ):
        make_classifier(weights_path=path)
    # an encoder-only file lacks the classifier's head
    torch.save(make_encoder().state_dict(), path)
    with pytest.raises(WeightsError, match="missing keys: .*(classifier.1.bias|fc.bias)"):
        make_classifier(weights_path=path)
    state = classifier.state_dict()
    state[STEM_KEY[name]] = torch.zeros(*state[STEM_KEY[name]].shape[:1], 5, 3, 3)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=rf"shape mismatches: {STEM_KEY[name]} \("):
        make_encoder(weights_path=path)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_corrupt_missing_or_foreign_file(name: str, tmp_path) -> None:
    make_encoder = FAMILIES[name][1]
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(WeightsError, match="cannot read weights file .*truncated.pth"):
        make_encoder(weights_path=bad)
    with pytest.raises(WeightsError, match="weights file not found: .*nowhere.pth"):
        make_encoder(weights_path=tmp_path / "nowhere.pth")
    foreign = tmp_path / "list.pth"
    torch.save([1, 2, 3], foreign)
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        make_encoder(weights_path=foreign)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_pretrained_without_path_never_downloads(name: str) -> None:
    make_classifier, make_encoder = FAMILIES[name][:2]
    for make in (make_encoder, make_classifier):
        with pytest.raises(
            WeightsError,
            match=r"\(pretrained=True\) needs weights_path\. "
            r"finecut never downloads weights.*download\.pytorch\.org",
        ):
            make(pretrained=True)
