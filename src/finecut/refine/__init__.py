"""Continuous refinement of a coarse mask at any resolution (CRM)."""
