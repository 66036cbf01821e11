"""The wall times the README and notebooks/README.md quote, measured: `mmmerge demo`, each notebook, and the
README's Commands block on the examples. Each runs in its own process, one after the other, and the load average
is printed beside it (the times on a busy machine are longer; say which one you quote).

    python benchmarks/readme_times.py            # about 5 minutes on 2 cores
    python benchmarks/readme_times.py --only demo notebooks
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_RUNNER = """
import sys, nbclient, nbformat
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
"""
COMMANDS_RUNNER = """
import pathlib, sys
sys.path.insert(0, sys.argv[1])
from test_examples import run_readme

work = pathlib.Path(sys.argv[2])
work.mkdir()
_, results = run_readme(work)
sys.exit(1 if any(code != 0 for _, code, _, _ in results) else 0)
"""


def timed(argv: list[str], cwd: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def jobs(work: Path) -> dict:
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    return {
        "demo": [("mmmerge demo", [sys.executable, "-m", "mmmerge", "demo", "--out", str(work / "demo"), "--quiet"])],
        "notebooks": [(f"notebooks/{nb.name}", [sys.executable, "-c", NOTEBOOK_RUNNER, str(nb), str(nb.parent)])
                      for nb in notebooks],
        "commands": [("README Commands block (but the demo)",
                      [sys.executable, "-c", COMMANDS_RUNNER, str(REPO / "tests"), str(work / "readme")])],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=["demo", "notebooks", "commands"], default=None)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, python {sys.version.split()[0]}")
    print("| what | wall s | load average (1 min) before |\n|---|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="mmmerge-times-") as tmp:
        for group, runs in jobs(Path(tmp)).items():
            if args.only and group not in args.only:
                continue
            for name, argv in runs:
                load = os.getloadavg()[0]
                secs = timed(argv, Path(tmp))
                print(f"| {name} | {secs:.0f} | {load:.1f} |", flush=True)


if __name__ == "__main__":
    main()
