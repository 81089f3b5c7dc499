"""finecut.layers."""
