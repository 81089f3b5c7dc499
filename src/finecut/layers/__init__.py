"""Detail-preserving layers: polynomial pooling, spatial propagation, dense-decoder connectivity.

Each operation is a pure function with a thin nn.Module around it.
"""
