"""Writing a peft LoRA folder that `PeftModel.from_pretrained(base, DIR)` loads with no missing keys.

All modules get scale 1 (lora_alpha = r, alpha_pattern = rank_pattern), so B @ A is the update itself.
`target_modules` names exactly the modules written: peft's short form (leaf names, or a regex anchored at
the component's prefix) when it selects nothing else in the model, else the list of full module names.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch

from ..checkpoint import LazyTensor
from ..io.writer import ONE_FILE, write_safetensors
from .adapter import CONFIG, PREFIX


def target_modules(written: list[str], all_modules: list[str], prefix: str) -> list[str] | str:
    """The shortest peft `target_modules` that selects exactly `written` among `all_modules`."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in written})
    want = set(written)
    if not prefix and {n for n in all_modules if n.rsplit(".", 1)[-1] in leaves} == want:
        return leaves
    pattern = rf"{re.escape(prefix)}.*\.({'|'.join(map(re.escape, leaves))})"
    if {n for n in all_modules if re.fullmatch(pattern, n)} == want:
        return pattern
    return sorted(written)


def lora_config(ranks: dict[str, int], targets, base: str, fan_in_fan_out: bool = False, **extra) -> dict:
    """A LoRA config with scale 1 everywhere; r is the most common rank, the others in rank_pattern."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {n: k for n, k in ranks.items() if k != r}
    return {"peft_type": "LORA", "base_model_name_or_path": base, "task_type": None, "inference_mode": True,
            "r": r, "lora_alpha": r, "target_modules": targets, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
            "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False,
            "fan_in_fan_out": fan_in_fan_out, "modules_to_save": None, "init_lora_weights": True, **extra}


def save_adapter(folder: Path, config: dict, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 embeddings: set[str] = frozenset()) -> None:
    """Write `adapter_config.json` and `adapter_model.safetensors` ({module: (A, B)}) into `folder`."""
    tensors = {}
    for name in sorted(factors):
        A, B = factors[name]
        a, b = ("lora_embedding_A", "lora_embedding_B") if name in embeddings else ("lora_A.weight", "lora_B.weight")
        tensors[f"{PREFIX}{name}.{a}"] = LazyTensor.of(A.contiguous())
        tensors[f"{PREFIX}{name}.{b}"] = LazyTensor.of(B.contiguous())
    write_safetensors(folder, tensors, prefix="adapter_model", max_shard_bytes=ONE_FILE)  # peft reads one file
    (Path(folder) / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
