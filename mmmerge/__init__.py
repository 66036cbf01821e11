"""mmmerge: build multimodal LLMs by merging and stitching existing models."""

from .adapters import open_checkpoint as load
from .checkpoint import Checkpoint, Component, LazyTensor
from .engine import merge
from .eval import evaluate
from .stitch import stitch

__version__ = "0.1.0"
__all__ = ["load", "merge", "stitch", "evaluate", "Checkpoint", "Component", "LazyTensor", "__version__"]
