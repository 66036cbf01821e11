"""The wall times the README and notebooks/README.md quote, measured as a user runs them: `mmmerge demo`, each
notebook, and every line of the README's Commands block on the examples, each line its own process (the
`mmmerge` command, so each pays Python's and torch's start), in order, from a fresh folder. The load average is
printed beside each (the times on a busy machine are longer; say which one you quote).

    python benchmarks/readme_times.py            # about 5 minutes on 2 cores
    python benchmarks/readme_times.py --only demo notebooks
"""

from __future__ import annotations

import argparse
import os
import shlex
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
def timed(argv: list[str], cwd: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def readme_lines(work: Path) -> list[tuple[str, list[str], Path]]:
    """(the line as written, the argv that runs it, its folder) for each line of the README's Commands block, as a
    user types them from the repository's root: `python` is this interpreter, `mmmerge` the installed command,
    `cd` changes the folder of the lines after it."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "examples")]  # as tests/conftest.py puts them
    from test_examples import SKIPPED, readme_commands

    cwd, lines = work, []
    mmmerge = str(Path(sys.executable).parent / "mmmerge")
    for argv in readme_commands():
        if argv[0] == "cd":
            cwd = cwd / argv[1]
        elif argv[0] == "python":
            lines.append((shlex.join(argv), [sys.executable, str(REPO / argv[1]), *argv[2:]], cwd))
        elif argv[0] == "mmmerge" and argv[1] not in SKIPPED:
            lines.append((shlex.join(argv), [mmmerge, *argv[1:]], cwd))
    return lines


def jobs(work: Path) -> dict:
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    work.mkdir(exist_ok=True)
    return {
        "demo": [("mmmerge demo", [sys.executable, "-m", "mmmerge", "demo", "--out", str(work / "demo"), "--quiet"],
                  work)],
        "notebooks": [(f"notebooks/{nb.name}", [sys.executable, "-c", NOTEBOOK_RUNNER, str(nb), str(nb.parent)], work)
                      for nb in notebooks],
        "commands": readme_lines(work / "readme"),
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
            total = 0.0
            for name, argv, cwd in runs:
                cwd.mkdir(parents=True, exist_ok=True)
                load = os.getloadavg()[0]
                secs = timed(argv, cwd)
                total += secs
                print(f"| {name} | {secs:.1f} | {load:.1f} |", flush=True)
            if group == "commands":
                print(f"| README Commands block (but the demo), {len(runs)} lines, each its own process | "
                      f"{total:.0f} | |", flush=True)


if __name__ == "__main__":
    main()
