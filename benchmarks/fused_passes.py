"""The compiled bf16 TIES merge (mmmerge/methods/_fused_half.py) against the torch path on the same in-memory
tensors, and each of its two passes with one thread and with all of torch's threads: how much faster the kernels
are than torch's operations, and whether a pass is bound by arithmetic (it speeds up with a second thread) or by
memory (it does not). No files are read or written, so the page cache and the disk play no part.

    python benchmarks/fused_passes.py [--rows 8192] [--cols 2048] [--repeat 5]

The default shape is a Llama-3.2-1B MLP matrix; the base and three fine-tunes are random bf16 (base + small
noise), merged with ties (density 0.5, weights 0.5 / 0.3 / 0.2) as published configs write it (bf16).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from measure import machine_line
from mmmerge.methods import _fused_half
from mmmerge.methods import task_arithmetic as ta

GLOBAL = {"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False, "tie_break": "index"}


def median_of(repeat: int, fn) -> float:
    """The median of `repeat` timed calls, after one untimed call (which loads or compiles the kernels)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(args.rows, args.cols, generator=g) * 0.02).to(torch.bfloat16)
    models = [(base.float() + torch.randn(base.shape, generator=g) * 0.002).to(torch.bfloat16) for _ in range(3)]
    params = [{"weight": w, "density": 0.5} for w in (0.5, 0.3, 0.2)]
    n = base.numel()
    keep = [n // 2] * 3
    out = torch.empty_like(base)
    threads = torch.get_num_threads()
    print(f"start: {machine_line()}; {args.rows} x {args.cols} bf16, base + 3 models, torch threads {threads}")

    def compiled():
        return ta._merge(models, base, params, GLOBAL, None, sparsify=ta._magnitude, consensus=True,
                         half=torch.bfloat16, out=out)

    def torch_path():
        real, ta._fused = ta._fused, lambda *a: None
        try:
            return ta._merge(models, base, params, GLOBAL, None, sparsify=ta._magnitude, consensus=True,
                             half=torch.bfloat16)
        finally:
            ta._fused = real

    same = torch.equal(compiled().view(torch.int16), torch_path().view(torch.int16))
    t_compiled, t_torch = median_of(args.repeat, compiled), median_of(args.repeat, torch_path)
    cut, split = (np.array(column, dtype=np.int64) for column in zip(*_fused_half.top_cuts(base, models, keep)))
    weights = torch.tensor([p["weight"] for p in params], dtype=torch.bfloat16).float().tolist()

    def merge_pass():  # TIES' second pass, with the cuts the first one found
        _fused_half.merge_pass(models, base, cut, split, weights, consensus=True, normalize=True, divisor=1.0,
                               lam=1.0, out=out)

    rows = []
    for label, fn, entries in [("histogram pass (3 models)", lambda: _fused_half.top_cuts(base, models, keep), 3 * n),
                               ("merge pass", merge_pass, n)]:
        timed = {}
        for t in sorted({1, threads}):
            torch.set_num_threads(t)
            timed[t] = median_of(args.repeat, fn)
        torch.set_num_threads(threads)
        rows.append((label, entries, timed))
    print(f"\nties, whole merge: compiled {t_compiled * 1e3:.1f} ms, torch path {t_torch * 1e3:.1f} ms: "
          f"{t_torch / t_compiled:.2f}x; bit for bit the same: {same}")
    print(f"\n| pass | ns per entry, 1 thread | ns per entry, {threads} threads | speed-up from threads |")
    print("|---|---|---|---|")
    for label, entries, timed in rows:
        one, many = timed[1], timed[threads]
        print(f"| {label} | {one / entries * 1e9:.2f} | {many / entries * 1e9:.2f} | {one / many:.2f}x |")
    print(f"\nend: {machine_line()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
