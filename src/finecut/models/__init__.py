"""finecut.models."""
