"""How often control comes back to engine/recipe.py while `mmmerge merge` walks a recipe to the written tensors.

    PYTHONPATH=. python scripts/recipe_walk.py [WORK_FOLDER]

Merges two tiny Llamas with a ties `models:` recipe through the CLI in this process, under `sys.setprofile`, and
follows which file of the mmmerge package holds control (frames of other libraries are looked through). A *stay*
is a run of consecutive events in one file; a *visit* to recipe.py is a stay there entered by a call, a *return*
one entered by a callee's return. Prints the counts (issue #27 measured 11 visits, 51 stays in 16 files, 35
returns). A measurement, not a test: no numbers are asserted.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_models(folder: Path) -> list[Path]:
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import llama_config, randomize

    paths = []
    for name, seed in (("base", 0), ("a", 1), ("b", 2)):
        randomize(transformers.LlamaForCausalLM(llama_config(num_hidden_layers=2)), seed).save_pretrained(folder / name)
        paths.append(folder / name)
    return paths


def walk(argv: list[str]) -> dict:
    import mmmerge
    from mmmerge.cli import main

    package = str(Path(mmmerge.__file__).parent) + os.sep
    target = os.path.join(package, "engine", "recipe.py")
    stays: list[tuple[str, str]] = []  # (file, how control came in: "call" | "return")

    def where(frame):
        while frame is not None and not frame.f_code.co_filename.startswith(package):
            frame = frame.f_back
        return frame.f_code.co_filename if frame is not None else None

    def profile(frame, event, arg):
        if event not in ("call", "return"):
            return
        now = where(frame if event == "call" else frame.f_back)
        if now is not None and (not stays or stays[-1][0] != now):
            stays.append((now, event))

    sys.setprofile(profile)
    try:
        code = main(argv)
    finally:
        sys.setprofile(None)
    assert code == 0, f"the merge failed ({code})"
    return {"visits": sum(1 for f, how in stays if f == target and how == "call"),
            "returns": sum(1 for f, how in stays if f == target and how == "return"),
            "stays": len(stays), "files": len({f for f, _ in stays})}


def run(folder: Path) -> dict:
    base, a, b = tiny_models(folder)
    recipe = folder / "ties.yml"
    recipe.write_text(f"merge_method: ties\nbase_model: {base}\nparameters: {{density: 0.5}}\ndtype: float32\n"
                      f"models:\n  - model: {a}\n    parameters: {{weight: [0.3, 0.7]}}\n"
                      f"  - model: {b}\n    parameters: {{weight: 0.5}}\n")
    return walk(["merge", str(recipe), "--out", str(folder / "out"), "--quiet"])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        counts = run(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            counts = run(Path(tmp))
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
