"""Pieces shared by every encoder: the contract's base class, input normalisation, TF-style
"same" padding, weight-file reading and strict, explained state-dict loading.

Private module: import the public names from :mod:`finecut.encoders`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from finecut.errors import WeightsError

logger = logging.getLogger(__name__)

STRIDES: tuple[int, ...] = (2, 4, 8, 16, 32)
TORCHVISION_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
TORCHVISION_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
RGB_CHANNELS = 3
_MAX_KEYS_SHOWN = 8


def normalize_rgb(
    x: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> torch.Tensor:
    """ImageNet-normalise the first 3 (RGB) channels, pass any further channels through.

    Args:
        x: images, RGB in [0, 1] first, then optional extra channels (e.g. a coarse mask).
        mean: per-RGB-channel mean subtracted.
        std: per-RGB-channel standard deviation divided by.

    Returns:
        ``cat((x[:, :3] - mean) / std, x[:, 3:])`` in ``x``'s dtype and on its device.

    Shape:
        - x: (B, C, H, W) with C >= 3
        - output: (B, C, H, W)
    """
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, RGB_CHANNELS, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, RGB_CHANNELS, 1, 1)
    rgb = (x[:, :RGB_CHANNELS] - mean_t) / std_t
    if x.shape[1] == RGB_CHANNELS:
        return rgb
    return torch.cat([rgb, x[:, RGB_CHANNELS:]], dim=1)


def pad_same(x: torch.Tensor, kernel_size: int, stride: int, dilation: int = 1) -> torch.Tensor:
    """Zero-pad like TensorFlow's ``padding="SAME"``: output size ``ceil(size / stride)``, the
    odd pixel of padding (if any) going to the bottom / right.

    Args:
        x: feature map.
        kernel_size: square kernel size of the convolution that follows.
        stride: its stride.
        dilation: its dilation.

    Returns:
        The padded map; a following unpadded conv gives ``ceil(H / stride), ceil(W / stride)``.

    Shape:
        - x: (B, C, H, W)
        - output: (B, C, H + pad_h, W + pad_w)
    """
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dim first
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return F.pad(x, pads)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding computed from the input size in forward.

    Used for the stride-2 convolutions of networks trained in TensorFlow (EfficientNet-Lite);
    for stride 1 and odd kernels it equals symmetric padding. Same parameters (``weight``,
    ``bias``) and state-dict keys as ``nn.Conv2d``.

    Shape:
        - input: (B, in_channels, H, W)
        - output: (B, out_channels, ceil(H / stride), ceil(W / stride))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            groups=groups,
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self.kernel_size[0], self.stride[0], self.dilation[0]))


def check_input(x: torch.Tensor, in_channels: int, owner: str) -> None:
    """Raise ``ValueError`` naming the expected shape unless ``x`` is (B, in_channels, H, W)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != in_channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{owner} expects input of shape (B, {in_channels}, H, W) (RGB in [0, 1] first), "
            f"got {shape}"
        )


class Encoder(nn.Module):
    """Base class of the encoder contract (see :mod:`finecut.encoders`).

    Attributes:
        in_channels: channels the input must have (first 3 are RGB in [0, 1]).
        out_channels: channels of the 5 returned feature maps.
        strides: their strides with respect to the input.
    """

    in_channels: int
    out_channels: tuple[int, ...]
    strides: tuple[int, ...]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the expected shape unless ``x`` is (B, in_channels, H, W)."""
        check_input(x, self.in_channels, type(self).__name__)

    def downsampling_layers(self) -> list[tuple[str, nn.Module]]:
        """Every layer with stride > 1, in forward order, as ``(qualified name, module)``.

        The names work with ``get_submodule`` (and ``set_submodule``, torch >= 2.4, or setattr on
        the parent), so a caller can replace a strided conv by a stride-1 conv (same weights)
        followed by a pooling layer.
        """
        found = []
        for name, module in self.named_modules():
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                stride = module.stride if isinstance(module.stride, tuple) else (module.stride,)
                if max(stride) > 1:
                    found.append((name, module))
        return found


def init_weights(module: nn.Module) -> None:
    """torchvision's initialisation: Kaiming-normal (fan_out) convs, unit BN, N(0, 0.01) linear."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def zero_extra_input_channels(conv: nn.Conv2d) -> None:
    """Zero the stem weights of input channels beyond RGB, so they start with no effect."""
    with torch.no_grad():
        conv.weight[:, RGB_CHANNELS:].zero_()


def check_in_channels(in_channels: int) -> None:
    if not isinstance(in_channels, int) or in_channels < RGB_CHANNELS:
        raise ValueError(f"in_channels must be an int >= 3 (RGB first), got {in_channels!r}")


def skeleton_if(loading: bool) -> contextlib.AbstractContextManager:
    """Context to build a model on the "meta" device (no memory, no random initialisation) when
    its weights are loaded right after by :func:`load_checked`."""
    return torch.device("meta") if loading else contextlib.nullcontext()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt`` (torch.save) or ``.safetensors`` file.

    Raises:
        WeightsError: the file is missing, unreadable, corrupt, or not a name -> tensor mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / truncated / not a weights file at all
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def _shown(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    text = ", ".join(keys[:_MAX_KEYS_SHOWN])
    if len(keys) > _MAX_KEYS_SHOWN:
        text += f", ... ({len(keys)} in all)"
    return text


def load_checked(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    stem_key: str,
    ignored: Iterable[str] = (),
    source: str = "state dict",
) -> None:
    """Load ``state`` into ``module`` strictly, explaining any mismatch.

    A 3-channel stem weight (``state[stem_key]``) is widened with zero weights when the module
    takes extra input channels, so the network behaves exactly as pretrained. Keys in
    ``ignored`` (e.g. a classifier head the encoder has no use for) are dropped; BatchNorm
    ``num_batches_tracked`` counters absent from old checkpoints are set to 0.

    Raises:
        WeightsError: naming the missing keys, the unexpected keys and the shape mismatches.
    """
    ignored = set(ignored)
    own = module.state_dict()
    given = {k: v for k, v in state.items() if k not in ignored}
    stem = given.get(stem_key)
    want = own.get(stem_key)
    if stem is not None and want is not None and stem.ndim == 4 and stem.shape[1] == RGB_CHANNELS:
        extra = want.shape[1] - RGB_CHANNELS
        if extra > 0:
            zeros = stem.new_zeros(stem.shape[0], extra, *stem.shape[2:])
            given[stem_key] = torch.cat([stem, zeros], dim=1)
    for key in own:  # checkpoints saved before PyTorch 0.4.1 (torchvision's) lack these
        if key.endswith("num_batches_tracked") and key not in given:
            given[key] = torch.zeros(own[key].shape, dtype=own[key].dtype)
    missing = set(own) - set(given)
    unexpected = set(given) - set(own)
    wrong_shape = [
        f"{k} {tuple(given[k].shape)} (expected {tuple(own[k].shape)})"
        for k in sorted(set(own) & set(given))
        if given[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_shown(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_shown(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches: {_shown(wrong_shape)}")
    if problems:
        raise WeightsError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    # floating tensors take the module's dtype; assign=True fills a module built on "meta"
    given = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in given.items()}
    module.load_state_dict(given, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # pragma: no cover - a non-persistent buffer would need its own initialisation
        raise RuntimeError(f"{type(module).__name__}: tensors left uninitialised: {left}")
    logger.debug("loaded %d tensors from %s into %s", len(given), source, type(module).__name__)


def read_optional_weights(
    pretrained: bool, weights_path: str | Path | None, *, name: str, how_to_get: str
) -> dict[str, torch.Tensor] | None:
    """The state dict at ``weights_path`` (read before the model is built, to fail fast), or
    ``None`` when no path is given and ``pretrained`` is false.

    Raises:
        WeightsError: ``pretrained`` without a path (the message says finecut never downloads
            and ``how_to_get`` the file), or an unreadable file (:func:`read_state_dict`).
    """
    if weights_path is None:
        if pretrained:
            raise WeightsError(f"{name}(pretrained=True) needs weights_path. {how_to_get}")
        return None
    return read_state_dict(weights_path)
