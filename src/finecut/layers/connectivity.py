"""SparseMask building blocks: dense decoder stages with learned, prunable connectivity.

Implements the pieces of SparseMask (Wu, Zhang and Huang, "SparseMask: Differentiable Connectivity
Learning for Dense Image Prediction", ICCV 2019) that a fully dense decoder (FDN) is made of:

* :func:`upsample_sum` and :class:`DenseDecoderStage`: a decoder stage that sums one 1x1 conv per
  input, each computed at the input's own resolution and bilinearly upsampled afterwards. By
  Theorem 1 of the supplementary this equals one 1x1 conv of the concatenated inputs, and by
  Theorem 2 upsampling commutes with a 1x1 conv, so nothing is ever concatenated and no wide input
  is ever upsampled. With ``learn_connections=True`` the stage is in the search phase: each
  connection carries a weight ``w`` in [0, 2] and its own conv -> BN (affine frozen).
* :func:`sparse_loss`: the paper's sparsity loss on the connection weights.
* :class:`StageSpec`, :class:`DecoderGraph`, :func:`fully_dense_graph` and :func:`prune`: an
  explicit graph of which inputs every stage takes, and the pruning rule that turns searched weights
  into the kept architecture (a :class:`PruneResult`; ``result.graph.to_dict()`` is what a config
  file stores).

Naming in the graph (METHODS.md section 3): encoder features are ``E0`` (shallowest, highest
resolution) to ``E{n-1}`` (deepest); ``G`` is the global average pool of the deepest feature; stage
``D{l}`` outputs at ``E{l}``'s size. In the fully dense graph stage ``D{l}`` takes every ``E{i}``
with ``i >= l``, ``G``, and every earlier decoder output ``D{i}`` (``i > l``); stages run from
``D{n-1}`` (deepest) to ``D0``, the final stage.

Differences from the official code (github.com/wuhuikai/SparseMask), each reachable by a parameter:

* Upsampling uses ``align_corners=False`` (this project's convention); the official code uses
  ``True``: pass ``align_corners=True``.
* The official code applies ReLU6 to every input before its conv (decoder outputs ``D`` are BN
  outputs without an activation, so without it the decoder is linear in the encoder features):
  pass ``relu6_inputs=True``. Default False, as specified for this project.
* The official search model adds connection noise in eval mode too; here it is training only. As in
  the official code the noisy weight is clamped to [0, 2] before use.
* The official search model also freezes the affine parameters of the stage's output BN; here only
  the per-connection BNs are frozen (freeze the output BN yourself to match it exactly).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from finecut.errors import ConfigError

__all__ = [
    "CONNECTION_NOISE_STD",
    "PRUNE_THRESHOLD",
    "SEARCH_BN_MOMENTUM",
    "SPARSE_LOSS_WEIGHT",
    "DecoderGraph",
    "DenseDecoderStage",
    "PruneResult",
    "StageSpec",
    "fully_dense_graph",
    "keep_mask",
    "prune",
    "sparse_loss",
    "upsample_sum",
]

logger = logging.getLogger(__name__)

SPARSE_LOSS_WEIGHT = 0.01
"""lambda of the paper: total loss = task loss + SPARSE_LOSS_WEIGHT * sparse_loss(weights)."""

PRUNE_THRESHOLD = 1e-3
"""A connection is kept when clip(|w|, 0, 2) / 2 > PRUNE_THRESHOLD (official default)."""

CONNECTION_NOISE_STD = 0.1
"""Std of the Gaussian noise added to every connection weight during the search (training only)."""

SEARCH_BN_MOMENTUM = 3e-4
"""BatchNorm momentum (PyTorch convention) of the official search and retraining code."""

_MAX_WEIGHT = 2.0
_SOURCE_NAME = re.compile(r"^(E\d+|G)$")


# --------------------------------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------------------------------


def upsample_sum(
    terms: Sequence[Tensor],
    size: tuple[int, int],
    scales: Tensor | None = None,
    *,
    align_corners: bool = False,
) -> Tensor:
    """Bilinearly upsample every term to ``size`` and return their (optionally scaled) sum.

    This is the fusion step of a SparseMask decoder stage (Wu et al., ICCV 2019): each term is a
    1x1 conv of one input taken at the input's own resolution; by Theorems 1 and 2 of the paper's
    supplementary, ``sum_m up(conv(F_m, W_m))`` equals ``conv(concat_m(up(F_m)), W)``. Terms that
    already have the target size are not resampled.

    Args:
        terms: tensors with the same batch size and channel count, any spatial sizes.
        size: target ``(H, W)``.
        scales: optional 1-D tensor, one multiplier per term (the connection weights).
        align_corners: passed to ``F.interpolate``.

    Returns:
        The sum, shape ``(B, C, H, W)``.

    Shape:
        - terms[m]: ``(B, C, H_m, W_m)``
        - scales: ``(M,)`` with ``M = len(terms)``
        - output: ``(B, C, H, W)``
    """
    height, width = _check_size(size)
    if len(terms) == 0:
        raise ValueError("upsample_sum needs at least one term, got none")
    if terms[0].dim() != 4:
        raise ValueError(f"terms[0] must have shape (B, C, H, W), got {tuple(terms[0].shape)}")
    batch, channels = terms[0].shape[:2]
    for index, term in enumerate(terms):
        if term.dim() != 4 or term.shape[:2] != (batch, channels):
            raise ValueError(
                f"terms[{index}] must have shape (B, C, H, W) = ({batch}, {channels}, H, W) like "
                f"terms[0], got {tuple(term.shape)}"
            )
    if scales is not None and (scales.dim() != 1 or scales.numel() != len(terms)):
        raise ValueError(
            f"scales must have shape (M,) = ({len(terms)},), got {tuple(scales.shape)}"
        )
    total: Tensor | None = None
    for index, term in enumerate(terms):
        if term.shape[-2:] != (height, width):
            term = F.interpolate(
                term, size=(height, width), mode="bilinear", align_corners=align_corners
            )
        if scales is not None:
            term = scales[index] * term
        total = term if total is None else total + term
    assert total is not None
    return total


def sparse_loss(
    weights: Sequence[Tensor], *, expected_inputs: float = 2.0, eps: float = 1e-10
) -> Tensor:
    """SparseMask's sparsity loss on the connection weights of every decoder stage.

    For stage ``l`` with weights ``w_l`` (``n_l`` connections), ``v = clamp(w_l / 2, 0, 1)`` and
    ``alpha_l = min(expected_inputs / n_l, 0.5)``::

        L_l = mean_k H(v_k) + CE(alpha_l, mean(v))
        H(p) = -p log(p + eps) - (1 - p) log(1 - p + eps)
        CE(alpha, m) = -alpha log(m + eps) - (1 - alpha) log(1 - m + eps)

    i.e. the binary entropy pushes each weight to 0 or 2, and the binary cross-entropy with target
    ``alpha_l`` pulls the fraction of live connections towards ``alpha_l`` (about two inputs per
    stage). The stages are **summed**, as the official training code does (``sum`` over decoder
    stages); multiply by ``SPARSE_LOSS_WEIGHT`` (lambda = 0.01) outside. The official code applies
    it to the noisy, clamped weights of the forward pass; pass whichever tensors you prefer.

    Args:
        weights: one non-empty 1-D tensor per stage.
        expected_inputs: the ``2`` of ``alpha_l = min(2 / n_l, 0.5)``.
        eps: added inside every log, as in the official code.

    Returns:
        A scalar tensor (dtype and device of ``weights[0]``).

    Shape:
        - weights[l]: ``(n_l,)``
        - output: ``()``
    """
    if len(weights) == 0:
        raise ValueError("sparse_loss needs the weights of at least one stage, got none")
    total: Tensor | None = None
    for index, stage_weights in enumerate(weights):
        if stage_weights.dim() != 1 or stage_weights.numel() == 0:
            raise ValueError(
                f"weights[{index}] must have shape (n_l,) with n_l >= 1, "
                f"got {tuple(stage_weights.shape)}"
            )
        v = (stage_weights / _MAX_WEIGHT).clamp(0.0, 1.0)
        alpha = min(expected_inputs / v.numel(), 0.5)
        entropy = -(v * torch.log(v + eps) + (1 - v) * torch.log(1 - v + eps)).mean()
        mean = v.mean()
        cross_entropy = -(alpha * torch.log(mean + eps) + (1 - alpha) * torch.log(1 - mean + eps))
        stage_loss = entropy + cross_entropy
        total = stage_loss if total is None else total + stage_loss
    assert total is not None
    return total


def keep_mask(weights: Tensor, threshold: float = PRUNE_THRESHOLD) -> Tensor:
    """Which connections survive pruning: ``clip(|w|, 0, 2) / 2 > threshold`` (SparseMask).

    Shape:
        - weights: ``(n,)``
        - output: ``(n,)``, bool
    """
    if weights.dim() != 1:
        raise ValueError(f"weights must have shape (n,), got {tuple(weights.shape)}")
    return weights.detach().abs().clamp(0.0, _MAX_WEIGHT) / _MAX_WEIGHT > threshold


# --------------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------------


class DenseDecoderStage(nn.Module):
    """One stage of a (fully) dense decoder: sum of per-input 1x1 convs, upsampled, then BN.

    ``out = BN(sum_m s_m * up(T_m(x_m)))`` where ``T_m`` is a 1x1 conv (no bias) applied at input
    ``m``'s own resolution, ``up`` is bilinear resampling to ``size`` and ``s_m = 1``. With
    ``learn_connections=True`` (the search phase of SparseMask, Wu et al., ICCV 2019) ``T_m`` is
    conv -> BN with frozen affine (weight 1, bias 0) and ``s_m = clamp(w_m + noise, 0, 2)`` with
    ``w_m`` a learned connection weight (initialised to 1) and ``noise ~ N(0, noise_std)`` in
    training mode only; call :meth:`clamp_connections_` after every optimiser step.

    Args:
        in_channels: channel count of every input, in the order ``forward`` receives them.
        out_channels: depth of the stage (paper: 64).
        learn_connections: search phase (connection weights and per-connection frozen BN).
        noise_std: std of the connection noise (paper: 0.1).
        bn_momentum: momentum of every BN of the stage (official code: 3e-4).
        align_corners: bilinear convention (default False; the official code uses True).
        relu6_inputs: apply ReLU6 to every input before its conv, as the official code does.

    Shape:
        - inputs[m]: ``(B, in_channels[m], H_m, W_m)``
        - output: ``(B, out_channels, *size)``
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 64,
        learn_connections: bool = False,
        noise_std: float = CONNECTION_NOISE_STD,
        bn_momentum: float = SEARCH_BN_MOMENTUM,
        *,
        align_corners: bool = False,
        relu6_inputs: bool = False,
    ) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if not in_channels or min(in_channels) < 1:
            raise ValueError(
                f"in_channels must be a non-empty list of positive ints, got {in_channels}"
            )
        if out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.in_channels = in_channels
        self.out_channels = int(out_channels)
        self.learn_connections = bool(learn_connections)
        self.noise_std = float(noise_std)
        self.bn_momentum = float(bn_momentum)
        self.align_corners = bool(align_corners)
        self.relu6_inputs = bool(relu6_inputs)

        self.convs = nn.ModuleList(
            nn.Conv2d(c, self.out_channels, kernel_size=1, bias=False) for c in in_channels
        )
        self.connection_norms: nn.ModuleList | None = None
        self.connection_weights: nn.Parameter | None = None
        if self.learn_connections:
            self.connection_norms = nn.ModuleList(
                nn.BatchNorm2d(self.out_channels, momentum=self.bn_momentum) for _ in in_channels
            )
            for norm in self.connection_norms:
                norm.weight.requires_grad_(False)
                norm.bias.requires_grad_(False)
            self.connection_weights = nn.Parameter(torch.ones(len(in_channels)))
        self.norm = nn.BatchNorm2d(self.out_channels, momentum=self.bn_momentum)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) convs, unit BNs, connection weights 1 (official init)."""
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out")
        norms = [self.norm, *(self.connection_norms or [])]
        for norm in norms:
            norm.reset_parameters()
        if self.connection_weights is not None:
            with torch.no_grad():
                self.connection_weights.fill_(1.0)

    @property
    def num_connections(self) -> int:
        return len(self.in_channels)

    @property
    def kept(self) -> tuple[int, ...]:
        """Indices of the connections that survive pruning (all of them without learned weights)."""
        if self.connection_weights is None:
            return tuple(range(self.num_connections))
        mask = keep_mask(self.connection_weights)
        return tuple(int(i) for i in torch.nonzero(mask).flatten())

    @torch.no_grad()
    def clamp_connections_(self) -> None:
        """Clamp the connection weights to [0, 2] in place; call after each optimiser step."""
        if self.connection_weights is not None:
            self.connection_weights.clamp_(0.0, _MAX_WEIGHT)

    def connection_scales(self) -> Tensor | None:
        """The multipliers used in ``forward``: clamp(w + noise, 0, 2); noise in training only."""
        if self.connection_weights is None:
            return None
        weights = self.connection_weights
        if self.training and self.noise_std > 0:
            weights = weights + self.noise_std * torch.randn_like(weights)
        return weights.clamp(0.0, _MAX_WEIGHT)

    def forward(self, inputs: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        self._check_inputs(inputs)
        terms = []
        for index, x in enumerate(inputs):
            if self.relu6_inputs:
                x = F.relu6(x)
            term = self.convs[index](x)
            if self.connection_norms is not None:
                term = self.connection_norms[index](term)
            terms.append(term)
        fused = upsample_sum(
            terms, size, self.connection_scales(), align_corners=self.align_corners
        )
        return self.norm(fused)

    def _check_inputs(self, inputs: Sequence[Tensor]) -> None:
        if len(inputs) != self.num_connections:
            raise ValueError(
                f"expected {self.num_connections} inputs with channels {list(self.in_channels)}, "
                f"got {len(inputs)}"
            )
        for index, (x, channels) in enumerate(zip(inputs, self.in_channels, strict=True)):
            if x.dim() != 4 or x.shape[1] != channels:
                raise ValueError(
                    f"inputs[{index}] must have shape (B, {channels}, H, W), got {tuple(x.shape)}"
                )

    def extra_repr(self) -> str:
        return (
            f"in_channels={list(self.in_channels)}, out_channels={self.out_channels}, "
            f"learn_connections={self.learn_connections}, align_corners={self.align_corners}, "
            f"relu6_inputs={self.relu6_inputs}"
        )

    @classmethod
    def from_pruned(
        cls,
        searched: DenseDecoderStage,
        connections: Sequence[Sequence[int]],
        *,
        copy_weights: bool = True,
    ) -> DenseDecoderStage:
        """Build the retraining stage that keeps only some connections of a searched stage.

        Each new connection is the merge of one or more connections of ``searched`` (one normally;
        several when :func:`prune` rewired a duplicate stage onto another, see
        :attr:`PruneResult.connections`). The new stage has plain convs (no connection weights).

        With ``copy_weights`` the searched weights are folded in: for a searched stage with learned
        connections, ``s_k * BN_k(W_k x) = (s_k / sigma_k) W_k x - s_k mu_k / sigma_k`` (eval-mode
        running statistics, frozen affine), so the new conv is ``sum_k (s_k / sigma_k) W_k`` over
        the merged connections and the constants move into the output BN's running mean. In eval
        mode the new stage then reproduces the searched stage exactly when the dropped
        connections have weight 0. Without ``copy_weights`` the stage is freshly initialised, as
        the official code retrains it.

        Args:
            searched: the stage of the search phase (or any stage).
            connections: for each kept connection, the indices of the searched connections merged
                into it (they must have the same channel count).
            copy_weights: fold the searched weights in (default) or initialise afresh.

        Returns:
            A new :class:`DenseDecoderStage` with ``len(connections)`` inputs, same dtype/device.
        """
        if len(connections) == 0:
            raise ValueError("a pruned stage needs at least one connection, got none")
        in_channels = []
        for group in connections:
            if len(group) == 0:
                raise ValueError("every kept connection must merge at least one searched index")
            bad = [i for i in group if not 0 <= i < searched.num_connections]
            if bad:
                raise ValueError(
                    f"connection indices {bad} out of range for a stage with "
                    f"{searched.num_connections} connections"
                )
            channels = {searched.in_channels[i] for i in group}
            if len(channels) != 1:
                raise ValueError(
                    f"merged connections {list(group)} have different channel counts {channels}"
                )
            in_channels.append(channels.pop())
        reference = searched.norm.running_mean
        stage = cls(
            in_channels,
            searched.out_channels,
            learn_connections=False,
            noise_std=searched.noise_std,
            bn_momentum=searched.bn_momentum,
            align_corners=searched.align_corners,
            relu6_inputs=searched.relu6_inputs,
        ).to(device=reference.device, dtype=searched.convs[0].weight.dtype)
        if not copy_weights:
            return stage
        with torch.no_grad():
            scales = None
            if searched.connection_weights is not None:
                scales = searched.connection_weights.clamp(0.0, _MAX_WEIGHT)
            offset = torch.zeros_like(reference)
            for new_conv, group in zip(stage.convs, connections, strict=True):
                merged = torch.zeros_like(new_conv.weight)
                for index in group:
                    gain, shift = _fold_connection(searched, index, scales)
                    merged += gain.view(-1, 1, 1, 1) * searched.convs[index].weight
                    offset += shift
                new_conv.weight.copy_(merged)
            stage.norm.load_state_dict(searched.norm.state_dict())
            stage.norm.running_mean.sub_(offset)
        return stage


def _fold_connection(
    stage: DenseDecoderStage, index: int, scales: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(per-channel gain, constant) such that s * BN_eval(conv(x)) = gain * conv(x) + constant."""
    weight = stage.convs[index].weight
    if stage.connection_norms is None or scales is None:
        ones = torch.ones(stage.out_channels, dtype=weight.dtype, device=weight.device)
        return ones, torch.zeros_like(ones)
    norm = stage.connection_norms[index]
    assert norm.running_var is not None and norm.running_mean is not None
    inv_std = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    gain = scales[index] * inv_std
    shift = scales[index] * (norm.bias - norm.running_mean * inv_std)
    return gain, shift


# --------------------------------------------------------------------------------------------------
# Graph and pruning
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageSpec:
    """One decoder stage of a dense decoder graph.

    Attributes:
        name: the stage's output, ``D{l}``.
        inputs: names of what it sums, in connection order: encoder features ``E{i}``, the global
            pool ``G``, or names of stages computed before it.
        size_from: the encoder feature whose spatial size the stage outputs at (``E{l}``).
    """

    name: str
    inputs: tuple[str, ...]
    size_from: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.inputs:
            raise ConfigError(f"stage {self.name!r} has no inputs")
        if len(set(self.inputs)) != len(self.inputs):
            raise ConfigError(f"stage {self.name!r} lists an input twice: {self.inputs}")
        if not re.fullmatch(r"E\d+", self.size_from):
            raise ConfigError(
                f"stage {self.name!r}: size_from must name E<i>, got {self.size_from!r}"
            )


@dataclass(frozen=True)
class DecoderGraph:
    """Which inputs every decoder stage takes, in computation order; the last stage is the output.

    Names that are not stages must be sources: ``E{i}`` (encoder features) or ``G``.
    """

    stages: tuple[StageSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ConfigError("a decoder graph needs at least one stage")
        seen: set[str] = set()
        for stage in self.stages:
            if stage.name in seen or _SOURCE_NAME.match(stage.name):
                raise ConfigError(f"stage name {stage.name!r} is repeated or names a source")
            for name in stage.inputs:
                if name not in seen and not _SOURCE_NAME.match(name):
                    raise ConfigError(
                        f"stage {stage.name!r} takes {name!r}, which is neither a source "
                        "(E<i>, G) nor an earlier stage"
                    )
            seen.add(stage.name)

    @property
    def final(self) -> str:
        return self.stages[-1].name

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(f"no stage named {name!r}; stages are {[s.name for s in self.stages]}")

    def consumers(self, name: str) -> tuple[str, ...]:
        """Names of the stages that take ``name`` as an input."""
        return tuple(s.name for s in self.stages if name in s.inputs)

    def in_channels(
        self, name: str, encoder_channels: Sequence[int], out_channels: int = 64
    ) -> tuple[int, ...]:
        """Channel counts of a stage's inputs: ``E{i}`` -> encoder_channels[i], ``G`` -> the
        deepest (last) encoder feature's, a stage -> ``out_channels``."""
        channels = []
        for source in self.stage(name).inputs:
            if source == "G":
                channels.append(int(encoder_channels[-1]))
            elif _SOURCE_NAME.match(source):
                channels.append(int(encoder_channels[int(source[1:])]))
            else:
                channels.append(int(out_channels))
        return tuple(channels)

    def to_dict(self) -> dict:
        """Plain dict for YAML/JSON: ``{"stages": [{"name", "inputs", "size_from"}, ...]}``."""
        return {
            "stages": [
                {"name": s.name, "inputs": list(s.inputs), "size_from": s.size_from}
                for s in self.stages
            ]
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> DecoderGraph:
        """Inverse of :meth:`to_dict`; unknown keys are rejected by name."""
        unknown = sorted(set(data) - {"stages"})
        if unknown:
            raise ConfigError(f"unknown decoder graph keys: {', '.join(unknown)}")
        stages = []
        for item in data.get("stages", []):
            unknown = sorted(set(item) - {"name", "inputs", "size_from"})
            if unknown:
                raise ConfigError(f"unknown decoder stage keys: {', '.join(unknown)}")
            stages.append(StageSpec(item["name"], tuple(item["inputs"]), item["size_from"]))
        return cls(tuple(stages))


def fully_dense_graph(num_features: int) -> DecoderGraph:
    """The fully dense decoder (FDN) of SparseMask over ``num_features`` encoder features.

    Stage ``D{l}`` (for ``l = n-1 .. 0``) takes ``E{n-1} .. E{l}``, ``G`` and ``D{n-1} .. D{l+1}``
    in that connection order, and outputs at ``E{l}``'s size; it has ``2 (n - l)`` connections.
    """
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    n = num_features
    stages = []
    for level in range(n - 1, -1, -1):
        encoders = tuple(f"E{i}" for i in range(n - 1, level - 1, -1))
        decoders = tuple(f"D{i}" for i in range(n - 1, level, -1))
        stages.append(StageSpec(f"D{level}", (*encoders, "G", *decoders), f"E{level}"))
    return DecoderGraph(tuple(stages))


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` keeps.

    Attributes:
        graph: the pruned graph (names only; what a config file stores).
        connections: for every kept stage, for each of its kept inputs (in ``graph`` order), the
            indices into the searched stage's inputs that merge into it (more than one only when a
            duplicate stage was rewired onto a stage the consumer also took); feed it to
            :meth:`DenseDecoderStage.from_pruned`.
        replaced: removed duplicate stage -> the stage its consumers were rewired to.
        removed: every removed stage, in removal order.
    """

    graph: DecoderGraph
    connections: dict[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)
    replaced: dict[str, str] = field(default_factory=dict)
    removed: tuple[str, ...] = ()


def prune(
    graph: DecoderGraph,
    weights: Sequence[Tensor] | Mapping[str, Tensor],
    *,
    threshold: float = PRUNE_THRESHOLD,
    remove_duplicates: bool = True,
    remove_subsets: bool = True,
) -> PruneResult:
    """Prune a searched dense decoder (SparseMask, Wu et al., ICCV 2019).

    1. Keep connection ``k`` of a stage when ``clip(|w_k|, 0, 2) / 2 > threshold``.
    2. Then repeat until nothing changes:

       a. a stage with no kept input is removed, and so are its outgoing connections;
       b. a stage other than the final one whose output no remaining stage takes is removed;
       c. duplicates (``remove_duplicates``): among stages with the same set of kept inputs the
          earliest stays; later ones are removed and their consumers rewired to the earliest (a
          consumer that took both keeps one connection, merging their indices); the final stage
          is never removed;
       d. subsets (``remove_subsets``): a non-final stage ``j`` is removed when a stage ``i``
          computed after it takes a superset of ``j``'s inputs and every consumer of ``j`` also
          consumes ``i`` (``D_i`` already carries what ``D_j`` would add).

    Rules c and d follow the official ``prune`` (github.com/wuhuikai/SparseMask, which compares
    the kept-connection masks of the stages); the official code makes one pass of each rule, this
    function iterates all of them to a fixed point, so it can only remove more.

    Args:
        graph: the searched graph.
        weights: one 1-D tensor per stage (graph order, or a mapping by stage name), the
            connection weights in the order of that stage's ``inputs``.
        threshold: pruning threshold on ``clip(|w|, 0, 2) / 2``.
        remove_duplicates: apply rule c.
        remove_subsets: apply rule d.

    Returns:
        A :class:`PruneResult`.

    Raises:
        ValueError: weights do not match the graph, or the final stage lost every input.
    """
    if isinstance(weights, Mapping):
        missing = [s.name for s in graph.stages if s.name not in weights]
        if missing:
            raise ValueError(f"no connection weights for stages {missing}")
        per_stage = [weights[s.name] for s in graph.stages]
    else:
        per_stage = list(weights)
        if len(per_stage) != len(graph.stages):
            raise ValueError(
                f"expected connection weights for {len(graph.stages)} stages, got {len(per_stage)}"
            )
    # live[stage][input name] = indices of the searched connections merged into it
    live: dict[str, dict[str, tuple[int, ...]]] = {}
    for spec, stage_weights in zip(graph.stages, per_stage, strict=True):
        if stage_weights.shape != (len(spec.inputs),):
            raise ValueError(
                f"weights of stage {spec.name!r} must have shape ({len(spec.inputs)},), "
                f"got {tuple(stage_weights.shape)}"
            )
        mask = keep_mask(stage_weights, threshold).tolist()
        live[spec.name] = {name: (k,) for k, name in enumerate(spec.inputs) if mask[k]}

    order = [s.name for s in graph.stages]
    final = graph.final
    removed: list[str] = []
    replaced: dict[str, str] = {}

    def consumers(name: str) -> set[str]:
        return {s for s, inputs in live.items() if name in inputs}

    def remove(name: str) -> None:
        del live[name]
        removed.append(name)
        for inputs in live.values():
            inputs.pop(name, None)

    changed = True
    while changed:
        changed = False
        for name in [s for s in order if s in live]:
            if not live[name]:
                if name == final:
                    raise ValueError(
                        f"the final stage {final!r} lost every input at threshold {threshold}"
                    )
                remove(name)
                changed = True
            elif name != final and not consumers(name):
                remove(name)
                changed = True
        if changed:
            continue
        if remove_duplicates:
            changed = _remove_duplicates(live, order, final, removed, replaced)
            if changed:
                continue
        if remove_subsets:
            changed = _remove_subsets(live, order, final, removed)

    stages = []
    connections: dict[str, tuple[tuple[int, ...], ...]] = {}
    for spec in graph.stages:
        if spec.name not in live:
            continue
        items = sorted(live[spec.name].items(), key=lambda item: min(item[1]))
        stages.append(StageSpec(spec.name, tuple(n for n, _ in items), spec.size_from))
        connections[spec.name] = tuple(tuple(sorted(idx)) for _, idx in items)
    result = PruneResult(DecoderGraph(tuple(stages)), connections, replaced, tuple(removed))
    total = sum(len(s.inputs) for s in graph.stages)
    kept = sum(len(c) for c in connections.values())
    logger.info(
        "pruned decoder: %d/%d stages, %d/%d connections kept", len(stages), len(order), kept, total
    )
    return result


def _remove_duplicates(
    live: dict[str, dict[str, tuple[int, ...]]],
    order: list[str],
    final: str,
    removed: list[str],
    replaced: dict[str, str],
) -> bool:
    names = [s for s in order if s in live]
    for position, first in enumerate(names):
        for later in names[position + 1 :]:
            if later == final or set(live[later]) != set(live[first]):
                continue
            del live[later]
            removed.append(later)
            replaced[later] = first
            for old, new in list(replaced.items()):
                if new == later:
                    replaced[old] = first
            for inputs in live.values():
                if later in inputs:
                    moved = inputs.pop(later)
                    inputs[first] = tuple(sorted(set(inputs.get(first, ())) | set(moved)))
            return True
    return False


def _remove_subsets(
    live: dict[str, dict[str, tuple[int, ...]]],
    order: list[str],
    final: str,
    removed: list[str],
) -> bool:
    names = [s for s in order if s in live]
    consumers = {n: {s for s, inputs in live.items() if n in inputs} for n in names}
    for position, earlier in enumerate(names):
        if earlier == final:
            continue
        for later in names[position + 1 :]:
            if set(live[earlier]) <= set(live[later]) and consumers[earlier] <= consumers[later]:
                del live[earlier]
                removed.append(earlier)
                for inputs in live.values():
                    inputs.pop(earlier, None)
                return True
    return False


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be (H, W) with positive ints, got {size}")
    return int(size[0]), int(size[1])
