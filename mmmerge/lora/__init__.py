"""LoRA (peft) adapters: apply while streaming, extract from a fine-tune, combine several into one."""

from .adapter import AdapterMismatchError, LoraAdapter, LoraModule, read_adapter
from .apply import apply_lora, open_with_lora
from .ref import split_model_ref

__all__ = ["AdapterMismatchError", "LoraAdapter", "LoraModule", "apply_lora", "open_with_lora", "read_adapter",
           "split_model_ref"]
