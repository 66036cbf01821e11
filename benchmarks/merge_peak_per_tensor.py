"""Peak memory of merging one tensor, as a multiple of that tensor in float32: the bound README states.

For each recipe, a fresh process plans the merge, runs the task of the largest output tensor, and reads the
process's peak resident size before and after (the difference is what merging that tensor needed).

    python benchmarks/merge_vs_mergekit.py            # writes ties.yml and linear.yml into its workdir
    python benchmarks/merge_peak_per_tensor.py /tmp/mmmerge-bench/ties.yml /tmp/mmmerge-bench/linear.yml
"""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import resource, sys, torch
from mmmerge.engine import plan_merge
from mmmerge.engine.execute import run_task
task = max(plan_merge(sys.argv[1]).tasks, key=lambda t: t.nbytes)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run_task(task, torch.device("cpu"))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
f32 = task.nbytes // task.dtype.itemsize * 4 / 1024
print(f"{task.name} {tuple(task.shape)}|{f32 / 1024:.0f}|{before / 1024:.0f}|{(after - before) / 1024:.0f}|{(after - before) / f32:.1f}")
"""


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("| recipe | largest tensor | float32 MiB | process before MiB | added MiB | added / tensor |")
    print("|---|---|---|---|---|---|")
    for recipe in sys.argv[1:]:
        out = subprocess.run([sys.executable, "-c", CHILD, recipe], capture_output=True, text=True, check=True)
        print(f"| {recipe} | " + " | ".join(out.stdout.strip().splitlines()[-1].split("|")) + " |")


if __name__ == "__main__":
    main()
