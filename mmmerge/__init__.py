"""mmmerge: build multimodal LLMs by merging and stitching existing models.

The names below are imported when first used, so a command pays only for what it runs (transformers
alone takes 0.7 s to import, and a merge of causal LMs does not need it).
"""

from .lazy import lazy_exports

__version__ = "0.1.0"
__all__ = ["load", "describe", "convert", "merge", "stitch", "StitchOptions", "generate", "evaluate", "compare",
           "search", "score", "moe", "finetune", "read_examples", "caption_examples", "Example", "Checkpoint",
           "Component", "LazyTensor",
           "__version__"]

_WHERE = {"load": (".adapters", "open_checkpoint"), "describe": (".inspect", "describe"),
          "convert": (".conversion", "convert"), "merge": (".engine", "merge"), "stitch": (".stitching", "stitch"),
          "StitchOptions": (".stitching", "StitchOptions"), "search": (".searching", "search"),
          "score": (".eval.lmms", "score"), "moe": (".mixture", "moe"),
          "generate": (".eval.ask", "generate"), "evaluate": (".eval", "evaluate"),
          "compare": (".eval.compare", "compare"), "finetune": (".demo.finetune", "finetune"),
          "read_examples": (".demo.finetune", "read_examples"), "caption_examples": (".demo.finetune", "caption_examples"),
          "Example": (".demo.finetune", "Example"), "Checkpoint": (".checkpoint", "Checkpoint"),
          "Component": (".checkpoint", "Component"), "LazyTensor": (".checkpoint", "LazyTensor")}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
