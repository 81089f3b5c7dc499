"""MobileNet-V2 encoder and classifier with torchvision's exact module names (Sandler et al.,
"MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018).

Written here (no torchvision dependency) so that a torchvision state dict (``features.0.0.weight``,
``features.1.conv.0.0.weight``, ..., ``classifier.1.weight``) loads as is. finecut never
downloads weights: pass the path of a file you fetched yourself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from finecut.encoders._common import (
    STRIDES,
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

__all__ = [
    "ConvBNReLU6",
    "InvertedResidual",
    "MobileNetV2Classifier",
    "MobileNetV2Encoder",
    "mobilenet_v2",
    "mobilenet_v2_classifier",
]

# (expand ratio t, output channels c, blocks n, stride of the first block s): torchvision's table.
MOBILENET_V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
NUM_CLASSES = 1000
# ``features[i]`` giving each returned map: the last block at strides 2, 4, 8, 16, 32.
FEATURE_INDICES: tuple[int, ...] = (1, 3, 6, 13, 17)
# Keys of a torchvision state dict that the encoder (features 0..17) has no use for.
HEAD_KEYS: tuple[str, ...] = (
    "features.18.0.weight",
    "features.18.1.weight",
    "features.18.1.bias",
    "features.18.1.running_mean",
    "features.18.1.running_var",
    "features.18.1.num_batches_tracked",
    "classifier.1.weight",
    "classifier.1.bias",
)
STEM_KEY = "features.0.0.weight"
_GET_WEIGHTS = (
    "finecut never downloads weights. Get torchvision's ImageNet file yourself, e.g. "
    "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth (or, with torchvision, "
    "torch.save(torchvision.models.mobilenet_v2(weights='IMAGENET1K_V1').state_dict(), path)), "
    "and pass weights_path=<that file>"
)


class ConvBNReLU6(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: children ``0`` conv (no bias), ``1`` BN, ``2`` ReLU6.

    Shape:
        - input: (B, in_ch, H, W)
        - output: (B, out_ch, ceil(H / stride), ceil(W / stride))
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """torchvision's inverted residual: ``conv`` = [1x1 expand ConvBNReLU6 (if t != 1),
    3x3 depthwise ConvBNReLU6 (carries the stride), 1x1 linear conv, BN], plus the input when
    the shape is unchanged.

    Shape:
        - input: (B, in_ch, H, W)
        - output: (B, out_ch, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _build_features(in_channels: int, with_head: bool) -> nn.Sequential:
    """``features[0]`` stem, ``[1..17]`` inverted residuals, ``[18]`` (head) 1x1 conv to 1280."""
    layers: list[nn.Module] = [ConvBNReLU6(in_channels, STEM_CHANNELS, stride=2)]
    ch = STEM_CHANNELS
    for t, c, n, s in MOBILENET_V2_SETTING:
        for i in range(n):
            layers.append(InvertedResidual(ch, c, s if i == 0 else 1, t))
            ch = c
    if with_head:
        layers.append(ConvBNReLU6(ch, LAST_CHANNELS, kernel=1))
    return nn.Sequential(*layers)


class MobileNetV2Encoder(Encoder):
    """MobileNet-V2 as an encoder of the finecut contract (see :mod:`finecut.encoders`).

    Structure (torchvision names): ``features[0]`` is the stem (3x3 stride-2 conv to 32),
    ``features[1..17]`` the inverted residual blocks. The returned maps are the outputs of
    ``features[1]`` (stride 2, 16 ch), ``features[3]`` (4, 24), ``features[6]`` (8, 32),
    ``features[13]`` (16, 96) and ``features[17]`` (32, 320). Stride-2 convs: ``features.0.0``
    and ``features.{2,4,7,14}.conv.1.0`` (the depthwise convs; :meth:`downsampling_layers`).

    Input normalisation (internal, RGB channels): torchvision's ImageNet mean / std.

    Shape:
        - input: (B, in_channels, H, W), RGB in [0, 1] first
        - output: 5 maps (B, out_channels[i], ceil(H / s), ceil(W / s)), s = 2, 4, 8, 16, 32
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        check_in_channels(in_channels)
        self.in_channels = in_channels
        self.strides = STRIDES
        self.features = _build_features(in_channels, with_head=False)
        self.out_channels = tuple(self.features[i].conv[-1].num_features for i in FEATURE_INDICES)
        init_weights(self)
        zero_extra_input_channels(self.features[0][0])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        x = normalize_rgb(x, TORCHVISION_MEAN, TORCHVISION_STD)
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in FEATURE_INDICES:
                maps.append(x)
        return maps


class MobileNetV2Classifier(nn.Module):
    """torchvision's MobileNet-V2 ImageNet classifier, same keys (3,504,872 parameters):
    ``features[0..18]``, global average pooling, ``classifier`` = [Dropout(0.2), Linear(1280,
    1000)]. Normalises its RGB input internally like the encoder.

    Shape:
        - input: (B, in_channels, H, W), RGB in [0, 1] first
        - output: (B, 1000) logits
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        check_in_channels(in_channels)
        self.in_channels = in_channels
        self.features = _build_features(in_channels, with_head=True)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(LAST_CHANNELS, NUM_CLASSES))
        init_weights(self)
        zero_extra_input_channels(self.features[0][0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, type(self).__name__)
        x = self.features(normalize_rgb(x, TORCHVISION_MEAN, TORCHVISION_STD))
        return self.classifier(x.mean(dim=(2, 3)))


def mobilenet_v2(
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    in_channels: int = 3,
) -> MobileNetV2Encoder:
    """MobileNet-V2 encoder: 5 maps at strides 2..32 with 16, 24, 32, 96, 320 channels.

    Args:
        pretrained: require weights; finecut never downloads, so this needs ``weights_path``.
        weights_path: a torchvision-format state dict (``.pth`` or ``.safetensors``), loaded
            whenever given; its ``features.18`` / ``classifier`` keys are ignored.
        in_channels: input channels; channels beyond RGB are not normalised and their stem
            weights start at zero (also when loading a 3-channel file).

    Raises:
        WeightsError: ``pretrained`` without a path, or a missing / corrupt / mismatched file
            (the message names the missing and unexpected keys).
    """
    state = read_optional_weights(
        pretrained, weights_path, name="mobilenet_v2", how_to_get=_GET_WEIGHTS
    )
    with skeleton_if(state is not None):
        model = MobileNetV2Encoder(in_channels)
    if state is not None:
        load_checked(model, state, stem_key=STEM_KEY, ignored=HEAD_KEYS, source=str(weights_path))
    return model


def mobilenet_v2_classifier(
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    in_channels: int = 3,
) -> MobileNetV2Classifier:
    """torchvision's MobileNet-V2 ImageNet classifier (1000 logits); arguments as
    :func:`mobilenet_v2`, but the file must also hold the ``features.18`` and ``classifier`` keys.
    """
    state = read_optional_weights(
        pretrained, weights_path, name="mobilenet_v2_classifier", how_to_get=_GET_WEIGHTS
    )
    with skeleton_if(state is not None):
        model = MobileNetV2Classifier(in_channels)
    if state is not None:
        load_checked(model, state, stem_key=STEM_KEY, source=str(weights_path))
    return model
