"""finecut.data."""
