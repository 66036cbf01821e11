"""Write everything the README's commands read into one folder, offline, in a few seconds.

    python examples/make_tiny_models.py tiny
    cd tiny && mmmerge inspect llava

Nothing is downloaded: every model is built from a config with random weights, every image is drawn.

    llava/                 a tiny LLaVA with its processor and chat template (the README's main model)
    llava-a/, llava-b/     two "fine-tunes" of it (its weights plus small changes), for merge and extract-lora
    recipe.yml             a ties merge of llava-a and llava-b on llava, written as a LLaVA
    search.yml             a search of the ties merge's weights and densities, scored on world/'s questions
    regmean.yml            a regmean merge of llava-a and llava-b with the statistics `mmmerge calibrate` writes
    families/TYPE/         a tiny checkpoint with its processor of each family tiny_family_checkpoints.py builds
    clip/ siglip/ dinov2/ vit/          transformers vision encoders with their image processors
    open_clip/ timm_siglip/ timm_vit/   vision encoders in open_clip's and timm's hub layouts
    llama/                 a causal LM with its tokenizer and chat template (its words cover the captions)
    llama-a/, llama-b/     two "fine-tunes" of it, the experts of moe.yml
    moe.yml                a mergekit-moe config: a Mixtral of llama-a and llama-b, gates from prompts
    world/captions.jsonl   image-caption pairs (images in world/train/) for `stitch --align-data`
    world/questions.json, world/annotations.json, world/val/   a small VQA set in the official VQAv2 files
    world/qa.jsonl         image questions with answers (images in world/train/), calibration data for `calibrate`
    lmms/mme_samples.jsonl an lmms-eval 0.3 `--log_samples` file of MME (answers written here), for `score`
    lmms/MME/              MME as lmms-lab's dataset repository holds it (parquet, images inside), for `eval`
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this file is run

import open_clip  # noqa: E402
import timm  # noqa: E402
import transformers  # noqa: E402

from mmmerge.demo import build_world  # noqa: E402
from mmmerge.demo.models import build_language, build_vision  # noqa: E402
from tiny_family_checkpoints import BUILDERS, build_tiny_vlm  # noqa: E402

OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 4, "layers": 1},
}
VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
           patch_size=8)
RECIPE = """\
# ties: keep the largest half of each fine-tune's change, elect a sign per entry, add what agrees
merge_method: ties
base_model: llava
models:
  - model: llava-a
    parameters: {weight: 1.0, density: 0.5}
  - model: llava-b
    parameters: {weight: 1.0, density: 0.5}
"""
REGMEAN = """\
# regmean: each linear layer's least-squares merge from its inputs' statistics (`mmmerge calibrate`)
merge_method: regmean
models:
  - model: llava-a
    parameters: {statistics: stats/llava-a.safetensors}
  - model: llava-b
    parameters: {statistics: stats/llava-b.safetensors}
"""
MOE = """\
# moe: llama-a and llama-b become the experts of a Mixtral with llama's attention; each layer's router row is
# llama's hidden state on the expert's prompts (a mergekit-moe config as it is)
base_model: llama
gate_mode: hidden
dtype: bfloat16
experts_per_token: 1
experts:
  - source_model: llama-a
    positive_prompts: ["what color is the shape"]
  - source_model: llama-b
    positive_prompts: ["how many shapes are there"]
"""

SEARCH = """\
# search: optuna chooses each fine-tune's weight and the density; every candidate is merged in memory
# and scored on the VQA questions (half of them choose, the other half are the held-out test)
merge_method: ties
base_model: llava
models:
  - model: llava-a
    parameters: {weight: {search: [0.0, 1.0]}, density: {search: [0.2, 1.0]}}
  - model: llava-b
    parameters: {weight: {search: [0.0, 1.0]}, density: {search: [0.2, 1.0]}}
search:
  trials: 8
  objective: score
  tasks:
    - {task: vqav2, questions: world/questions.json, annotations: world/annotations.json, images: world/val,
       split: 0.5}
"""
WORLD = dict(train_scenes=32, eval_scenes=2)  # 32 captioned images; 10 questions of five types


def make_llava(out: Path) -> None:
    build_tiny_vlm("llava", out, seed=0)


def make_finetune(base: Path, out: Path, seed: int, scale: float = 0.02) -> None:
    """A copy of `base` whose every floating-point weight moved a little (a stand-in for a fine-tune)."""
    shutil.copytree(base, out)
    g = torch.Generator().manual_seed(seed)
    for file in out.glob("*.safetensors"):
        tensors = load_file(file)
        moved = {k: v + scale * torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v
                 for k, v in tensors.items()}
        save_file(moved, file, metadata={"format": "pt"})


def make_open_clip(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = open_clip.CLIP(**OPEN_CLIP_CFG)
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": {}}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")


def _timm(name: str, out: Path) -> None:
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}
    model = timm.create_model(name, pretrained=False, **args)
    timm.models.save_for_hf(model, out, model_config={"model_args": args}, safe_serialization=True)


def make_timm(out: Path) -> None:
    _timm("vit_base_patch16_siglip_224", out)


def make_timm_vit(out: Path) -> None:
    _timm("vit_base_patch16_224", out)


def make_hf_vision(kind: str, out: Path) -> None:
    """A transformers vision encoder and its image processor (`clip` is the demo's, sized for world images)."""
    T = transformers
    if kind == "clip":
        build_vision(out, seed=0)
        return
    model, processor = {
        "siglip": (lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**VIT)),
                   lambda: T.SiglipImageProcessor(size={"height": 32, "width": 32})),
        "dinov2": (lambda: T.Dinov2Model(T.Dinov2Config(**VIT)),
                   lambda: T.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})),
        "vit": (lambda: T.ViTModel(T.ViTConfig(**VIT)),
                lambda: T.ViTImageProcessor(size={"height": 32, "width": 32})),
    }[kind]
    model().save_pretrained(out)
    processor().save_pretrained(out)


def make_world(out: Path) -> None:
    build_world(out, seed=0, **WORLD)


def make_lmms_log(out: Path) -> None:
    """A few MME questions (each image asked twice: a yes and a no question) as lmms-eval 0.3 logs them."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for category, answers in (("existence", ["Yes", "No", "Yes.", "yes"]), ("color", ["No", "No"]),
                              ("code_reasoning", ["Yes, it prints 3.", "Not"])):
        for i, answer in enumerate(answers):
            doc = {"question_id": f"{category}/{i // 2}.png", "question": "Is there a dog in the image?",
                   "answer": "Yes" if i % 2 == 0 else "No", "category": category}
            rows.append({"doc_id": len(rows), "doc": doc, "target": doc["answer"], "resps": [[answer]],
                         "filtered_resps": [answer]})
    (out / "mme_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_mme_parquet(out: Path) -> None:
    """Six MME documents (three images, each asked a yes and a no question) in lmms-lab/MME's layout: one parquet
    shard under data/, each image's PNG bytes inside its row."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rows = []
    for i, (category, thing) in enumerate((("existence", "a square"), ("color", "something red"),
                                           ("count", "two shapes"))):
        buf = io.BytesIO()
        pixels = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, format="PNG")
        for answer, question in (("Yes", f"Is there {thing} in the image?"), ("No", "Is there a dog in the image?")):
            rows.append({"question_id": f"{category}/{i}.png", "image": {"bytes": buf.getvalue(), "path": f"{i}.png"},
                         "question": f"{question} Please answer yes or no.", "answer": answer, "category": category})
    (out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "data" / "test-00000-of-00001.parquet")


def main(root: str = "tiny") -> Path:
    torch.manual_seed(0)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    steps = [("llava", make_llava), ("llava-a", lambda p: make_finetune(root / "llava", p, seed=1)),
             ("llava-b", lambda p: make_finetune(root / "llava", p, seed=2)),
             *[(f"families/{t}", lambda p, t=t: build_tiny_vlm(t, p)) for t in BUILDERS],
             *[(k, lambda p, k=k: make_hf_vision(k, p)) for k in ("clip", "siglip", "dinov2", "vit")],
             ("open_clip", make_open_clip), ("timm_siglip", make_timm), ("timm_vit", make_timm_vit),
             ("llama", lambda p: build_language(p, seed=0)), ("llama-a", lambda p: make_finetune(root / "llama", p, seed=3)),
             ("llama-b", lambda p: make_finetune(root / "llama", p, seed=4)), ("world", make_world), ("lmms", make_lmms_log),
             ("lmms/MME", make_mme_parquet)]
    with transformers_quiet():
        for name, make in steps:
            make(root / name)
    (root / "recipe.yml").write_text(RECIPE)
    (root / "regmean.yml").write_text(REGMEAN)
    (root / "search.yml").write_text(SEARCH)
    (root / "moe.yml").write_text(MOE)
    print(f"wrote {len(steps)} models and data sets, recipe.yml, regmean.yml, search.yml and moe.yml to {root}")
    return root


def transformers_quiet():
    """transformers' "Writing model shards" bars off: forty of them say nothing."""
    from mmmerge.adapters.hf_common import transformers_bars

    return transformers_bars(False)


if __name__ == "__main__":
    main(*sys.argv[1:])
