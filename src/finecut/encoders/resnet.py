"""ResNet-50 encoder and classifier with torchvision's exact module names (He et al., "Deep
Residual Learning for Image Recognition", CVPR 2016; torchvision's "v1.5" bottleneck, stride on
the 3x3 conv; optional dilation as in DeepLab, Chen et al., TPAMI 2018).

Written here (no torchvision dependency) so that a torchvision state dict (``conv1.weight``,
``bn1.*``, ``layer1.0.conv1.weight``, ..., ``fc.weight``) loads as is. finecut never downloads
weights: pass the path of a file you fetched yourself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from finecut.encoders._common import (
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    Encoder,
    check_in_channels,
    check_input,
    init_weights,
    load_checked,
    normalize_rgb,
    read_optional_weights,
    skeleton_if,
    zero_extra_input_channels,
)

__all__ = ["Bottleneck", "ResNet50Classifier", "ResNet50Encoder", "resnet50", "resnet50_classifier"]

EXPANSION = 4
# (bottleneck width, blocks) of layer1..layer4.
RESNET50_LAYERS: tuple[tuple[int, int], ...] = ((64, 3), (128, 4), (256, 6), (512, 3))
NUM_CLASSES = 1000
HEAD_KEYS: tuple[str, ...] = ("fc.weight", "fc.bias")
STEM_KEY = "conv1.weight"
_GET_WEIGHTS = (
    "finecut never downloads weights. Get torchvision's ImageNet file yourself, e.g. "
    "https://download.pytorch.org/models/resnet50-11ad3fa6.pth (IMAGENET1K_V2) or "
    "resnet50-0676ba61.pth (V1) (or, with torchvision, "
    "torch.save(torchvision.models.resnet50(weights='IMAGENET1K_V2').state_dict(), path)), "
    "and pass weights_path=<that file>"
)


class Bottleneck(nn.Module):
    """torchvision's ResNet-v1.5 bottleneck: 1x1 (``conv1``) -> 3x3 with the stride and dilation
    (``conv2``) -> 1x1 to 4x width (``conv3``), each followed by BN (``bn1..3``); ``downsample``
    (1x1 conv with the stride, BN) on the shortcut when the shape changes.

    Shape:
        - input: (B, in_ch, H, W)
        - output: (B, 4 * width, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, in_ch: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_ch = width * EXPANSION
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _build_resnet50(
    module: nn.Module, in_channels: int, replace_stride_with_dilation: tuple[bool, bool, bool]
) -> tuple[int, ...]:
    """Give ``module`` torchvision's ResNet-50 trunk (``conv1``, ``bn1``, ``relu``, ``maxpool``,
    ``layer1..4``) and return the strides of the 5 feature maps."""
    check_in_channels(in_channels)
    dilate = tuple(bool(d) for d in replace_stride_with_dilation)
    if len(dilate) != 3:
        raise ValueError(
            "replace_stride_with_dilation must have 3 entries (layer2, layer3, layer4), "
            f"got {replace_stride_with_dilation!r}"
        )
    module.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    module.bn1 = nn.BatchNorm2d(64)
    module.relu = nn.ReLU(inplace=True)
    module.maxpool = nn.MaxPool2d(3, 2, 1)
    in_ch, stride_so_far, dilation = 64, 4, 1
    strides = [2, 4]
    for i, (width, blocks) in enumerate(RESNET50_LAYERS):
        stride, previous_dilation = (1 if i == 0 else 2), dilation
        if i > 0 and dilate[i - 1]:
            dilation *= stride
            stride = 1
        layer = [Bottleneck(in_ch, width, stride, previous_dilation)]
        in_ch = width * EXPANSION
        layer += [Bottleneck(in_ch, width, 1, dilation) for _ in range(blocks - 1)]
        setattr(module, f"layer{i + 1}", nn.Sequential(*layer))
        if i > 0:
            stride_so_far *= stride
            strides.append(stride_so_far)
    init_weights(module)
    zero_extra_input_channels(module.conv1)
    return tuple(strides)


def _resnet_features(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Run the trunk built by :func:`_build_resnet50` on normalised input; 5 maps."""
    maps = [module.relu(module.bn1(module.conv1(x)))]
    x = module.maxpool(maps[0])
    for layer in (module.layer1, module.layer2, module.layer3, module.layer4):
        x = layer(x)
        maps.append(x)
    return maps


class ResNet50Encoder(Encoder):
    """ResNet-50 as an encoder of the finecut contract (see :mod:`finecut.encoders`).

    Structure (torchvision names): stem ``conv1`` (7x7 stride 2) / ``bn1`` / ``relu``, then
    ``maxpool`` and ``layer1..layer4`` (``nn.Sequential`` of :class:`Bottleneck`). Returned maps:
    the stem's ReLU (stride 2, 64 ch), ``layer1`` (4, 256), ``layer2`` (8, 512), ``layer3``
    (16, 1024), ``layer4`` (32, 2048). With ``replace_stride_with_dilation`` a layer keeps the
    previous stride (its 3x3 convs dilated instead, as torchvision): ``(False, False, True)`` gives
    strides (2, 4, 8, 16, 16), ``(False, True, True)`` gives (2, 4, 8, 8, 8); ``strides`` says so.
    Stride > 1 layers: ``conv1``, ``maxpool``, ``layer{2,3,4}.0.conv2`` and
    ``layer{2,3,4}.0.downsample.0`` (:meth:`downsampling_layers`).

    Input normalisation (internal, RGB channels): torchvision's ImageNet mean / std.

    Shape:
        - input: (B, in_channels, H, W), RGB in [0, 1] first
        - output: 5 maps (B, out_channels[i], ceil(H / s), ceil(W / s)), s = strides[i]
    """

    def __init__(
        self,
        in_channels: int = 3,
        replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False),
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.strides = _build_resnet50(self, in_channels, replace_stride_with_dilation)
        self.out_channels = (64,) + tuple(w * EXPANSION for w, _ in RESNET50_LAYERS)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        return _resnet_features(self, normalize_rgb(x, TORCHVISION_MEAN, TORCHVISION_STD))


class ResNet50Classifier(nn.Module):
    """torchvision's ResNet-50 ImageNet classifier, same keys (25,557,032 parameters): the trunk,
    global average pooling, ``fc`` (2048 -> 1000). Normalises its RGB input internally.

    Shape:
        - input: (B, in_channels, H, W), RGB in [0, 1] first
        - output: (B, 1000) logits
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        _build_resnet50(self, in_channels, (False, False, False))
        self.fc = nn.Linear(RESNET50_LAYERS[-1][0] * EXPANSION, NUM_CLASSES)
        init_weights(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        x = normalize_rgb(x, TORCHVISION_MEAN, TORCHVISION_STD)
        return self.fc(_resnet_features(self, x)[-1].mean(dim=(2, 3)))


def resnet50(
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    in_channels: int = 3,
    replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False),
) -> ResNet50Encoder:
    """ResNet-50 encoder: 5 maps with 64, 256, 512, 1024, 2048 channels at strides 2..32
    (fewer with dilation, see :class:`ResNet50Encoder`).

    Args:
        pretrained: require weights; finecut never downloads, so this needs ``weights_path``.
        weights_path: a torchvision-format state dict (``.pth`` or ``.safetensors``), loaded
            whenever given; its ``fc`` keys are ignored.
        in_channels: input channels; channels beyond RGB are not normalised and their stem
            weights start at zero (also when loading a 3-channel file).
        replace_stride_with_dilation: for layer2, layer3, layer4, whether to replace the stride
            by dilation (torchvision's argument); ``strides`` of the result reflects it.

    Raises:
        WeightsError: ``pretrained`` without a path, or a missing / corrupt / mismatched file
            (the message names the missing and unexpected keys).
    """
    state = read_optional_weights(
        pretrained, weights_path, name="resnet50", how_to_get=_GET_WEIGHTS
    )
    with skeleton_if(state is not None):
        model = ResNet50Encoder(in_channels, replace_stride_with_dilation)
    if state is not None:
        load_checked(model, state, stem_key=STEM_KEY, ignored=HEAD_KEYS, source=str(weights_path))
    return model


def resnet50_classifier(
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    in_channels: int = 3,
) -> ResNet50Classifier:
    """torchvision's ResNet-50 ImageNet classifier (1000 logits); arguments as :func:`resnet50`,
    but the file must also hold the ``fc`` keys."""
    state = read_optional_weights(
        pretrained, weights_path, name="resnet50_classifier", how_to_get=_GET_WEIGHTS
    )
    with skeleton_if(state is not None):
        model = ResNet50Classifier(in_channels)
    if state is not None:
        load_checked(model, state, stem_key=STEM_KEY, source=str(weights_path))
    return model
