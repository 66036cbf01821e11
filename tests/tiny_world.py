"""One small input for every writing command, built offline in a few seconds: what the reliability tests point the
commands at (and at their outputs) to check that nothing a user keeps is ever replaced.

    w = build_world(folder)
    w["lm"], w["ft"]          # a tiny Llama with its tokenizer, and a fine-tune of it (merge, extract-lora, stitch)
    w["vision"]               # a CLIP vision tower with its image processor (convert, stitch)
    w["lora1"], w["lora2"]    # two peft LoRA folders for the Llama (merge-loras)
    w["llava"]                # a LLaVA with its processor (eval)
    w["vqa"]                  # {"questions", "annotations", "images"}: a VQAv2 set of two questions
    w["recipe"]               # a linear merge of lm and ft
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
import yaml
from safetensors.torch import save_file

import eval_data
from tiny import clip_vision_config, llama_config, randomize
from tiny_llava import build_tiny_llava
from tiny_tokenizer import make_tokenizer

LORA_MODULE = "model.layers.0.self_attn.q_proj"


def make_lm(folder: Path, seed: int = 0) -> Path:
    tok = make_tokenizer(folder)
    lm = transformers.LlamaForCausalLM(llama_config(vocab_size=len(tok), num_hidden_layers=1))
    randomize(lm, seed).save_pretrained(folder)
    return folder


def make_vision(folder: Path) -> Path:
    randomize(transformers.CLIPVisionModel(clip_vision_config()), 1).save_pretrained(folder)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return folder


def make_lora(folder: Path, seed: int, *, a: torch.Tensor | None = None, alpha=4, r: int = 2) -> Path:
    """A peft LoRA folder (one module, q_proj of layer 0) written by hand, as peft lays it out."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    A = a if a is not None else torch.randn(r, 32, generator=g)
    B = torch.randn(32, r, generator=g)
    save_file({f"base_model.model.{LORA_MODULE}.lora_A.weight": A, f"base_model.model.{LORA_MODULE}.lora_B.weight": B},
              folder / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM",
              "base_model_name_or_path": "tiny-llama", "fan_in_fan_out": False}
    # JSON has no NaN; Python writes and reads it (allow_nan), as a hostile adapter_config.json may hold it
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def build_world(root: Path) -> dict:
    root = Path(root)
    w = {"lm": make_lm(root / "lm"), "vision": make_vision(root / "vision"), "llava": build_tiny_llava(root / "llava")}
    w["ft"] = make_lm(root / "ft", seed=1)
    w["lora1"], w["lora2"] = make_lora(root / "lora1", 1), make_lora(root / "lora2", 2)
    w["vqa"] = eval_data.vqav2(root / "vqa", n=2)
    w["recipe"] = root / "recipe.yml"
    w["recipe"].write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": str(w["lm"]), "parameters": {"weight": 1}}, {"model": str(w["ft"]), "parameters": {"weight": 1}}]}))
    return w


def snapshot(path: Path) -> dict:
    """Every file under `path` (or the file itself) with its bytes: equal snapshots mean nothing was touched."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
