"""What merging a search candidate in memory saves: one candidate as `mmmerge search` makes it (plan over the
opened inputs, the engine's tasks run into the parameters of a model built once) against the way without it
(`mmmerge merge` writes the candidate's checkpoint, then the evaluation loads it), on the demo's model size
(its CLIP tower and Llama LM stitched into a LLaVA, and two "fine-tunes" of it). Both give the same weights
(tests/test_search.py checks that bit for bit); the ratio is printed.

    python benchmarks/search_candidate_cost.py            # about a minute on 2 cores
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))


def main(repeats: int = 5) -> None:
    import torch

    from make_tiny_models import make_finetune
    from mmmerge import merge, stitch
    from mmmerge.adapters.hf_common import transformers_bars
    from mmmerge.demo.models import build_language, build_vision
    from mmmerge.eval.generate import load_model
    from mmmerge.searching.candidate import Candidates

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="mmmerge-candidate-cost-") as tmp, warnings.catch_warnings(), \
            transformers_bars(False):
        warnings.simplefilter("ignore")
        root = Path(tmp)
        build_vision(root / "vision", 0)
        build_language(root / "language", 0)
        stitch(root / "vision", root / "language", root / "base", projector_type="mlp2x_gelu", progress=False)
        make_finetune(root / "base", root / "a", 1)
        make_finetune(root / "base", root / "b", 2)

        def recipe(w: float) -> dict:
            return {"merge_method": "ties", "base_model": str(root / "base"),
                    "models": [{"model": str(root / m), "parameters": {"weight": w, "density": 0.5}}
                               for m in ("a", "b")]}

        candidates = Candidates(None)
        candidates.build(recipe(0.5))
        in_memory, on_disk = [], []
        for i in range(repeats):
            start = time.perf_counter()
            candidates.load(recipe(0.1 + 0.1 * i))
            in_memory.append(time.perf_counter() - start)
            start = time.perf_counter()
            merge(recipe(0.1 + 0.1 * i), root / f"merged-{i}", quiet=True)
            load_model(root / f"merged-{i}", "cpu", progress=False)
            on_disk.append(time.perf_counter() - start)
        params = sum(p.numel() for p in candidates.model.parameters())
    fast, slow = statistics.median(in_memory), statistics.median(on_disk)
    print(f"a ties candidate of two fine-tunes of a {params / 1e6:.1f}M-parameter LLaVA (median of {repeats}):")
    print(f"  in memory (mmmerge search):              {fast * 1000:7.0f} ms")
    print(f"  mmmerge merge to disk + load for eval:   {slow * 1000:7.0f} ms")
    print(f"  ratio: {slow / fast:.1f}x less time per candidate in memory")


if __name__ == "__main__":
    main()
