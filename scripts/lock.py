"""The lock of tested versions (constraints.txt) and the README's "Tested versions" line made from it.

`python scripts/lock.py update` writes the running environment's exact versions into constraints.txt and the
line into README.md: run it in an environment where the whole suite has just passed (for example the one
`scripts/test-latest` builds). tests/test_lock.py keeps the README's line equal to the file.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
README = ROOT / "README.md"

# the packages whose versions decide results, in the order the README names them
DECISIVE = ["torch", "torchvision", "transformers", "tokenizers", "huggingface_hub", "safetensors", "peft", "timm",
            "open_clip_torch", "optuna", "numpy", "numba", "pillow", "mergekit"]
HEADER = "# The exact versions the test suite last passed with (scripts/lock.py update wrote them; Python {python})."
MARK = "<!-- tested-versions -->"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> tuple[str, dict[str, str]]:
    """(the Python version the lock was made with, {canonical package name: exact version})."""
    text = path.read_text()
    python = re.search(r"Python (\d+\.\d+)", text.splitlines()[0]).group(1)
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version.strip()
    return python, pins


def tested_versions_line(path: Path = LOCK) -> str:
    python, pins = read_lock(path)
    named = [f"{name} {pins[canonical(name)]}" for name in DECISIVE]
    return f"Python {python}, " + ", ".join(named) + " (mergekit as the tests' oracle)."


def readme_line(readme: Path = README) -> str:
    """The line that follows the marker in the README."""
    lines = readme.read_text().splitlines()
    return lines[lines.index(MARK) + 1]


def update() -> None:
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout
    pins = sorted(line for line in frozen.splitlines() if "==" in line and not line.startswith("-e"))
    python = ".".join(platform.python_version_tuple()[:2])
    LOCK.write_text(HEADER.format(python=python) + "\n" + "\n".join(pins) + "\n")
    lines = README.read_text().splitlines()
    lines[lines.index(MARK) + 1] = tested_versions_line()
    README.write_text("\n".join(lines) + "\n")
    print(f"wrote {LOCK.name} ({len(pins)} packages) and README's tested versions: {tested_versions_line()}")


if __name__ == "__main__":
    if sys.argv[1:] != ["update"]:
        sys.exit("usage: python scripts/lock.py update")
    update()
