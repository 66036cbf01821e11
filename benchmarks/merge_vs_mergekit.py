"""mmmerge against mergekit on the same configs, in the same run: wall time, peak memory, agreement.

Builds a base Llama and three fine-tunes of it (~250M parameters each, bf16; `--layers`/`--hidden` make
them smaller for a quick look), then runs ties (density 0.5), linear and dare_ties (density 0.5; both tools
seeded 0, mergekit's one random stream) through `mergekit-yaml` and `mmmerge merge`, each in its own process
(benchmarks/measure.py reads its memory). First the form published configs take, `dtype: bfloat16` (mergekit
computes in bf16, rounding after every operation; mmmerge gives the same bits), then `dtype: float32` with
`out_dtype: bfloat16`.

    python benchmarks/merge_vs_mergekit.py [--workdir DIR] [--layers 16] [--hidden 1024] [--repeat 3]

Each command runs `--repeat` times, the two tools alternating; the table gives the median wall time and the
largest peaks of each.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from measure import Run, Runner, machine_line, tool_env
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




FORMS = {"bf16": {"dtype": "bfloat16"}, "f32": {"dtype": "float32", "out_dtype": "bfloat16"}}


def recipe(method: str, form: str, paths: list[Path]) -> dict:
    base, *fts = [str(p.absolute()) for p in paths]
    if method in ("ties", "dare_ties"):
        models = [{"model": p, "parameters": {"weight": w, "density": 0.5}} for p, w in zip(fts, (0.5, 0.3, 0.2))]
        return {"merge_method": method, "base_model": base, "models": models, **FORMS[form]}
    models = [{"model": p, "parameters": {"weight": w}} for p, w in zip(fts, (0.5, 0.3, 0.2))]
    return {"merge_method": "linear", "models": models, **FORMS[form]}


def summary(runs: list[Run]) -> tuple[float, float, float]:
    """(median wall seconds, largest peak resident MiB, largest peak anonymous MiB) of repeated runs."""
    return statistics.median(r.wall for r in runs), max(r.peak_rss for r in runs), max(r.peak_anon for r in runs)


def differences(a: Path, b: Path) -> tuple[int, int, float]:
    """(tensors equal bit for bit, tensors, fraction of entries that differ) between two outputs."""
    ta, tb = read_tensors(a), read_tensors(b)
    if set(ta) != set(tb):
        return 0, max(len(ta), len(tb)), 1.0
    same, differ, total = 0, 0, 0
    for k in ta:
        x, y = ta[k].load(), tb[k].load()
        equal = x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8))
        same += equal
        differ += 0 if equal else int((x.float() != y.float()).sum())
        total += x.numel()
    return same, len(ta), differ / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mmmerge-bench"))
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--runs", default="ties-bf16,linear-bf16,dare_ties-bf16,ties-f32,linear-f32",
                    help="METHOD-FORM, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    paths = build_models(args.workdir / f"models-{args.layers}x{args.hidden}", args.layers, args.hidden)
    env = tool_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MMMERGE_CACHE_DIR=str(args.workdir / "mmmerge-cache"))
    bindir = Path(sys.executable).parent
    runner = Runner()
    print(f"start: {machine_line()}", flush=True)
    # mmmerge keeps each architecture's file layout on disk (building it imports the transformers model
    # class, 1.7 s per process); warm it as any earlier mmmerge run on this architecture would have.
    shutil.rmtree(args.workdir / "mmmerge-cache", ignore_errors=True)
    cold = runner.run([str(bindir / "mmmerge"), "inspect", str(paths[0])], env).wall
    warm = runner.run([str(bindir / "mmmerge"), "inspect", str(paths[0])], env).wall
    rows = []
    for run in args.runs.split(","):
        method, form = run.split("-")
        cfg = args.workdir / f"{run}.yml"
        cfg.write_text(yaml.safe_dump(recipe(method, form, paths)))
        out_k, out_m = args.workdir / f"out-mergekit-{run}", args.workdir / f"out-mmmerge-{run}"
        runs_k, runs_m = [], []
        # DARE draws at random: both tools seeded alike (mergekit's one stream), so their outputs can be compared
        seeds = (["--random-seed", "0"], ["--seed", "0"]) if method.startswith("dare") else ([], [])
        for _ in range(args.repeat):
            # Each command starts right after its own previous output is deleted, so both write into memory
            # the system has just freed (on a VM, memory touched for the first time is much slower).
            shutil.rmtree(out_k, ignore_errors=True)
            runs_k.append(runner.run([str(bindir / "mergekit-yaml"), str(cfg), str(out_k), "--no-copy-tokenizer",
                                      "--quiet", *seeds[0]], env))
            shutil.rmtree(out_m, ignore_errors=True)
            runs_m.append(runner.run([str(bindir / "mmmerge"), "merge", str(cfg), "--out", str(out_m), "--quiet",
                                      *seeds[1]], env))
        print(f"{run}: mergekit {', '.join(f'{r.wall:.1f}' for r in runs_k)} s; "
              f"mmmerge {', '.join(f'{r.wall:.1f}' for r in runs_m)} s ({machine_line()})", flush=True)
        rows.append((run, *summary(runs_k), *summary(runs_m), *differences(out_k, out_m)))
    print("\n| config | mergekit s | mmmerge s | speed-up | peak RSS MiB, mergekit / mmmerge | memory ratio "
          "| peak anonymous MiB, mergekit / mmmerge | tensors bit for bit | entries that differ |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run, tk, rk, ak, tm, rm, am, same, n, differ in rows:
        print(f"| {run} | {tk:.1f} | {tm:.1f} | {tk / tm:.2f}x | {rk:.0f} / {rm:.0f} | {rm / rk:.2f} | {ak:.0f} / {am:.0f} "
              f"| {same} of {n} | {differ:.3%} |")
    print(f"\nmmmerge ran with its layout cache warm: `mmmerge inspect` took {cold:.1f} s cold, {warm:.1f} s warm.")
    print(f"end: {machine_line()}, torch {torch.__version__}. Peak RSS includes the input pages mapped while a "
          "tensor is merged. Entries that differ in ties: equal magnitudes at the top-k cut, which mmmerge takes in "
          "index order (`tie_break: index`, the default) and mergekit's unstable argsort in an order of its own "
          "(`tie_break: sort` gives mergekit's on the same machine).")


if __name__ == "__main__":
    main()
