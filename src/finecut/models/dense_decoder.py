"""Dense decoder of SparseMask (Wu, Zhang and Huang, ICCV 2019) over any list-of-features encoder.

A :class:`DenseDecoder` runs the stages of a :class:`~finecut.layers.DecoderGraph` in order; each
stage is a :class:`~finecut.layers.DenseDecoderStage` (per-input 1x1 convs at the input's own
resolution, bilinearly upsampled and summed, then BN). The fully dense graph
(:func:`~finecut.layers.fully_dense_graph`) is the FDN of the paper; with ``search=True`` every
connection carries a learned weight in [0, 2] (noise in training, per-connection BN with frozen
affine), and :func:`~finecut.layers.prune` turns the searched weights into a smaller graph that
this module builds as is (retraining, METHODS.md section 3).

Sources of the graph: ``E{i}`` is encoder feature ``i`` (``E0`` the shallowest, stride 2 for the
finecut encoders), ``G`` the global average pool of the deepest feature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from finecut.errors import ConfigError
from finecut.layers import (
    SEARCH_BN_MOMENTUM,
    DecoderGraph,
    DenseDecoderStage,
    PruneResult,
    sparse_loss,
)

__all__ = ["DenseDecoder"]


class DenseDecoder(nn.Module):
    """The stages of a decoder graph over encoder features; returns the final stage's map.

    Args:
        graph: which inputs each stage sums (:func:`~finecut.layers.fully_dense_graph` for FDN).
        encoder_channels: channels of the encoder features ``E0 .. E{n-1}``.
        channels: depth of every stage (paper: 64).
        search: SparseMask search phase: learned connection weights, noise, frozen-affine
            per-connection BN.
        bn_momentum: momentum of every BN of the decoder (official code: 3e-4).
        relu6_inputs: ReLU6 on every stage input, as the official code does.

    Shape:
        - features[i]: ``(B, encoder_channels[i], H_i, W_i)``
        - output: ``(B, channels, *size of the final stage's size_from feature)``
    """

    def __init__(
        self,
        graph: DecoderGraph,
        encoder_channels: Sequence[int],
        channels: int = 64,
        *,
        search: bool = False,
        bn_momentum: float = SEARCH_BN_MOMENTUM,
        relu6_inputs: bool = False,
    ) -> None:
        super().__init__()
        self.graph = graph
        self.encoder_channels = tuple(int(c) for c in encoder_channels)
        self.channels = int(channels)
        self.search = bool(search)
        n = len(self.encoder_channels)
        for spec in graph.stages:
            used = [s for s in (*spec.inputs, spec.size_from) if s.startswith("E")]
            bad = [s for s in used if int(s[1:]) >= n]
            if bad:
                raise ConfigError(
                    f"stage {spec.name!r} uses {bad}, but the encoder gives only {n} features "
                    f"(E0..E{n - 1})"
                )
        self.stages = nn.ModuleDict(
            {
                spec.name: DenseDecoderStage(
                    graph.in_channels(spec.name, self.encoder_channels, self.channels),
                    self.channels,
                    learn_connections=self.search,
                    bn_momentum=bn_momentum,
                    relu6_inputs=relu6_inputs,
                )
                for spec in graph.stages
            }
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.encoder_channels):
            raise ValueError(
                f"expected {len(self.encoder_channels)} encoder features, got {len(features)}"
            )
        values: dict[str, Tensor] = {f"E{i}": f for i, f in enumerate(features)}
        if any("G" in spec.inputs for spec in self.graph.stages):
            values["G"] = features[-1].mean(dim=(2, 3), keepdim=True)
        for spec in self.graph.stages:
            size = tuple(values[spec.size_from].shape[-2:])
            values[spec.name] = self.stages[spec.name]([values[s] for s in spec.inputs], size)
        return values[self.graph.final]

    def connection_weights(self) -> dict[str, Tensor]:
        """Stage name -> its connection weights (search phase only; empty otherwise)."""
        return {
            name: stage.connection_weights
            for name, stage in self.stages.items()
            if stage.connection_weights is not None
        }

    def sparse_loss(self) -> Tensor:
        """SparseMask's sparsity loss on the connection weights (multiply by lambda = 0.01)."""
        weights = list(self.connection_weights().values())
        if not weights:
            raise ValueError("sparse_loss needs a decoder in search mode (search=True)")
        return sparse_loss(weights)

    @torch.no_grad()
    def clamp_connections_(self) -> None:
        """Clamp every connection weight to [0, 2]; call after each optimiser step."""
        for stage in self.stages.values():
            stage.clamp_connections_()

    def num_parameters(self) -> int:
        """Number of decoder parameters (trainable or not: frozen BN affine included)."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pruned(
        cls, searched: DenseDecoder, result: PruneResult, *, copy_weights: bool = True
    ) -> DenseDecoder:
        """The retraining decoder of a prune result, optionally with the searched weights folded in
        (see :meth:`~finecut.layers.DenseDecoderStage.from_pruned`)."""
        any_stage = next(iter(searched.stages.values()))
        decoder = cls(
            result.graph,
            searched.encoder_channels,
            searched.channels,
            search=False,
            bn_momentum=any_stage.bn_momentum,
            relu6_inputs=any_stage.relu6_inputs,
        )
        stages: Mapping[str, DenseDecoderStage] = searched.stages  # type: ignore[assignment]
        for spec in result.graph.stages:
            decoder.stages[spec.name] = DenseDecoderStage.from_pruned(
                stages[spec.name], result.connections[spec.name], copy_weights=copy_weights
            )
        return decoder
