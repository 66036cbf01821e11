"""Published mergekit configs (tests/data/mergekit_configs/) through mergekit 0.1.5 and mmmerge on tiny stand-in
models: one line per config with the outcome, then the share merged identically. Run:

    python benchmarks/mergekit_corpus.py [NAME_SUBSTRING ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))
warnings.filterwarnings("ignore")

from mergekit_corpus import run_config  # noqa: E402

CONFIGS = ROOT / "tests" / "data" / "mergekit_configs"


def main(filters: list[str]) -> None:
    paths = [p for p in sorted(CONFIGS.glob("*.yml")) if not filters or any(f in p.name for f in filters)]
    counts: Counter = Counter()
    print("| config | outcome | detail | tensors mergekit left out |")
    print("|---|---|---|---|")
    for path in paths:
        start = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            o = run_config(path, Path(tmp))
        counts[o.status] += 1
        print(f"| {o.config} | {o.status} | {o.detail} | {len(o.mergekit_dropped)} | ({time.time() - start:.1f} s)",
              flush=True)
    merged = ("identical", "same values, other dtype", "same values, other layout", "within 1 ulp", "differs")
    both = sum(counts[s] for s in merged)
    print()
    print(", ".join(f"{k}: {v}" for k, v in counts.most_common()))
    if both:
        print(f"of the {both} configs both tools merged: {counts['identical']} identical bit for bit "
              f"({100 * counts['identical'] / both:.0f}%), "
              + ", ".join(f"{counts[s]} {s}" for s in merged[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
