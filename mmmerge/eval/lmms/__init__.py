"""lmms-eval's benchmarks scored from its sample logs, exactly as its task code scores them.

Ported rule by rule (the code is mmmerge's own) from lmms-eval commit 75571cfe0fa3 (2026-08-06,
github.com/EvolvingLMMs-Lab/lmms-eval, lmms_eval/tasks/<task>/utils.py and the task YAMLs); the sample logs
read are those lmms-eval 0.3 writes. Where this code departs from lmms-eval on purpose (MMMU's open questions)
the module says so and `score` adds a note.
"""

from ...lazy import lazy_exports

_WHERE = {"score": ".scoring", "Scores": ".scoring", "LMMS_TASKS": ".table", "read_log": ".log"}
__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
