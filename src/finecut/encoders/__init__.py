"""Encoders following one contract: ``forward(x)`` returns the feature maps at strides
2, 4, 8, 16, 32 (a list of 5 tensors) and the module exposes their ``out_channels``."""
