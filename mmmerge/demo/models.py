"""The demo's small models, built offline from configs: a CLIP vision tower and a Llama LM with a word-level
tokenizer that covers the world's vocabulary.

They are written as ordinary folders (a transformers vision model with its image processor; a causal LM with
its tokenizer and chat template), exactly what a user would hand to `mmmerge.stitch`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .world import SIZE, vocabulary

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
# the words of the chat template and of the LLaVA-1.5 VQA instruction, beside the world's own
PROMPT_WORDS = "user assistant : . answer the question using a single word or phrase describe image".split()
# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT:"), as llava-hf processors carry it
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %} {% else %}ASSISTANT: {% for c in message['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=SIZE,
              patch_size=8)
POSITION_STD = 0.3  # CLIP's init (0.02) hides where a patch is; a trained encoder carries it clearly
LANGUAGE = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=False)


def make_tokenizer():
    """A lower-casing word-level tokenizer: one id per word of the world, the prompt and the chat template."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(vocabulary()) | set(PROMPT_WORDS))
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIAL + words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", padding_side="left")
    out.chat_template = CHAT_TEMPLATE
    return out


def build_vision(folder: Path, seed: int, **config) -> Path:
    """A random CLIP vision tower for 32-pixel images (16 patches) with its image processor.

    It stays frozen throughout the demo (as LLaVA keeps its encoder frozen): random patch features already
    tell colours and shapes apart, and a stronger position embedding tells where a patch is."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(**{**VISION, **config}))
    with torch.no_grad():
        model.embeddings.position_embedding.weight.normal_(0.0, POSITION_STD)
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                       image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return Path(folder)


def build_language(folder: Path, seed: int, **config) -> Path:
    """A random four-layer Llama (64 wide) with the world's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    cfg = LlamaConfig(**{**LANGUAGE, **config}, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)
