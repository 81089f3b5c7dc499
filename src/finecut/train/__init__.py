"""finecut.train."""
