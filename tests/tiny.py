"""Tiny real-architecture models built from configs, for tests that must run offline in seconds."""

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          vocab_size=128, max_position_embeddings=64)


def llama_config(**kw) -> LlamaConfig:
    return LlamaConfig(**{**LM, **kw})


def clip_vision_config(**kw) -> CLIPVisionConfig:
    return CLIPVisionConfig(**{**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      image_size=32, patch_size=8), **kw})


def llava_config(vision=None, text=None, **kw) -> LlavaConfig:
    vision = vision or clip_vision_config()
    text = text or llama_config()
    return LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=127, **kw)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter so norms are not 1/0 and a wrong mapping cannot pass by symmetry."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def rename_keys(file, fn) -> None:
    """Rewrite a safetensors file with every key passed through `fn` (to fake another key layout)."""
    tensors = load_file(file)
    save_file({fn(k): v for k, v in tensors.items()}, file, metadata={"format": "pt"})


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()
