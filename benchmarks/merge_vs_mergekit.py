"""mmmerge against mergekit on the same configs, in the same run: wall time, peak memory, agreement.

Builds a base Llama and three fine-tunes of it (~250M parameters each, bf16; `--layers`/`--hidden` make
them smaller for a quick look), then runs ties (density 0.5) and linear through `mergekit-yaml` and
`mmmerge merge`, each in its own process so its peak resident memory can be read from the kernel.

    python benchmarks/merge_vs_mergekit.py [--workdir DIR] [--layers 16] [--hidden 1024] [--repeat 3]

Each command runs `--repeat` times, the two tools alternating; the table gives the median wall time and the
largest peak of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from mmmerge.checkpoint import LazyTensor
from mmmerge.io import read_tensors, write_safetensors


def build_models(root: Path, layers: int, hidden: int) -> list[Path]:
    """A random base and three fine-tunes (base + small noise), written as bf16 transformers folders."""
    config = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 2.75), num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=32000,
                         tie_word_embeddings=False, dtype="bfloat16", architectures=["LlamaForCausalLM"])
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    paths = []
    for i, name in enumerate(["base", "ft1", "ft2", "ft3"]):
        path = root / name
        paths.append(path)
        if (path / "model.safetensors.index.json").exists() or (path / "model.safetensors").exists():
            continue
        path.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(path)

        def make(shape, key, i=i):
            g = torch.Generator().manual_seed(hash(key) % 2**31)
            base = torch.randn(shape, generator=g) * 0.02
            if i:
                base += torch.randn(shape, generator=torch.Generator().manual_seed(i * 7919 + hash(key) % 9973)) * 0.002
            return base.to(torch.bfloat16)

        tensors = {k: LazyTensor(s, torch.bfloat16, lambda s=s, k=k: make(s, k)) for k, s in shapes.items()}
        write_safetensors(path, tensors, max_shard_bytes=1 << 30)
    n = sum(t.numel for t in read_tensors(paths[0]).values())
    print(f"models: base + 3 fine-tunes, {n / 1e6:.0f}M parameters each, bf16, in {root}")
    return paths


def recipe(method: str, paths: list[Path]) -> dict:
    base, *fts = [str(p.absolute()) for p in paths]
    if method == "ties":
        models = [{"model": p, "parameters": {"weight": w, "density": 0.5}} for p, w in zip(fts, (0.5, 0.3, 0.2))]
        return {"merge_method": "ties", "base_model": base, "models": models,
                "parameters": {"normalize": True}, "dtype": "float32", "out_dtype": "bfloat16"}
    models = [{"model": p, "parameters": {"weight": w}} for p, w in zip(fts, (0.5, 0.3, 0.2))]
    return {"merge_method": "linear", "models": models, "dtype": "float32", "out_dtype": "bfloat16"}


# Peak memory is read from the kernel when a command ends (wait4's ru_maxrss). A process forked from this
# one would start with this process's resident size as its peak (Linux carries the parent's size across
# fork and exec), so the commands are started by a small runner process instead.
RUNNER = """
import json, os, subprocess, sys, tempfile, time
for line in sys.stdin:
    cmd, env = json.loads(line)
    os.sync()  # no command starts behind the previous one's unwritten output
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        err.seek(0)
        tail = err.read().decode(errors="replace")[-2000:]
    print(json.dumps([wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), tail]), flush=True)
"""


class Runner:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def timed(self, cmd: list[str], env: dict) -> tuple[float, float]:
        """(wall seconds, peak resident MiB) of a command run in its own process."""
        self.proc.stdin.write(json.dumps([cmd, env]) + "\n")
        self.proc.stdin.flush()
        wall, peak, code, tail = json.loads(self.proc.stdout.readline())
        if code != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{tail}")
        return wall, peak


def summary(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """(median wall seconds, largest peak MiB) of repeated runs."""
    return statistics.median(t for t, _ in runs), max(m for _, m in runs)


def differences(a: Path, b: Path) -> tuple[float, float]:
    """(max abs difference, fraction of entries more than one bf16 step apart) between two outputs."""
    ta, tb = read_tensors(a), read_tensors(b)
    if set(ta) != set(tb):
        return float("inf"), 1.0
    worst, far, total = 0.0, 0, 0
    for k in ta:
        x, y = ta[k].load().float(), tb[k].load().float()
        gap = (x - y).abs()
        worst = max(worst, gap.max().item())
        far += int((gap > x.abs().clamp_min(1e-30) * 2**-7).sum())
        total += x.numel()
    return worst, far / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mmmerge-bench"))
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--methods", default="ties,linear")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    paths = build_models(args.workdir / f"models-{args.layers}x{args.hidden}", args.layers, args.hidden)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MMMERGE_CACHE_DIR": str(args.workdir / "mmmerge-cache")}
    bindir = Path(sys.executable).parent
    timed = Runner().timed
    # mmmerge keeps each architecture's file layout on disk (building it imports the transformers model
    # class, 1.7 s per process); warm it as any earlier mmmerge run on this architecture would have.
    shutil.rmtree(args.workdir / "mmmerge-cache", ignore_errors=True)
    cold, _ = timed([str(bindir / "mmmerge"), "inspect", str(paths[0])], env)
    warm, _ = timed([str(bindir / "mmmerge"), "inspect", str(paths[0])], env)
    rows = []
    for method in args.methods.split(","):
        cfg = args.workdir / f"{method}.yml"
        cfg.write_text(yaml.safe_dump(recipe(method, paths)))
        out_k, out_m = args.workdir / f"out-mergekit-{method}", args.workdir / f"out-mmmerge-{method}"
        runs_k, runs_m = [], []
        for _ in range(args.repeat):
            # Each command starts right after its own previous output is deleted, so both write into memory
            # the system has just freed (on a VM, memory touched for the first time is much slower).
            shutil.rmtree(out_k, ignore_errors=True)
            runs_k.append(timed([str(bindir / "mergekit-yaml"), str(cfg), str(out_k), "--no-copy-tokenizer", "--quiet"], env))
            shutil.rmtree(out_m, ignore_errors=True)
            runs_m.append(timed([str(bindir / "mmmerge"), "merge", str(cfg), "--out", str(out_m), "--quiet"], env))
        (tk, mk), (tm, mm) = summary(runs_k), summary(runs_m)
        print(f"{method}: mergekit {', '.join(f'{t:.1f}' for t, _ in runs_k)} s; "
              f"mmmerge {', '.join(f'{t:.1f}' for t, _ in runs_m)} s", flush=True)
        rows.append((method, tk, tm, mk, mm, *differences(out_k, out_m)))
    print("\n| method | mergekit s | mmmerge s | speed-up | mergekit peak MiB | mmmerge peak MiB | memory ratio "
          "| max abs diff | entries > 1 bf16 step apart |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method, tk, tm, mk, mm, diff, far in rows:
        print(f"| {method} | {tk:.1f} | {tm:.1f} | {tk / tm:.2f}x | {mk:.0f} | {mm:.0f} | {mm / mk:.2f} | {diff:.2e} "
              f"| {far:.4%} |")
    print(f"\nmmmerge ran with its layout cache warm: `mmmerge inspect` took {cold:.1f} s cold, {warm:.1f} s warm.")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, torch {torch.__version__}. "
          "Entries apart: for ties, the entries tied in magnitude at the top-k cut, where mergekit's argsort and "
          "mmmerge's selection pick different ones (see README); otherwise bf16 rounding of float32 sums.")


if __name__ == "__main__":
    main()
