"""Run a published mergekit config through mergekit 0.1.5 and mmmerge on tiny stand-in models, and compare.

Each config in tests/data/mergekit_configs/ names its source and, in its second comment line, the architecture
and layer count of the models it merges. Every model it names gets a stand-in: a tiny random model of that
architecture (one shared base per config, each model a small seeded perturbation of it, so task vectors are
small as real fine-tunes' are), saved in bfloat16 with a tiny tokenizer, with at least as many layers as the
config's layer ranges reach. Hub IDs go into a temporary Hugging Face cache; relative paths into the working
folder; absolute and Windows paths, which cannot exist here, are relocated into the working folder (the only
change made to a config). Both tools run with the same seed, offline; the outputs are compared tensor by tensor
in the output dtype, and by config (layer count, vocabulary) and tokenizer vocabulary.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from mergekit_oracle import magnitude_sorts_stable

SEED = 1234
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ARCHS = [("mixtral", "mixtral"), ("qwen2-vl", "qwen2_vl"), ("qwen2", "qwen2"), ("phi-3", "phi3"),
         ("gemma-2", "gemma2"), ("gpt-2", "gpt2"), ("zamba", "zamba2"), ("mistral", "mistral"), ("", "llama")]
SMALL = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
             max_position_embeddings=64)


@dataclass
class Outcome:
    config: str
    status: str  # identical | within 1 ulp | differs | mergekit refuses | mmmerge refuses | both refuse | skipped
    detail: str = ""
    tensors: int = 0
    mergekit_dropped: list = field(default_factory=list)  # tensors only mmmerge wrote


def header(text: str) -> tuple[str, int | None]:
    """(architecture key, layer count) from the config's `# model architecture:` line."""
    line = next((ln for ln in text.splitlines() if ln.startswith("# model architecture:")), "").lower()
    arch = next(key for marker, key in ARCHS if marker in line)
    m = re.search(r"\((\d+) layers|(\d+)-layer", line)
    return arch, int(m.group(1) or m.group(2)) if m else None


def tiny_config(arch: str, layers: int, vocab: int):
    import transformers as T

    common = dict(SMALL, num_hidden_layers=layers, vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if arch == "gpt2":
        return T.GPT2Config(n_embd=16, n_layer=layers, n_head=2, vocab_size=vocab, n_positions=64)
    if arch == "mixtral":
        return T.MixtralConfig(**common, num_local_experts=2, num_experts_per_tok=1)
    if arch == "phi3":
        return T.Phi3Config(**{**common, "num_key_value_heads": 2, "pad_token_id": None})
    if arch == "gemma2":
        return T.Gemma2Config(**common, sliding_window=16)
    cls = {"qwen2": T.Qwen2Config, "mistral": T.MistralConfig}.get(arch, T.LlamaConfig)
    return cls(**common)


def model_refs(cfg: dict) -> list[str]:
    """Every model a config names (LoRA references `a+b` split), in first-mention order."""
    found: list[str] = []

    def add(v):
        if isinstance(v, dict):
            v = v.get("model", v).get("path") if isinstance(v.get("model", v), dict) else v.get("model")
        if isinstance(v, str) and v not in ("union", "base") and v not in found:
            found.append(v)

    def walk(node, key=None):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("model", "base_model", "tokenizer_source") or (key == "tokenizer" and k == "source"):
                    add(v)
                walk(v, k)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)

    walk(cfg)
    return found


MODEL_KEYS = ("model", "base_model", "path", "tokenizer_source", "source")


def rewrite_refs(cfg, fix):
    """`cfg` with `fix` applied to every model reference (each side of `a+b` alone)."""
    def one(v):
        if not isinstance(v, str) or v in ("union", "base"):
            return v
        return "+".join(fix(part) for part in v.split("+"))

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(one(v)) if k in MODEL_KEYS else walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node

    return walk(cfg)


def relocate(cfg, workdir: Path):
    """Absolute and Windows paths moved into `workdir` (as relative paths): nothing else changes."""
    def fix(v):
        if v.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", v):
            return "relocated__" + re.sub(r"[^\w.-]+", "_", v).strip("_")
        return v

    return rewrite_refs(cfg, fix)


def stand_in_paths(cfg, workdir: Path):
    """For mergekit, which asks the hub for a repository's file list even when offline: every hub ID as the
    local folder of its stand-in (mmmerge reads the same stand-ins through the Hugging Face cache)."""
    def fix(v):
        folder = workdir / "_stand_ins" / re.sub(r"[^\w.-]+", "_", v)
        return str(folder) if HUB_ID.match(v) and not (workdir / v).exists() and folder.exists() else v

    return rewrite_refs(cfg, fix)


def layer_needs(cfg: dict) -> dict[str, int]:
    need: dict[str, int] = {}

    def walk(node):
        if isinstance(node, dict):
            if "layer_range" in node and isinstance(node.get("model"), str):
                need[node["model"]] = max(need.get(node["model"], 0), int(node["layer_range"][1]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for x in node:
                walk(x)

    walk(cfg)
    return need


def put_in_cache(hub_cache: Path, repo: str, folder: Path, commit: str = "0" * 40) -> None:
    root = hub_cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, snap, dirs_exist_ok=True)


def build_stand_ins(cfg: dict, arch: str, layers: int | None, workdir: Path, hub_cache: Path) -> None:
    import transformers as T

    from tiny_tokenizer import make_tokenizer

    need = layer_needs(cfg)
    count = max([layers or 4, *need.values()])
    tok_dir = workdir / "_tokenizer"
    tok = make_tokenizer(tok_dir)
    torch.manual_seed(zlib.crc32(arch.encode()))
    config = tiny_config(arch, count, len(tok))
    base = T.AutoModelForCausalLM.from_config(config)
    for ref in model_refs(cfg):
        base_ref, _, lora = ref.partition("+")
        for name in [base_ref] + ([lora] if lora else []):
            folder = workdir / "_stand_ins" / re.sub(r"[^\w.-]+", "_", name)
            if folder.exists():
                continue
            if name == lora:
                make_lora(base, folder, seed=zlib.crc32(name.encode()))
            else:
                model = T.AutoModelForCausalLM.from_config(config)
                model.load_state_dict(base.state_dict())
                g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn(p.shape, generator=g) * 0.02)
                model.to(torch.bfloat16).save_pretrained(folder)
                tok.save_pretrained(folder)
            if HUB_ID.match(name) and not (workdir / name).exists():
                put_in_cache(hub_cache, name, folder)
            else:
                target = workdir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    shutil.copytree(folder, target)


def make_lora(base, folder: Path, seed: int) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(type(base)(base.config), LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                                                                target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(folder)


def load_output(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest distance between same-position values, in units in the last place of their dtype (counted
    along the number line, across zero too)."""
    bits = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}.get(a.dtype)
    if bits is None:
        return 0 if torch.equal(a, b) else 1 << 30

    def line(x):
        i = x.view(bits).to(torch.int64)
        top = 1 << (8 * x.element_size() - 1)
        return torch.where(i < 0, -(i + top), i)  # negative floats mirrored below zero

    return int((line(a) - line(b)).abs().max()) if a.numel() else 0


def run_config(path: Path, workdir: Path) -> Outcome:
    """Both tools on one config; the outcome of the comparison."""
    import huggingface_hub.constants as constants

    text = path.read_text()
    name = path.name
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return Outcome(name, "both refuse", f"not YAML: {str(e).splitlines()[0]}")
    arch, layers = header(text)
    if arch in ("zamba2", "qwen2_vl"):
        return Outcome(name, "skipped", f"no tiny {arch} stand-in")
    cfg = relocate(cfg, workdir)
    hub_cache = workdir / "hf" / "hub"
    build_stand_ins(cfg, arch, layers, workdir, hub_cache)
    (workdir / "config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    old = os.getcwd(), constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    os.chdir(workdir)
    constants.HF_HUB_CACHE = str(hub_cache)  # huggingface_hub reads its settings once, at import
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        theirs, their_error = run_mergekit(stand_in_paths(cfg, workdir), workdir / "out-mergekit")
        ours, our_error = run_mmmerge(workdir / "config.yml", workdir / "out-mmmerge")
    finally:
        os.chdir(old[0])
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = old[1], old[2]
        if old[3] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
    if their_error and our_error:
        return Outcome(name, "both refuse", f"mergekit: {their_error} | mmmerge: {our_error}")
    if their_error:
        return Outcome(name, "mergekit refuses", their_error, len(ours))
    if our_error:
        return Outcome(name, "mmmerge refuses", our_error)
    return compare(name, workdir / "out-mergekit", workdir / "out-mmmerge", theirs, ours)


def run_mergekit(cfg: dict, out: Path):
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import MergeOptions, run_merge

    LoaderCache().loaders.clear()  # it keeps models by reference across runs: a name reused must be read again

    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                magnitude_sorts_stable():  # mmmerge's default tie_break: index (methods/_selection.py)
            run_merge(MergeConfiguration.model_validate(cfg), str(out),
                      options=MergeOptions(quiet=True, copy_tokenizer=True, write_model_card=False,
                                           random_seed=SEED, lora_merge_cache=str(out.parent / "lora-cache")))
        return load_output(out), None
    except Exception as e:  # noqa: BLE001  (mergekit's refusal, reported as it is)
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
    finally:
        logging.disable(logging.NOTSET)


def run_mmmerge(recipe: Path, out: Path):
    from mmmerge import merge
    from mmmerge.errors import MMMergeError

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            merge(str(recipe), out, quiet=True, seed=SEED, offline=True)
        return load_output(out), None
    except MMMergeError as e:
        return None, str(e)[:200]


def loaded_state(folder: Path) -> dict | None:
    """The model's in-memory tensors as transformers loads the folder (its own dtype), or None."""
    import transformers as T

    try:
        return {k: v.detach() for k, v in T.AutoModelForCausalLM.from_pretrained(folder, dtype="auto").state_dict().items()}
    except (OSError, ValueError, RuntimeError):
        return None


def compare(name: str, mk: Path, mm: Path, theirs: dict, ours: dict) -> Outcome:
    import json

    import transformers as T

    dropped = sorted(set(ours) - set(theirs))
    missing = sorted(set(theirs) - set(ours))
    layout = ""
    if missing:  # another key layout (mergekit writes Mixtral's experts fused): compare the loaded models
        theirs, ours = loaded_state(mk), loaded_state(mm)
        if theirs is None or ours is None or set(theirs) != set(ours):
            return Outcome(name, "differs", f"mmmerge lacks {missing[0]} ({len(missing)})", len(ours or {}), dropped)
        layout, dropped = f"mergekit writes another key layout ({missing[0]})", []
    worst, where, other_dtype = 0, "", ""
    for k, t in theirs.items():
        o = ours[k]
        if o.shape != t.shape:
            return Outcome(name, "differs", f"{k}: shape {tuple(o.shape)} vs {tuple(t.shape)}", len(ours), dropped)
        if o.dtype != t.dtype:  # mergekit's arcee_fusion and ramplus_tl write float32 whatever the config says
            other_dtype = f"mergekit writes {str(t.dtype).removeprefix('torch.')}"
            t = t.to(o.dtype)
        d = ulps(o, t)
        if d > worst:
            worst, where = d, k
    c1, c2 = (json.loads((p / "config.json").read_text()) for p in (mk, mm))
    for key in ("num_hidden_layers", "n_layer", "vocab_size"):
        if c1.get(key) != c2.get(key):
            return Outcome(name, "differs", f"config {key}: {c2.get(key)} vs mergekit's {c1.get(key)}", len(ours), dropped)
    if (mk / "tokenizer_config.json").is_file() != (mm / "tokenizer_config.json").is_file():
        return Outcome(name, "differs", "one output has a tokenizer, the other not", len(ours), dropped)
    if (mk / "tokenizer_config.json").is_file():
        v1 = T.AutoTokenizer.from_pretrained(mk).get_vocab()
        v2 = T.AutoTokenizer.from_pretrained(mm).get_vocab()
        if set(v1) != set(v2):
            return Outcome(name, "differs", "tokenizer vocabularies differ", len(ours), dropped)
    if worst == 0:
        status = "same values, other dtype" if other_dtype else "same values, other layout" if layout else "identical"
        return Outcome(name, status, other_dtype or layout, len(ours), dropped)
    if worst <= 1:
        return Outcome(name, "within 1 ulp", where, len(ours), dropped)
    return Outcome(name, "differs", f"{where}: {worst} ulps", len(ours), dropped)
