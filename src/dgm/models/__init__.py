"""One file per family; each registers itself with dgm.registry."""
from dgm.models.base import GenerativeModel, ImageConfig

__all__ = ["GenerativeModel", "ImageConfig"]
