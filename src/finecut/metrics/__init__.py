"""finecut.metrics."""
