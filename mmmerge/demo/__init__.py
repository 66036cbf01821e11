"""The embedded default: a synthetic VQA world, tiny models, and the whole stitch -> fine-tune -> merge -> eval
pipeline (`mmmerge demo`, `run_demo`)."""

from .finetune import Example, finetune, read_examples
from .run import DemoConfig, run_demo
from .world import build_world, make_world, render

__all__ = ["run_demo", "DemoConfig", "finetune", "read_examples", "Example", "build_world", "make_world", "render"]
