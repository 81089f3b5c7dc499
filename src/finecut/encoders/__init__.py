"""finecut.encoders."""
