"""VQA evaluation: official metrics, task readers, the batched runner and cross-model reports."""

from ..lazy import lazy_exports

_WHERE = {
    **dict.fromkeys(["ModelLoadError", "ProcessorError"], ".generate"),
    **dict.fromkeys(["gqa_metrics", "pope_answer", "pope_metrics", "scienceqa_choice", "scienceqa_metrics",
                     "textvqa_accuracy", "vqa_accuracy", "vqa_aggregate", "vqa_answer_processor", "vqa_normalize"],
                    ".metrics"),
    "evaluate": ".runner",
    **dict.fromkeys(["TASKS", "EvalDataError", "Sample", "EvalTask", "get_task"], ".tasks"),
}
__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
