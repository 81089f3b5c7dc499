"""finecut.weights."""
