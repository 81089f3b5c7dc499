"""Encoders following one contract: ``forward(x)`` returns the feature maps at strides
2, 4, 8, 16, 32 (a list of 5 tensors) and the module exposes their ``out_channels``.

The contract, in full (every encoder here is an :class:`Encoder`):

- ``forward(x)`` takes ``x`` of shape (B, in_channels, H, W) whose first 3 channels are RGB in
  [0, 1] and returns a list of 5 feature maps; map ``i`` has shape
  (B, out_channels[i], ceil(H / strides[i]), ceil(W / strides[i])). For sides that are multiples
  of 32 the divisions are exact; other sizes work too (ceil division, never an error).
- ``out_channels: tuple[int, ...]`` (5 entries) and ``strides: tuple[int, ...]``, which is
  ``(2, 4, 8, 16, 32)`` (ResNet-50 with ``replace_stride_with_dilation`` says otherwise, e.g.
  ``(2, 4, 8, 16, 16)``), and ``in_channels: int``.
- The encoder normalises the RGB channels itself: EfficientNet-Lite0 ``(x - 0.5) / 0.5``,
  MobileNet-V2 and ResNet-50 torchvision's mean (0.485, 0.456, 0.406) / std (0.229, 0.224,
  0.225). Channels beyond the third (e.g. a coarse mask in [-1, 1] for mask refinement) pass
  through unnormalised, and their stem-conv weights start at zero, so a pretrained network
  starts out exactly as pretrained (also when a 3-channel weight file is loaded).
- No I/O, global state or device moves in ``forward``; it follows the input's device / dtype.
- ``downsampling_layers()`` lists every layer with stride > 1 in forward order as
  ``(qualified name, module)`` (strided convs, and ResNet's max pool). The names work with
  ``get_submodule`` / ``set_submodule`` (torch >= 2.4; or setattr on the parent), so a strided
  conv can be swapped for a stride-1 conv with the same weight followed by a pooling layer.
  MobileNet-V2 and ResNet-50 pad symmetrically (a stride-2 conv equals the stride-1 conv
  sampled at even positions); EfficientNet-Lite0's stride-2 convs are :class:`Conv2dSame`
  (TensorFlow "same" padding, the odd pixel bottom / right, as its weights were trained).
  The module structure is plain attributes: EfficientNet-Lite0 ``stem`` + ``stages[i][j]``
  (MBConv blocks with ``expand`` / ``depthwise`` / ``project``), MobileNet-V2
  ``features[0..17]`` and ResNet-50 ``conv1``, ``maxpool``, ``layer1..4`` (torchvision's names,
  so torchvision state dicts load as is).
- Weight loading never downloads. A missing, corrupt or mismatched weight file raises
  :class:`finecut.errors.WeightsError` naming the missing / unexpected keys.

Constructors (explicit, no registry):

=================================  ==========================  ======================
constructor                        channels                    weights
=================================  ==========================  ======================
``efficientnet_lite0``             16, 24, 40, 112, 320        pip package (default)
``mobilenet_v2``                   16, 24, 32, 96, 320         local torchvision file
``resnet50``                       64, 256, 512, 1024, 2048    local torchvision file
=================================  ==========================  ======================

``*_classifier`` variants give the ImageNet classifiers (1000 logits) on the same layers, to
check a weight file, and their state dicts are in the source format (torchvision's for
MobileNet-V2 / ResNet-50).
"""

from __future__ import annotations

from finecut.encoders._common import Conv2dSame, Encoder, normalize_rgb, pad_same
from finecut.encoders.efficientnet_lite import (
    EfficientNetLite0Classifier,
    EfficientNetLite0Encoder,
    efficientnet_lite0,
    efficientnet_lite0_classifier,
)
from finecut.encoders.mobilenet_v2 import (
    MobileNetV2Classifier,
    MobileNetV2Encoder,
    mobilenet_v2,
    mobilenet_v2_classifier,
)
from finecut.encoders.resnet import (
    ResNet50Classifier,
    ResNet50Encoder,
    resnet50,
    resnet50_classifier,
)

__all__ = [
    "Conv2dSame",
    "EfficientNetLite0Classifier",
    "EfficientNetLite0Encoder",
    "Encoder",
    "MobileNetV2Classifier",
    "MobileNetV2Encoder",
    "ResNet50Classifier",
    "ResNet50Encoder",
    "efficientnet_lite0",
    "efficientnet_lite0_classifier",
    "mobilenet_v2",
    "mobilenet_v2_classifier",
    "normalize_rgb",
    "pad_same",
    "resnet50",
    "resnet50_classifier",
]
