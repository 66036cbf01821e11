"""Build tiny random models offline, one per source family, to try the commands on.

    python examples/make_tiny_models.py tiny
    mmmerge inspect tiny/llava
    mmmerge convert tiny/open_clip --out tiny/open_clip-as-transformers

Nothing is downloaded: every model is built from a config with random weights.
"""

import json
import sys
from pathlib import Path

import open_clip
import timm
import torch
import transformers
from safetensors.torch import save_file

OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 4, "layers": 1},
}


def make_llava(out: Path) -> None:
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8)
    text = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=128)
    config = transformers.LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=127)
    transformers.LlavaForConditionalGeneration(config).save_pretrained(out)


def make_open_clip(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = open_clip.CLIP(**OPEN_CLIP_CFG)
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": {}}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")


def make_timm(out: Path) -> None:
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}
    model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, **args)
    timm.models.save_for_hf(model, out, model_config={"model_args": args}, safe_serialization=True)


def main(root: str = "tiny") -> None:
    torch.manual_seed(0)
    root = Path(root)
    for name, make in [("llava", make_llava), ("open_clip", make_open_clip), ("timm_siglip", make_timm)]:
        make(root / name)
        print(f"wrote {root / name}")


if __name__ == "__main__":
    main(*sys.argv[1:])
