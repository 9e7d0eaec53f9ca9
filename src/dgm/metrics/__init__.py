"""Measuring instruments: likelihood bounds, representation quality (and, per EVALUATION.md, FID, KID, PR, ...)."""
