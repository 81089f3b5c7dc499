"""Detail-sensitive semantic segmenter: encoder + dense decoder + head, optional SPN refinement.

Built from a frozen :class:`SegmenterConfig` (YAML only to save and load it). The pieces:

* Encoder (any finecut encoder; EfficientNet-Lite0 by default) with the downsampling of the
  P-pooling paper's comparison (Wei et al., CVPR 2019; METHODS.md section 1): ``"strided"`` keeps
  the stride-2 convolutions, ``"max"`` / ``"avg"`` / ``"poly"`` run each of them with stride 1
  (same weights, so the ImageNet weights are kept) followed by 2x2 max, average or polynomial
  pooling (p learnable per channel, or per channel and location as predicted by the authors' side
  branch). The pooling sits right after the convolution, before its BN, where the stride was
  (``pool_after="conv"``), or after the conv's BN and activation (``pool_after="activation"``).
* Decoder: SparseMask's fully dense decoder (``"fdn"``) or a pruned graph (``"pruned"``), in
  search mode or not (:class:`~finecut.models.dense_decoder.DenseDecoder`; METHODS.md section 3).
* Head: ReLU6 -> 1x1 conv to the classes, at the final decoder stage's resolution (stride 2).
* Optional :class:`~finecut.models.spn_head.SPNHead` (METHODS.md section 2) refining the logits.

The logits are bilinearly upsampled to the input size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

from finecut.errors import ConfigError
from finecut.layers import DecoderGraph, PolyPool2d, PruneResult, fully_dense_graph
from finecut.models.dense_decoder import DenseDecoder
from finecut.models.resize import resize_by
from finecut.models.spn_head import SPNHead

__all__ = [
    "CAMVID_CLASSES",
    "DOWNSAMPLE_MODES",
    "Segmenter",
    "SegmenterConfig",
    "StridedPool",
    "check_positive_ints",
    "config_from_dict",
    "load_config",
    "multiscale_probs",
    "pruned_segmenter",
    "replace_downsampling",
    "save_config",
]

CAMVID_CLASSES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
DOWNSAMPLE_MODES: tuple[str, ...] = ("strided", "max", "avg", "poly")
_DECODERS = ("fdn", "pruned")
_POLY_P = ("channel", "predicted")
_ENCODERS = ("efficientnet_lite0", "mobilenet_v2", "resnet50")
_Config = TypeVar("_Config")


@dataclass(frozen=True)
class SegmenterConfig:
    """Architecture of a :class:`Segmenter`.

    Attributes:
        num_classes: output classes (CamVid: 11; void is not a class).
        encoder: ``efficientnet_lite0`` (ImageNet weights from a pip package), ``mobilenet_v2`` or
            ``resnet50`` (torchvision-format weights at ``encoder_weights``).
        encoder_weights: weight file of the torchvision-format encoders.
        downsample: ``strided`` | ``max`` | ``avg`` | ``poly`` (see the module docstring).
        poly_p: ``channel`` (one learnable p per channel, init ``poly_p_init``) or ``predicted``
            (the reference's side branch, p in [1, 50], bias init 30).
        poly_p_init: initial p of ``poly_p="channel"``.
        pool_after: where the pooling goes: right after the stride-1 conv (``conv``, where the
            stride was; the pooled map is signed, P-pooling shifts it by its minimum), or after
            the conv's BN and activation (``activation``: non-negative input, as after VGG's
            ReLUs; needs conv -> BN -> activation blocks, as in EfficientNet-Lite0 and
            MobileNet-V2).
        decoder: ``fdn`` (fully dense) or ``pruned`` (the stages of ``graph``).
        graph: the pruned decoder graph (``DecoderGraph`` or its ``to_dict()``); ``pruned`` only.
        search: SparseMask search phase (connection weights, noise, frozen-affine BN).
        decoder_channels: depth of every decoder stage (paper: 64).
        decoder_bn_momentum: momentum of the decoder BNs. The official 3e-4 needs tens of
            thousands of steps before the running statistics are usable; 0.01 (finecut's default)
            suits short schedules.
        relu6_inputs: ReLU6 on every decoder input (official code; METHODS.md leaves it out).
        spn_head: add the SPN refinement head.
        spn_channels: propagated channels of the SPN head (paper: 32).
        spn_normalize: gate normalisation, ``clip`` or ``always``.
    """

    num_classes: int = 11
    encoder: str = "efficientnet_lite0"
    encoder_weights: str | None = None
    downsample: str = "poly"
    poly_p: str = "channel"
    poly_p_init: float = 3.0
    pool_after: str = "conv"
    decoder: str = "fdn"
    graph: DecoderGraph | None = None
    search: bool = False
    decoder_channels: int = 64
    decoder_bn_momentum: float = 0.01
    relu6_inputs: bool = False
    spn_head: bool = False
    spn_channels: int = 32
    spn_normalize: str = "clip"

    def __post_init__(self) -> None:
        if isinstance(self.graph, dict):
            object.__setattr__(self, "graph", DecoderGraph.from_dict(self.graph))
        _choice("encoder", self.encoder, _ENCODERS)
        _choice("downsample", self.downsample, DOWNSAMPLE_MODES)
        _choice("poly_p", self.poly_p, _POLY_P)
        _choice("pool_after", self.pool_after, ("conv", "activation"))
        _choice("decoder", self.decoder, _DECODERS)
        _choice("spn_normalize", self.spn_normalize, ("clip", "always"))
        check_positive_ints(self, ("num_classes", "decoder_channels", "spn_channels"))
        if self.poly_p_init < 0:
            raise ConfigError(f"poly_p_init must be >= 0, got {self.poly_p_init}")
        if not 0 < self.decoder_bn_momentum <= 1:
            raise ConfigError(
                f"decoder_bn_momentum must be in (0, 1], got {self.decoder_bn_momentum}"
            )
        if self.decoder == "pruned" and self.graph is None:
            raise ConfigError("decoder 'pruned' needs a graph (written by `finecut prune`)")
        if self.decoder == "fdn" and self.graph is not None:
            raise ConfigError("decoder 'fdn' takes no graph; use decoder: pruned")
        if self.graph is not None and not isinstance(self.graph, DecoderGraph):
            raise ConfigError(f"graph must be a decoder graph mapping, got {type(self.graph)}")

    def decoder_graph(self, num_features: int) -> DecoderGraph:
        """The graph the decoder runs: the fully dense one, or the pruned ``graph``."""
        return fully_dense_graph(num_features) if self.graph is None else self.graph

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (YAML / JSON / checkpoints)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["graph"] = None if self.graph is None else self.graph.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmenterConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected by name."""
        return config_from_dict(cls, data, "segmenter")


def config_from_dict(cls: type[_Config], data: Any, what: str) -> _Config:
    """``cls(**data)`` for a frozen config dataclass; unknown keys are rejected by name.

    Raises:
        ConfigError: ``data`` is not a mapping, has unknown keys or values ``cls`` refuses.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a {what} config must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"unknown {what} config keys: {', '.join(unknown)}")
    try:
        return cls(**data)
    except (TypeError, KeyError) as exc:  # a missing required key, a graph stage without one
        raise ConfigError(f"invalid {what} config: {exc}") from None


def check_positive_ints(config: Any, names: tuple[str, ...]) -> None:
    """Raise ConfigError unless every attribute in ``names`` is an int >= 1."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def save_config(path: str | Path, data: dict[str, Any]) -> Path:
    """Write a config mapping (e.g. ``cfg.to_dict()``) as YAML, atomically."""
    import os
    import tempfile

    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file as a mapping.

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


# --------------------------------------------------------------------------------------------------
# Encoder downsampling
# --------------------------------------------------------------------------------------------------


class StridedPool(nn.Module):
    """A stride-1 layer followed by 2x2 stride-2 pooling: the stand-in for a stride-2 layer.

    Odd sides are replicate-padded by one pixel at the bottom / right before pooling, so the output
    has ``ceil(H / 2), ceil(W / 2)`` like the strided layer it replaces (encoder contract).

    Shape:
        - input: (B, C_in, H, W)
        - output: (B, C_out, ceil(H / 2), ceil(W / 2))
    """

    def __init__(self, layer: nn.Module, pool: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer(x)
        pad_h, pad_w = y.shape[-2] % 2, y.shape[-1] % 2
        if pad_h or pad_w:
            y = F.pad(y, (0, pad_w, 0, pad_h), mode="replicate")
        return self.pool(y)


def _make_pool(mode: str, channels: int, cfg: SegmenterConfig) -> nn.Module:
    if mode == "max":
        return nn.MaxPool2d(2, 2)
    if mode == "avg":
        return nn.AvgPool2d(2, 2)
    if cfg.poly_p == "channel":
        return PolyPool2d(2, 2, channels=channels, p_mode="channel", p_init=cfg.poly_p_init)
    return PolyPool2d(2, 2, channels=channels, p_mode="predicted")


def replace_downsampling(encoder: nn.Module, cfg: SegmenterConfig) -> list[str]:
    """Swap every stride-2 layer of an encoder for stride 1 + pooling (``cfg.downsample``).

    Convolutions keep their weights (only the stride changes); a pooling layer with stride 2
    (ResNet's max pool) is replaced by the chosen 2x2 pooling. ``"strided"`` changes nothing.

    Returns:
        The qualified names of the replaced layers.
    """
    if cfg.downsample == "strided":
        return []
    replaced = []
    for name, module in encoder.downsampling_layers():
        if isinstance(module, nn.Conv2d):
            if tuple(module.stride) != (2, 2):
                raise ConfigError(f"layer {name} has stride {module.stride}; only 2 is supported")
            if cfg.pool_after == "activation":
                name = _block_of(encoder, name, module)
            module.stride = (1, 1)  # same weights; TF "same" padding is symmetric at stride 1
            pool = _make_pool(cfg.downsample, _out_channels(encoder, name), cfg)
            new: nn.Module = StridedPool(encoder.get_submodule(name), pool)
        else:
            channels = _channels_before(encoder, name)
            new = StridedPool(nn.Identity(), _make_pool(cfg.downsample, channels, cfg))
        _set_submodule(encoder, name, new)
        replaced.append(name)
    return replaced


def _block_of(encoder: nn.Module, name: str, conv: nn.Conv2d) -> str:
    """The conv -> BN -> activation block whose first layer is ``conv`` (to pool after it)."""
    parent_name = name.rpartition(".")[0]
    parent = encoder.get_submodule(parent_name) if parent_name else encoder
    children = list(parent.children())
    if not parent_name or len(children) < 2 or children[0] is not conv:
        raise ConfigError(
            f"pool_after 'activation' needs conv -> BN -> activation blocks, but {name} is not "
            "the first layer of one; use pool_after: conv"
        )
    return parent_name


def _out_channels(encoder: nn.Module, name: str) -> int:
    module = encoder.get_submodule(name)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def _channels_before(encoder: nn.Module, name: str) -> int:
    """Output channels of the last conv before module ``name`` (the pooled map's channels)."""
    channels = None
    for other, module in encoder.named_modules():
        if other == name:
            break
        if isinstance(module, nn.Conv2d):
            channels = module.out_channels
    if channels is None:
        raise ConfigError(f"cannot tell the channels pooled by {name}")
    return channels


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def _build_encoder(cfg: SegmenterConfig, pretrained: bool) -> nn.Module:
    from finecut.models.crm import build_encoder

    return build_encoder(
        cfg.encoder, pretrained=pretrained, in_channels=3, weights_path=cfg.encoder_weights
    )


class Segmenter(nn.Module):
    """Encoder + dense decoder + head (+ SPN refinement) for semantic segmentation.

    Args:
        config: the architecture.
        pretrained: load the encoder's ImageNet weights (never downloads; see
            :mod:`finecut.encoders`).

    Shape:
        - image: (B, 3, H, W), RGB in [0, 1]
        - output: (B, num_classes, H, W) logits
    """

    def __init__(self, config: SegmenterConfig | None = None, *, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config = config or SegmenterConfig()
        self.encoder = _build_encoder(config, pretrained)
        self.replaced_layers = tuple(replace_downsampling(self.encoder, config))
        channels = tuple(self.encoder.out_channels)
        self.decoder = DenseDecoder(
            config.decoder_graph(len(channels)),
            channels,
            config.decoder_channels,
            search=config.search,
            bn_momentum=config.decoder_bn_momentum,
            relu6_inputs=config.relu6_inputs,
        )
        self.head = nn.Sequential(
            nn.ReLU6(), nn.Conv2d(config.decoder_channels, config.num_classes, 1)
        )
        self.spn: SPNHead | None = None
        if config.spn_head:
            self.spn = SPNHead(
                config.num_classes,
                channels,
                hidden=config.spn_channels,
                normalize=config.spn_normalize,
            )

    def forward(self, image: Tensor) -> Tensor:
        features = self.encoder(image)
        logits = self.head(self.decoder(features))
        if self.spn is not None:
            logits = self.spn(logits, features)
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def decoder_num_parameters(self, *, head: bool = False) -> int:
        """Parameters of the decoder (the number SparseMask reports), optionally with the head."""
        n = self.decoder.num_parameters()
        if head:
            n += sum(p.numel() for p in self.head.parameters())
        return n

    def pool_parameters(self) -> list[nn.Parameter]:
        """Parameters of the P-pooling layers (p, or its side branch): no weight decay for them."""
        params: list[nn.Parameter] = []
        for module in self.encoder.modules():
            if isinstance(module, PolyPool2d):
                params += list(module.parameters())
        return params

    def sparse_loss(self) -> Tensor:
        """SparseMask's sparsity loss of the decoder (search mode only)."""
        return self.decoder.sparse_loss()

    def clamp_connections_(self) -> None:
        """Clamp the decoder's connection weights to [0, 2]; call after each optimiser step."""
        self.decoder.clamp_connections_()


def multiscale_probs(
    model: nn.Module,
    image: Tensor,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
) -> Tensor:
    """Class probabilities of a batch, averaged over input scales and a horizontal flip
    (test-time augmentation, as in DeepLab and most CamVid / Cityscapes results).

    Each pass resizes the input by one factor (area when shrinking, bilinear when enlarging),
    runs the model, resizes the logits back to the input's size (bilinear), takes their softmax,
    and the mean of the passes is returned; with ``flip`` every scale also runs on the mirrored
    image, mirrored back. ``scales=(1.0,)`` without flip is the model's own softmax.

    Args:
        model: any module mapping (B, 3, H, W) to (B, K, H, W) logits (or logits of another
            size, which are resized).
        image: (B, 3, H, W) float input.
        scales: positive resize factors.
        flip: add the mirrored pass of every scale.

    Returns:
        (B, K, H, W) float32 probabilities summing to 1 over K.
    """
    if not scales or any(not s > 0 for s in scales):
        raise ConfigError(f"scales must be positive numbers, got {tuple(scales)}")
    h, w = image.shape[-2:]
    total: Tensor | None = None
    n = 0
    for scale in scales:
        x = resize_by(image, scale)
        for mirrored in (False, True) if flip else (False,):
            logits = model(x.flip(-1) if mirrored else x).float()
            if mirrored:
                logits = logits.flip(-1)
            if tuple(logits.shape[-2:]) != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total + probs
            n += 1
    assert total is not None
    return total / n


def pruned_segmenter(
    searched: Segmenter, result: PruneResult, *, copy_weights: bool = True
) -> Segmenter:
    """A segmenter with the pruned decoder of ``result``; encoder, head and SPN copied.

    With ``copy_weights`` the searched connection weights are folded into the new decoder, so in
    eval mode it reproduces the searched model where the dropped connections had weight 0.
    """
    cfg = SegmenterConfig.from_dict(
        {**searched.config.to_dict(), "decoder": "pruned", "graph": result.graph, "search": False}
    )
    model = copy.deepcopy(searched)
    model.config = cfg
    model.decoder = DenseDecoder.from_pruned(searched.decoder, result, copy_weights=copy_weights)
    return model
