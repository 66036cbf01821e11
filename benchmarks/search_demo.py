"""The demo's searched merge against the base and the best fixed-setting merge, on held-out questions, over seeds
(issue #15). Each seed runs the whole `mmmerge demo` (its own world, models, fixed merges and search; the search
chooses on a validation split that never shows a test scene) and reads its report.json.

    python benchmarks/search_demo.py                  # seeds 0 1 2, two at a time; about 2 minutes a seed on 2 cores
    python benchmarks/search_demo.py --seeds 0 --workers 1 --json out.json

Prints, per seed, held-out overall accuracy (%) of the base, the best fixed-setting merge, the searched merge and
the multi-task upper bound, then the mean and spread (min-max) of the searched merge's margins.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def run_seed(seed: int) -> dict:
    from mmmerge.demo import run_demo

    start = time.time()
    with tempfile.TemporaryDirectory(prefix=f"mmmerge-search-demo-{seed}-") as tmp:
        report = run_demo(Path(tmp) / "demo", seed=seed, device="cpu", progress=False)
    acc = {n: 100 * a["overall"] for n, a in report["accuracy"].items()}
    fixed = [n for n in report["merged"] if n != "searched"]
    best_fixed = max(fixed, key=lambda n: acc[n])
    return {"seed": seed, "base": acc["base"], "best_fixed": best_fixed, "best_fixed_score": acc[best_fixed],
            "fixed": {n: acc[n] for n in fixed}, "searched": acc["searched"], "multitask": acc["multitask"],
            "searched_recipe": report["recipes"]["searched"], "seconds": round(time.time() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run_seed, args.seeds))
    print(f"{'seed':>4} {'base':>6} {'best fixed merge':>26} {'searched':>9} {'vs base':>8} {'vs fixed':>9} "
          f"{'multitask':>10}")
    for r in rows:
        fixed = f"{r['best_fixed']} {r['best_fixed_score']:.1f}"
        print(f"{r['seed']:>4} {r['base']:6.1f} {fixed:>26} "
              f"{r['searched']:9.1f} {r['searched'] - r['base']:+8.1f} {r['searched'] - r['best_fixed_score']:+9.1f} "
              f"{r['multitask']:10.1f}")
    for what, key in (("base", "base"), ("the best fixed merge", "best_fixed_score")):
        margins = [r["searched"] - r[key] for r in rows]
        print(f"searched vs {what}: mean {statistics.mean(margins):+.1f}, spread {min(margins):+.1f} to "
              f"{max(margins):+.1f} points; beats it on {sum(m > 0 for m in margins)} of {len(rows)} seeds")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
