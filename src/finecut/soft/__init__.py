"""finecut.soft."""
