"""What computing a half-precision merge as mergekit does (the default: in the config's bf16) costs against
mmmerge's float32 kernels (`compute_dtype: float32`), on the same models in the same run.

Builds a bf16 base Llama and three fine-tunes (as benchmarks/merge_vs_mergekit.py does, smaller by default),
then merges ties, dare_ties (seeded) and task_arithmetic with `dtype: bfloat16` both ways, each `--repeat`
times in this process (the two alternating), and prints the median wall time of each and their ratio.

    python benchmarks/compute_dtype_cost.py [--layers 8] [--hidden 768] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from merge_vs_mergekit import build_models  # noqa: E402

from mmmerge import merge  # noqa: E402


def recipe(method: str, paths: list[Path], compute: str | None) -> dict:
    base, *fts = [str(p.absolute()) for p in paths]
    models = [{"model": p, "parameters": {"weight": w, "density": 0.5}} for p, w in zip(fts, (0.5, 0.3, 0.2))]
    cfg = {"merge_method": method, "base_model": base, "models": models, "dtype": "bfloat16"}
    if compute:
        cfg["compute_dtype"] = compute
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = build_models(root / "models", args.layers, args.hidden)
        print("| method | as mergekit (bf16) s | float32 kernels s | ratio |")
        print("|---|---|---|---|")
        for method in ("ties", "dare_ties", "task_arithmetic"):
            times = {None: [], "float32": []}
            for _ in range(args.repeat):
                for compute in (None, "float32"):
                    out = root / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    start = time.perf_counter()
                    merge(recipe(method, paths, compute), out, quiet=True, seed=0)
                    times[compute].append(time.perf_counter() - start)
            native, wide = statistics.median(times[None]), statistics.median(times["float32"])
            print(f"| {method} | {native:.2f} | {wide:.2f} | {native / wide:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
