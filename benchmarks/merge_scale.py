"""Merges at real shapes against the machine's I/O floor: time, memory and bytes moved, at 1B and 3B parameters.

Writes synthetic checkpoints of named real shapes straight to safetensors (random bf16 weights, no hub), a base
and three fine-tunes each (base + small noise), 2 shards per model, shaped as
- Llama-3.2-1B: hidden 2048, 16 layers, intermediate 8192, 32 heads, 8 KV heads, vocab 128256, tied embeddings;
- Llama-3.2-3B: hidden 3072, 28 layers, intermediate 8192, 24 heads, 8 KV heads, vocab 128256, tied embeddings.
Then runs ties (density 0.5) and linear with `dtype: bfloat16` through `mmmerge merge` (and, with `--mergekit`,
through mergekit at the sizes named) and measures each in its own process (benchmarks/measure.py): wall time,
peak anonymous memory and peak mapped-file memory (sampled), the kernel's peak RSS, and bytes read from and
written to storage. The I/O floor is measured in the same run: plain sequential reads of the same input files
and a plain write of the output's size, each in its own process; the line says whether the reads came from the
page cache (warm) or the disk (cold: 4 x 6.4 GB of 3B inputs do not fit in 24 GB of memory).

    python benchmarks/merge_scale.py [--sizes 1B,3B] [--mergekit 1B] [--workdir /tmp/mmmerge-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import yaml

from measure import Run, Runner, drop_page_cache, folder_bytes, machine_line, tool_env
from mmmerge.checkpoint import LazyTensor
from mmmerge.io import write_safetensors

SHAPES = {  # as the published config.json files give them
    "1B": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
               num_key_value_heads=8),
    "3B": dict(hidden_size=3072, num_hidden_layers=28, intermediate_size=8192, num_attention_heads=24,
               num_key_value_heads=8),
    "tiny": dict(hidden_size=256, num_hidden_layers=2, intermediate_size=512, num_attention_heads=4,
                 num_key_value_heads=2),  # a quick look at the script itself
}
VOCAB = 128256

READER = r"""
import sys
total = 0
buffer = bytearray(64 << 20)
for path in sys.argv[1:]:
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            total += n
print(total)
"""

WRITER = r"""
import os, sys
block, left = os.urandom(64 << 20), int(sys.argv[2])
with open(sys.argv[1], "wb", buffering=0) as f:
    while left > 0:
        left -= f.write(block[:min(left, len(block))])
"""


def llama_shapes(size: str) -> dict[str, tuple]:
    s = SHAPES[size]
    h, i, heads, kv = s["hidden_size"], s["intermediate_size"], s["num_attention_heads"], s["num_key_value_heads"]
    d = h // heads
    shapes = {"model.embed_tokens.weight": (VOCAB, h)}
    for n in range(s["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (heads * d, h), p + "self_attn.k_proj.weight": (kv * d, h),
                       p + "self_attn.v_proj.weight": (kv * d, h), p + "self_attn.o_proj.weight": (h, heads * d),
                       p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                       p + "mlp.down_proj.weight": (h, i)})
    shapes["model.norm.weight"] = (h,)
    return shapes


def config(size: str) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
            "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
            "max_position_embeddings": 131072, "bos_token_id": 128000, "eos_token_id": 128001,
            "torch_dtype": "bfloat16", **SHAPES[size]}


def build(root: Path, size: str) -> list[Path]:
    """A base and three fine-tunes, written tensor by tensor (one tensor in memory at a time)."""
    shapes = llama_shapes(size)
    total = sum(torch.Size(s).numel() * 2 for s in shapes.values())
    paths = []
    for i, name in enumerate(["base", "ft1", "ft2", "ft3"]):
        path = root / f"{size}-{name}"
        paths.append(path)
        if (path / "model.safetensors.index.json").exists():
            continue
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(config(size), indent=2))

        def make(shape, key, i=i):
            seed = sum(map(ord, key)) * 131 + len(key)
            value = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02
            if i:
                value += torch.randn(shape, generator=torch.Generator().manual_seed(seed * 7 + i)) * 0.002
            return value.to(torch.bfloat16)

        tensors = {k: LazyTensor(s, torch.bfloat16, lambda s=s, k=k: make(s, k)) for k, s in shapes.items()}
        write_safetensors(path, tensors, max_shard_bytes=total // 2 + (64 << 20))
        print(f"wrote {path} ({folder_bytes(path) / 2**30:.2f} GiB)", flush=True)
    return paths


def recipe(method: str, paths: list[Path]) -> dict:
    base, *fts = [str(p) for p in paths]
    if method == "ties":
        return {"merge_method": "ties", "base_model": base, "dtype": "bfloat16",
                "models": [{"model": p, "parameters": {"weight": w, "density": 0.5}} for p, w in zip(fts, (0.5, 0.3, 0.2))]}
    return {"merge_method": "linear", "dtype": "bfloat16",
            "models": [{"model": p, "parameters": {"weight": w}} for p, w in zip(fts, (0.5, 0.3, 0.2))]}


def weight_files(paths: list[Path], method: str) -> list[str]:
    chosen = paths if method == "ties" else paths[1:]  # linear reads the three fine-tunes only
    return [str(f) for p in chosen for f in sorted(p.glob("*.safetensors"))]


def row(size, method, tool, r: Run, floor: float, nbytes_in: int, nbytes_out: int) -> str:
    return (f"| {size} | {method} | {tool} | {r.wall:.1f} | {floor:.1f} | {r.wall / floor:.1f}x | {r.peak_anon:.0f} | "
            f"{r.peak_file:.0f} | {r.peak_rss:.0f} | {nbytes_in / 2**30:.1f} / {nbytes_out / 2**30:.1f} | "
            f"{r.read_bytes / 2**30:.1f} / {r.write_bytes / 2**30:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mmmerge-scale"))
    ap.add_argument("--sizes", default="1B,3B")
    ap.add_argument("--methods", default="ties,linear")
    ap.add_argument("--mergekit", default="1B", help="sizes also merged by mergekit ('' for none)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints for another run")
    args = ap.parse_args()
    env = tool_env(HF_HUB_OFFLINE="1", MMMERGE_CACHE_DIR=str(args.workdir / "cache"))
    bindir = Path(sys.executable).parent
    runner = Runner(interval=0.1)
    rows = []
    print(f"start: {machine_line()}", flush=True)
    for size in args.sizes.split(","):
        paths = build(args.workdir, size)
        # mmmerge keeps each architecture's file layout on disk: warm it, as any earlier run on a Llama has
        runner.run([str(bindir / "mmmerge"), "inspect", str(paths[0])], env)
        for method in args.methods.split(","):
            cfg = args.workdir / f"{size}-{method}.yml"
            cfg.write_text(yaml.safe_dump(recipe(method, paths)))
            files = weight_files(paths, method)
            nbytes_in = sum(os.path.getsize(f) for f in files)
            tools = [("mmmerge", [str(bindir / "mmmerge"), "merge", str(cfg), "--out", "{out}", "--quiet"])]
            if size in args.mergekit.split(","):
                tools.append(("mergekit", [str(bindir / "mergekit-yaml"), str(cfg), "{out}", "--no-copy-tokenizer",
                                           "--quiet", "--lazy-unpickle"]))
            for tool, cmd in tools:
                out = args.workdir / f"out-{size}-{method}-{tool}"
                shutil.rmtree(out, ignore_errors=True)
                cold = size == "3B" and drop_page_cache()  # 3B inputs do not fit in memory: every run reads disk
                floor_read = runner.run([sys.executable, "-c", READER, *files], env)
                if cold:
                    drop_page_cache()
                r = runner.run([c.replace("{out}", str(out)) for c in cmd], env)
                nbytes_out = folder_bytes(out)
                shutil.rmtree(out)
                floor_write = runner.run([sys.executable, "-c", WRITER, str(args.workdir / "floor.bin"),
                                          str(nbytes_out)], env)
                os.remove(args.workdir / "floor.bin")
                floor = floor_read.wall + floor_write.wall
                cache = "cold (page cache dropped)" if cold else (
                    "warm" if floor_read.read_bytes < nbytes_in / 10 else "partly cold")
                print(f"{size} {method} {tool}: {r.wall:.1f} s; I/O floor {floor:.1f} s (read {nbytes_in / 2**30:.1f} "
                      f"GiB in {floor_read.wall:.1f} s, {cache}; write {nbytes_out / 2**30:.1f} GiB in "
                      f"{floor_write.wall:.1f} s); {machine_line()}", flush=True)
                rows.append(row(size, method, tool, r, floor, nbytes_in, nbytes_out) + f" {cache} |")
        if not args.keep:
            for p in paths:
                shutil.rmtree(p)
    print("\n| shape | method | tool | wall s | I/O floor s | wall / floor | peak anonymous MiB | peak mapped-file "
          "MiB | peak RSS MiB | input / output GiB | read / written from storage GiB | floor's reads |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nend: {machine_line()}, torch {torch.__version__}. Anonymous memory: the process's own; mapped-file "
          "memory: input pages mapped while a tensor is merged and the output's pages as they are written, which the "
          "kernel can drop. I/O floor: sequential reads of the input files plus a plain write of the output's size.")


if __name__ == "__main__":
    main()
