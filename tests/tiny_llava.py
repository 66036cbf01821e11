"""A tiny LLaVA checkpoint folder WITH its processor, built offline in about a second.

`AutoProcessor.from_pretrained(path)` and `LlavaForConditionalGeneration.from_pretrained(path)` load it as they
load a hub LLaVA: a word-level tokenizer with `<image>` and `<pad>`, a CLIP image processor, a LLaVA-1.5 chat
template, and a random model whose vision tower and language model come from tests/tiny.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                          PreTrainedTokenizerFast)

from mmmerge.demo.models import CHAT_TEMPLATE  # LLaVA-1.5's conversation format, as llava-hf processors carry it
from tiny import clip_vision_config, llama_config, randomize

WORDS = """what is the color of a an dog cat car bus sky tree man woman how many are there in image this
picture yes no red blue green white black one two three four five ten is it on left right answer question
using single word or phrase with option's letter from given choices directly context which animal sign say
kind sport people playing table room food where who does do can you see number 0 1 2 3 4 5 6 7 8 9 a b c d
. , ? ! ' : user assistant""".split()
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIAL + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens={"image_token": "<image>"},
                                   padding_side="left")


def build_tiny_llava(path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """Write a random tiny LLaVA + processor to `path` and return it."""
    path = Path(path)
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    vision = clip_vision_config(image_size=image_size, patch_size=patch_size)
    text = llama_config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=(image_size // patch_size) ** 2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = randomize(LlavaForConditionalGeneration(config), seed=seed)
    # Larger random weights make the logits of the random model less flat, so greedy decoding says something.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
