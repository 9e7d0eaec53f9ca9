"""Shared building blocks (no family logic here)."""
