"""VQA evaluation: official metrics, task readers, the batched runner and cross-model reports."""

from .generate import ModelLoadError, ProcessorError
from .metrics import (gqa_metrics, pope_answer, pope_metrics, scienceqa_choice, scienceqa_metrics, textvqa_accuracy,
                      vqa_accuracy, vqa_aggregate, vqa_answer_processor, vqa_normalize)
from .runner import evaluate
from .tasks import TASKS, EvalDataError, Sample, EvalTask, get_task

__all__ = ["evaluate", "vqa_accuracy", "vqa_aggregate", "vqa_normalize", "vqa_answer_processor", "textvqa_accuracy",
           "gqa_metrics", "pope_answer", "pope_metrics", "scienceqa_choice", "scienceqa_metrics", "TASKS", "EvalTask",
           "Sample", "EvalDataError", "ModelLoadError", "ProcessorError", "get_task"]
