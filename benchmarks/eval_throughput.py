"""Questions per second of `mmmerge.evaluate` at batch size 1 and 16, measured in the same run.

Builds a small random LLaVA with its processor offline (as tests/tiny_llava.py does) and a JSONL set of
random images, runs the whole evaluation (reading, generation, scoring, files) at both batch sizes, checks
the answers are the same, and prints the ratio (target: at least 3x).

    python benchmarks/eval_throughput.py [--questions 96] [--max-new-tokens 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_llava import build_tiny_llava  # noqa: E402

from mmmerge import evaluate  # noqa: E402

QUESTIONS = ["what is the color of the dog ?", "how many cat are there in the picture ?", "is there a man ?",
             "which sport are the people playing ?", "what kind of food is on the table ?", "where is the bus ?"]


def make_set(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")
        lines.append({"question_id": i, "image": f"{i}.png", "question": QUESTIONS[i % len(QUESTIONS)], "answers": ["yes"]})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=96)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_llava(tmp / "model", image_size=64, patch_size=16)
        (tmp / "data").mkdir()
        data = make_set(tmp / "data", args.questions)
        evaluate(model, "jsonl", questions=data, out=tmp / "warmup", batch_size=4, limit=8, device=args.device,
                 progress=False)
        rate, answers = {}, {}
        for bs in (1, 16):
            t0 = time.perf_counter()
            evaluate(model, "jsonl", questions=data, out=tmp / f"b{bs}", batch_size=bs, device=args.device,
                     max_new_tokens=args.max_new_tokens, progress=False)
            rate[bs] = args.questions / (time.perf_counter() - t0)
            answers[bs] = (tmp / f"b{bs}" / "predictions.json").read_text()
    print(f"questions: {args.questions}, max new tokens: {args.max_new_tokens}, device: {args.device}")
    print(f"batch 1:  {rate[1]:.1f} questions/s")
    print(f"batch 16: {rate[16]:.1f} questions/s")
    print(f"speed-up: {rate[16] / rate[1]:.1f}x (target >= 3x); same answers: {answers[1] == answers[16]}")


if __name__ == "__main__":
    main()
