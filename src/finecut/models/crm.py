"""CRM: continuous refinement of a coarse mask at any resolution (Shen et al., CVPR 2022).

The network encodes an image and its coarse mask into a latent feature map at stride 2 and decodes
any set of continuous query coordinates with a small implicit MLP (LIIF style), using the 4 nearest
latent cells and the area-weighted local ensemble of the paper's supplementary (Fig. 1).

Two choices differ from the paper and are documented here:

* The default encoder is EfficientNet-Lite0 (the only ImageNet backbone reachable here). Its
  stride-8 features are shallow (40 channels), so the latent also fuses the stride-16 and stride-32
  features (upsampled), which carry the semantics that a dilated ResNet-50's layer3 carries in CRM.
  ``CRMConfig.fuse_strides`` selects the strides; ``(2, 4, 8)`` is the paper's choice.
* The first MLP layer is split into its feature term and its position term:
  ``W1 @ [f; pos] = (W1_f @ f) + (W1_p @ pos)``. The feature term is computed once per latent cell
  as a 1x1 convolution (in ``CRM.encode``), so each query gathers ``hidden[0]`` numbers instead of
  ``latent_channels`` and does no per-query matrix product with them. This is exact algebra, not an
  approximation, and is used for training and inference alike.
* ``coarse_skip``: the head predicts a correction to the coarse mask. The coarse mask, sampled
  bilinearly at each query, enters the logit as ``s * (2 c - 1)`` with a learned scale ``s``
  (initialised to 3) and the last MLP layer starts at zero, so an untrained model returns the
  coarse mask and training only has to learn where to move the boundary. The shipped model was
  trained on 2 CPU cores (no GPU was lent), a budget ~40x smaller than the paper's; this residual
  form is what makes that budget enough. ``coarse_skip=False`` is the paper's head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from finecut.errors import ConfigError

__all__ = ["CRM", "CRMConfig", "build_encoder", "make_grid_coords", "query_latent"]

_ENCODERS = ("efficientnet_lite0", "mobilenet_v2", "resnet50")


@dataclass(frozen=True)
class CRMConfig:
    """Architecture of a CRM refiner. Defaults are finecut's shipped model.

    Attributes:
        encoder: ``efficientnet_lite0`` (default; ImageNet weights from a pip package),
            ``mobilenet_v2`` or ``resnet50`` (torchvision-format weights the user brings).
        fuse_strides: encoder strides fused into the latent (paper: 2, 4, 8).
        branch_channels: 1x1-conv width of each fused feature (paper: 64, 64, 128).
        latent_channels: channels of F_latent (paper: 256).
        hidden: widths of the implicit MLP (paper: 32, 32, 32, 32).
        dropout: dropout after each branch (paper: 0.5).
        coarse_skip: add the coarse mask to the logit with a learned scale (paper: no).
    """

    encoder: str = "efficientnet_lite0"
    fuse_strides: tuple[int, ...] = (2, 4, 8, 16, 32)
    branch_channels: tuple[int, ...] = (32, 32, 64, 64, 64)
    latent_channels: int = 64
    hidden: tuple[int, ...] = (32, 32, 32, 32)
    dropout: float = 0.1
    coarse_skip: bool = True

    def __post_init__(self) -> None:
        if self.encoder not in _ENCODERS:
            raise ConfigError(f"unknown encoder {self.encoder!r}; choose one of {_ENCODERS}")
        if len(self.fuse_strides) != len(self.branch_channels):
            raise ConfigError("fuse_strides and branch_channels must have the same length")
        bad = [s for s in self.fuse_strides if s not in (2, 4, 8, 16, 32)]
        if bad:
            raise ConfigError(f"fuse_strides must be among 2, 4, 8, 16, 32, got {bad}")
        if not self.hidden:
            raise ConfigError("hidden needs at least one layer")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> CRMConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown CRM config keys: {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def build_encoder(name: str, *, pretrained: bool, in_channels: int, weights_path=None) -> nn.Module:
    """Build an encoder of the list-of-features contract by name (explicit, no registry)."""
    from finecut import encoders

    if name == "efficientnet_lite0":
        return encoders.efficientnet_lite0(pretrained=pretrained, in_channels=in_channels)
    if name == "mobilenet_v2":
        return encoders.mobilenet_v2(
            pretrained=pretrained, weights_path=weights_path, in_channels=in_channels
        )
    if name == "resnet50":
        return encoders.resnet50(
            weights_path=weights_path if pretrained else None, in_channels=in_channels
        )
    raise ConfigError(f"unknown encoder {name!r}; choose one of {_ENCODERS}")


def make_grid_coords(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates of an (height, width) grid in [-1, 1], as (H*W, 2) (y, x) rows."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * (2.0 / height) - 1.0
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * (2.0 / width) - 1.0
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def query_latent(
    cell_feat: torch.Tensor,
    coords: torch.Tensor,
    cell: torch.Tensor,
    pos_proj: nn.Linear,
    mlp: nn.Module,
) -> torch.Tensor:
    """Decode continuous query points from per-cell first-layer features (CRM's implicit head).

    For each query, the 4 latent cells around it are visited; the MLP sees the cell's projected
    feature plus a projection of the position information P = (offset to the cell scaled by the
    latent size, absolute coordinate, query cell size scaled by the latent size). The 4 logits are
    combined with the area weights of the supplementary's Fig. 1 (each cell gets the area of the
    rectangle diagonally opposite), which are the bilinear weights.

    Args:
        cell_feat: first-layer feature term per latent cell, ``W1_f @ F_latent + b1``.
        coords: query coordinates in [-1, 1], (y, x) order, in the latent's frame.
        cell: size of one query pixel in [-1, 1] units, (y, x), per query.
        pos_proj: linear map of the 6 position numbers to ``hidden[0]`` (no bias).
        mlp: the rest of the MLP (ReLU then layers down to 1 logit).

    Shape:
        cell_feat: (B, D, h, w); coords: (B, Q, 2); cell: (B, Q, 2) -> logits (B, Q).
    """
    b, d, h, w = cell_feat.shape
    q = coords.shape[1]
    # scalar_tensor keeps h and w symbolic when exported (torch.onnx, finecut.export); a
    # new_tensor([h, w]) would fix them to the example's sizes. Same float32 values.
    size = torch.stack([torch.scalar_tensor(h), torch.scalar_tensor(w)]).to(coords)
    # continuous position in latent pixel units, cell centres at integers
    u = (coords + 1.0) * 0.5 * size - 0.5
    base = torch.floor(u)
    frac = u - base
    # Cells as rows of one (B * h * w, D) table, gathered with index_select: row copies, about
    # 40% faster per query than torch.gather with a (B, Q, D) index (bench in docs/benchmarks.md);
    # a channels-last latent is already laid out this way (no copy).
    rows = cell_feat.permute(0, 2, 3, 1).reshape(b * h * w, d)
    first_row = (torch.arange(b, device=coords.device) * (h * w)).view(b, 1)
    # the position term is linear: its (absolute coordinate, cell size) part is shared by the 4
    # cells, only the offset part differs
    w_offset, w_shared = pos_proj.weight[:, :2], pos_proj.weight[:, 2:]
    shared = F.linear(torch.cat([coords, cell * size], dim=-1), w_shared)
    logits = coords.new_zeros(coords.shape[:2])
    for dy in (0, 1):
        for dx in (0, 1):
            iy = (base[..., 0] + dy).clamp_(0, h - 1)
            ix = (base[..., 1] + dx).clamp_(0, w - 1)
            # offset of the query from the cell centre, in latent cells (CRM's C_r scaled by size)
            offset = u - torch.stack([iy, ix], dim=-1)
            wy = frac[..., 0] if dy else 1.0 - frac[..., 0]
            wx = frac[..., 1] if dx else 1.0 - frac[..., 1]
            index = (iy * w + ix).long() + first_row
            hidden = rows.index_select(0, index.view(-1)).view(b, q, d)
            hidden += shared
            hidden += F.linear(offset, w_offset)
            logits = logits + (wy * wx) * mlp(hidden).squeeze(-1)
    return logits


class _Branch(nn.Sequential):
    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        )


class CRM(nn.Module):
    """The CRM refiner: encoder + latent fusion at stride 2 + implicit MLP head.

    ``forward(image, coarse)`` returns mask logits on the input grid (the training path);
    :meth:`encode` and :meth:`query` serve inference at any resolution.

    Shape:
        image: (B, 3, H, W) RGB in [0, 1]; coarse: (B, 1, H, W) in [0, 1] -> logits (B, 1, H, W).
    """

    def __init__(
        self,
        config: CRMConfig = CRMConfig(),  # noqa: B008 - frozen dataclass, immutable default
        *,
        pretrained: bool = True,
        weights_path=None,
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(
            config.encoder, pretrained=pretrained, in_channels=4, weights_path=weights_path
        )
        strides = tuple(self.encoder.strides)
        self._feature_index = [strides.index(s) for s in config.fuse_strides]
        self.branches = nn.ModuleList(
            _Branch(self.encoder.out_channels[i], c, config.dropout)
            for i, c in zip(self._feature_index, config.branch_channels, strict=True)
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(
                sum(config.branch_channels), config.latent_channels, 3, padding=1, bias=False
            ),
            nn.BatchNorm2d(config.latent_channels),
            nn.ReLU(inplace=True),
        )
        hidden = config.hidden
        # first MLP layer, feature term (per latent cell) and position term (per query)
        self.cell_proj = nn.Conv2d(config.latent_channels, hidden[0], 1)
        self.pos_proj = nn.Linear(6, hidden[0], bias=False)
        # in-place ReLUs: every one acts on a fresh sum or a Linear's output, which no backward
        # needs (10% faster queries on the CPU, same values)
        layers: list[nn.Module] = []
        for cin, cout in zip(hidden[:-1], hidden[1:], strict=True):
            layers += [nn.ReLU(inplace=True), nn.Linear(cin, cout)]
        layers += [nn.ReLU(inplace=True), nn.Linear(hidden[-1], 1)]
        self.mlp = nn.Sequential(*layers)
        if config.coarse_skip:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
            self.skip_scale = nn.Parameter(torch.tensor(3.0))
        else:
            self.register_parameter("skip_scale", None)

    def encode(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Per-cell first-layer features of the latent map at stride 2.

        Shape:
            image: (B, 3, H, W); coarse: (B, 1, H, W) -> (B, hidden[0], ceil(H/2), ceil(W/2)).
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        if coarse.shape != (image.shape[0], 1, *image.shape[2:]):
            raise ValueError(
                f"coarse must be (B, 1, H, W) = {(image.shape[0], 1, *image.shape[2:])}, "
                f"got {tuple(coarse.shape)}"
            )
        # keep the image's memory format: torch.cat of a channels-last image and a one-channel
        # mask returns a contiguous tensor, and the channels-last stem convolution then takes a
        # slow path (17 ms against about 1 ms for a 320x320 tile on 2 CPU cores)
        fmt = (
            torch.channels_last
            if image.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        x = torch.cat([image, coarse * 2.0 - 1.0], dim=1).contiguous(memory_format=fmt)
        feats = self.encoder(x)
        size = feats[0].shape[-2:]
        fused = []
        for i, branch in zip(self._feature_index, self.branches, strict=True):
            f = branch(feats[i])
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            fused.append(f)
        latent = self.fuse(torch.cat(fused, dim=1))
        return self.cell_proj(latent)

    def query(
        self,
        cell_feat: torch.Tensor,
        coords: torch.Tensor,
        cell: torch.Tensor,
        coarse: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mask logits at query points (see :func:`query_latent`).

        ``coarse`` is the mask given to :meth:`encode` (same frame as ``coords``); it is required
        when the model was built with ``coarse_skip``.

        Shape: coords, cell (B, Q, 2); coarse (B, 1, H, W) -> (B, Q).
        """
        logits = query_latent(cell_feat, coords, cell, self.pos_proj, self.mlp)
        if self.skip_scale is not None:
            if coarse is None:
                raise ValueError("this CRM adds the coarse mask to its output: pass coarse=")
            grid = coords.flip(-1).unsqueeze(1).to(coarse.dtype)  # (B, 1, Q, 2) in (x, y) order
            c = F.grid_sample(
                coarse, grid, mode="bilinear", padding_mode="border", align_corners=False
            )[:, 0, 0]
            logits = logits + self.skip_scale * (2.0 * c.to(logits.dtype) - 1.0)
        return logits

    def forward(
        self,
        image: torch.Tensor,
        coarse: torch.Tensor,
        out_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Logits on an ``out_size`` grid (default: the input grid) covering the same image area.

        Training queries a finer grid than the encoded input (``out_size`` larger than the image)
        so the head learns the cell sizes it meets at the coarse inference scales.
        """
        cell_feat = self.encode(image, coarse)
        b = image.shape[0]
        h, w = out_size if out_size is not None else image.shape[-2:]
        coords = make_grid_coords(h, w, device=image.device, dtype=cell_feat.dtype)
        coords = coords.unsqueeze(0).expand(b, -1, -1)
        cell = coords.new_tensor([2.0 / h, 2.0 / w]).expand_as(coords)
        return self.query(cell_feat, coords, cell, coarse).view(b, 1, h, w)


@dataclass(frozen=True)
class CRMLossWeights:
    """Loss weights: BCE, L1, L2, L1 of Sobel gradients (CRM README: 1 / 0.5 / 0.5 / 2)."""

    bce: float = 1.0
    l1: float = 0.5
    l2: float = 0.5
    grad: float = 2.0


def sobel_magnitude(prob: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of a (B, 1, H, W) map (replicate padding)."""
    kx = prob.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1)
    g = F.conv2d(F.pad(prob, (1, 1, 1, 1), mode="replicate"), kernel)
    return torch.sqrt(g.pow(2).sum(1, keepdim=True) + 1e-8)


def crm_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: CRMLossWeights = CRMLossWeights(),  # noqa: B008
) -> tuple[torch.Tensor, dict[str, float]]:
    """CRM's training loss: BCE + L1 + L2 + L1 of Sobel gradients (METHODS.md section 4).

    Shape:
        logits, target: (B, 1, H, W); target in [0, 1].
    """
    prob = torch.sigmoid(logits)
    terms = {
        "bce": F.binary_cross_entropy_with_logits(logits, target),
        "l1": (prob - target).abs().mean(),
        "l2": (prob - target).pow(2).mean(),
        "grad": (sobel_magnitude(prob) - sobel_magnitude(target)).abs().mean(),
    }
    total = sum(getattr(weights, k) * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}
