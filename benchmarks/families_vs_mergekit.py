"""What mergekit 0.1.5 and mmmerge write for a linear merge of two checkpoints of each multimodal family.

Tiny random models are built from each family's transformers config class (tests/tiny_families.py) and saved
by transformers; the families mergekit defines get their published (hub) key layout, which its definitions
expect. The same config goes through `mergekit.merge.run_merge` and `mmmerge.merge`. Printed per family: the
input's tensor count, how many each tool wrote, and whether mergekit's tensors equal mmmerge's. Run:

    python benchmarks/families_vs_mergekit.py
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import tiny_families as F  # noqa: E402
from mmmerge import merge  # noqa: E402
from mmmerge.adapters import open_checkpoint  # noqa: E402
from mmmerge.adapters.families import rename  # noqa: E402
from mmmerge.adapters.hf_multimodal import family_tensors  # noqa: E402
from mmmerge.io.writer import write_safetensors  # noqa: E402

MERGEKIT_DEFINES = {"gemma3", "mistral3", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"}


def folder(model_type: str, seed: int, path: Path) -> Path:
    F.save_tiny(model_type, path / "saved", seed=seed)
    if model_type not in MERGEKIT_DEFINES:
        return path / "saved"
    ckpt = open_checkpoint(path / "saved")
    out = path / "hub"
    out.mkdir()
    (out / "config.json").write_text((path / "saved" / "config.json").read_text())
    layout = "hub" if "hub" in ckpt.family.layouts else "saved"
    write_safetensors(out, family_tensors(ckpt.family, ckpt.components, layout))
    return out


def tensors(folder: Path) -> dict:
    out = {}
    for f in folder.glob("*.safetensors"):
        out.update(load_file(f))
    return out


def main() -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    print("| family | input tensors | mergekit 0.1.5 wrote | mmmerge wrote | mergekit's tensors equal mmmerge's |")
    print("|---|---|---|---|---|")
    for model_type in sorted(F.CONFIGS):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            a, b = folder(model_type, 0, root / "a"), folder(model_type, 1, root / "b")
            cfg = {"merge_method": "linear", "dtype": "float32",
                   "models": [{"model": str(a), "parameters": {"weight": 0.3}},
                              {"model": str(b), "parameters": {"weight": 0.7}}]}
            source = tensors(a)
            try:
                run_merge(MergeConfiguration.model_validate(cfg), str(root / "mk"),
                          options=MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
                written = tensors(root / "mk")
                # mergekit writes some families under their in-memory names: name them as the input file does
                layout = open_checkpoint(a).family.layout(open_checkpoint(a).source_config["layout"])
                theirs = {(k if k in source else rename(k, layout, to_memory=False)): v for k, v in written.items()}
                renamed = sum(k not in source for k in written)
                wrote = f"{len(theirs)}" + (f" (in-memory names)" if renamed else "")
            except Exception as e:  # mergekit's own refusal, reported as it is
                theirs, wrote = {}, f"error: {type(e).__name__}: {str(e).splitlines()[0][:70]}"
            ours = tensors(merge(cfg, root / "mm", quiet=True))
            common = [k for k in theirs if k in ours]
            equal = "—" if not common else ("yes" if all(torch.allclose(theirs[k], ours[k], rtol=0, atol=1e-6)
                                                          for k in common) else "no")
            print(f"| {model_type} | {len(source)} | {wrote} | {len(ours)} | {equal} |", flush=True)


if __name__ == "__main__":
    main()
