"""Detail-preserving layers: polynomial pooling, spatial propagation, dense-decoder connectivity.

Each operation is a pure function with a thin nn.Module around it.
"""

from finecut.layers.connectivity import (
    CONNECTION_NOISE_STD,
    PRUNE_THRESHOLD,
    SEARCH_BN_MOMENTUM,
    SPARSE_LOSS_WEIGHT,
    DecoderGraph,
    DenseDecoderStage,
    PruneResult,
    StageSpec,
    fully_dense_graph,
    keep_mask,
    prune,
    sparse_loss,
    upsample_sum,
)
from finecut.layers.poly_pool import PolyPool2d, poly_pool2d
from finecut.layers.propagation import (
    DIRECTIONS,
    SpatialPropagation,
    normalize_gates,
    spatial_propagate,
    spatial_propagation,
)

__all__ = [
    "CONNECTION_NOISE_STD",
    "DIRECTIONS",
    "PRUNE_THRESHOLD",
    "SEARCH_BN_MOMENTUM",
    "SPARSE_LOSS_WEIGHT",
    "DecoderGraph",
    "DenseDecoderStage",
    "PolyPool2d",
    "PruneResult",
    "SpatialPropagation",
    "StageSpec",
    "fully_dense_graph",
    "keep_mask",
    "normalize_gates",
    "poly_pool2d",
    "prune",
    "sparse_loss",
    "spatial_propagate",
    "spatial_propagation",
    "upsample_sum",
]
