"""Dense fine-tunes of one base -> a sparse mixture-of-experts model, from mergekit-moe's config as it is."""

from .build import moe

__all__ = ["moe"]
