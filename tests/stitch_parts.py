"""The parts the stitch tests put together: a tiny Llama with a tokenizer, a transformers CLIP tower with its
image processor, an image, and the check that a stitched folder loads with no missing or unexpected keys."""

import torch
import transformers
from PIL import Image

from tiny import clip_vision_config, llama_config, randomize
from tiny_tokenizer import make_tokenizer

PROMPT = "<image>\nwhat color is the shape ?"


def make_lm(folder, tied=False, seed=0):
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    lm = randomize(transformers.LlamaForCausalLM(llama_config(vocab_size=len(tok), tie_word_embeddings=tied)), seed)
    lm.save_pretrained(folder)
    return folder


def image(size, seed=0):
    """A smooth random RGB image (resampling differences stay small)."""
    g = torch.Generator().manual_seed(seed)
    small = (torch.rand(3, 6, 6, generator=g) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def make_vision(folder, seed=0, hidden_size=32):
    """A transformers CLIP vision tower with its image processor (32x32 images, 16 patches + a class token)."""
    torch.manual_seed(seed)
    randomize(transformers.CLIPVisionModel(clip_vision_config(hidden_size=hidden_size)), seed).save_pretrained(folder)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return folder


def load_checked(folder):
    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval(), transformers.AutoProcessor.from_pretrained(folder)
