"""SPN refinement head: spatial propagation of a segmenter's class scores (Liu et al., NIPS 2017).

The VOC model of the paper (METHODS.md section 2) refines the softmax of a segmentation network:
a 4x4 stride-2 conv to 32 channels, two propagation units with shared gates (each the max over
four directions of a three-way linear propagation), x2 upsampling, a conv to 64 channels and a
conv to the classes. The gates (4 directions x 3 neighbours x 32 channels) come from a guidance
network, which here reads the segmenter's own encoder features at strides 2, 4 and 8 instead of
a second network on the image.

One choice differs from the paper and is documented here: the head predicts a *correction* added
to the logits, and its last conv starts at zero, so an untrained head returns the logits
unchanged (the segmenter with and without the head start out identical; the head only learns
where propagation helps). Propagation runs in float32 whatever the input dtype (a long scan in
bfloat16 accumulates rounding error), and the result is cast back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from finecut.layers import DIRECTIONS, SpatialPropagation, upsample_sum

__all__ = ["SPNHead"]

GUIDANCE_STRIDE_INDICES: tuple[int, ...] = (0, 1, 2)
"""Encoder features the guidance network reads (strides 2, 4, 8 for the finecut encoders)."""


class SPNHead(nn.Module):
    """Refine class logits by two spatial propagation units with shared, guided gates.

    ``refined = logits + up(out(P(P(embed(softmax(logits)), g), g)))`` where ``P`` is a
    :class:`~finecut.layers.SpatialPropagation` unit, ``g = guidance(features)`` and ``out``'s last
    conv starts at zero.

    Args:
        num_classes: channels of the logits.
        guidance_channels: channels of the encoder features given to ``forward`` (the first three
            are used: strides 2, 4, 8).
        hidden: propagated channels (paper: 32).
        out_channels: width of the conv after propagation (paper: 64).
        normalize: gate normalisation, ``"clip"`` (official PyTorch code) or ``"always"``.

    Shape:
        - logits: ``(B, num_classes, H, W)`` (the segmenter's logits at the stride of ``E0``)
        - features[i]: ``(B, guidance_channels[i], H_i, W_i)``
        - output: ``(B, num_classes, H, W)``
    """

    def __init__(
        self,
        num_classes: int,
        guidance_channels: Sequence[int],
        hidden: int = 32,
        out_channels: int = 64,
        normalize: str = "clip",
    ) -> None:
        super().__init__()
        if len(guidance_channels) < len(GUIDANCE_STRIDE_INDICES):
            raise ValueError(
                f"the SPN guidance needs {len(GUIDANCE_STRIDE_INDICES)} encoder features, "
                f"got channels {list(guidance_channels)}"
            )
        self.num_classes = int(num_classes)
        self.hidden = int(hidden)
        gates = len(DIRECTIONS) * 3 * self.hidden
        c0, c1, c2 = (int(guidance_channels[i]) for i in GUIDANCE_STRIDE_INDICES)
        self.embed = nn.Conv2d(self.num_classes, self.hidden, 4, stride=2, padding=1)
        # guidance: the three features brought to the hidden map's size and summed (stride 2 ->
        # hidden by a stride-2 conv, strides 4 and 8 by 1x1 convs upsampled after), then 3x3 convs
        self.guide_terms = nn.ModuleList(
            [
                nn.Conv2d(c0, self.hidden, 3, stride=2, padding=1, bias=False),
                nn.Conv2d(c1, self.hidden, 1, bias=False),
                nn.Conv2d(c2, self.hidden, 1, bias=False),
            ]
        )
        self.guide = nn.Sequential(
            nn.BatchNorm2d(self.hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(self.hidden, self.hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(self.hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(self.hidden, gates, 3, padding=1),
        )
        self.propagate = SpatialPropagation(normalize)  # type: ignore[arg-type]
        self.out = nn.Sequential(
            nn.Conv2d(self.hidden, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, self.num_classes, 1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convs; the last conv at zero so that the head starts as the identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = self.out[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def gates(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """Raw gates ``(B, 4 * 3 * hidden, *size)`` from the encoder features."""
        terms = [
            conv(features[i])
            for conv, i in zip(self.guide_terms, GUIDANCE_STRIDE_INDICES, strict=True)
        ]
        return self.guide(upsample_sum(terms, size))

    def forward(self, logits: Tensor, features: Sequence[Tensor]) -> Tensor:
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must have shape (B, {self.num_classes}, H, W), got {tuple(logits.shape)}"
            )
        x = self.embed(torch.softmax(logits, dim=1))
        gates = self.gates(features, tuple(x.shape[-2:]))
        with torch.autocast(logits.device.type, enabled=False):
            h = self.propagate(x.float(), gates.float())
            h = self.propagate(h, gates.float())  # second unit, same gates
        h = F.interpolate(h.to(x.dtype), size=logits.shape[-2:], mode="bilinear")
        return logits + self.out(h).to(logits.dtype)
