"""The embedded default: a synthetic VQA world, tiny models, and the whole stitch -> fine-tune -> merge -> eval
pipeline (`mmmerge demo`, `run_demo`)."""

from .finetune import Example, caption_examples, finetune, read_examples
from .models import build_language, build_vision
from .run import DemoConfig, run_demo
from .world import QUESTION_TYPES, build_world, make_world, render

__all__ = ["run_demo", "DemoConfig", "finetune", "read_examples", "caption_examples", "Example", "build_world",
           "make_world", "render", "build_vision", "build_language", "QUESTION_TYPES"]
