"""Tiny random image-text-to-text checkpoint folders WITH their processors, one builder per family, offline.

    build_tiny_vlm("gemma3", folder)   # config + weights + tokenizer + image processor + processor + chat template

`AutoProcessor.from_pretrained(folder)` and `AutoModelForImageTextToText.from_pretrained(folder)` load each as they
load the family's hub checkpoints. The model is tests/tiny_families.py's tiny config of the family; the tokenizer
is a word-level one (the `tokenizers` library) whose ids are laid out to fit that config (pad 0, bos 1, eos 2,
the image token at tiny_families.IMAGE_TOKEN and the family's other multimodal tokens after it), so the config
is used as it is. Image processors work on 32-pixel images and expand each image into exactly as many tokens as
the model's vision tower gives, the way the family's real processor does. Chat templates keep the structure
of the published ones (where the BOS is written, the turn markers, where the image goes).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

from tiny_families import IMAGE_TOKEN, TEXT, tiny_config

WORDS = sorted(set("""what is the color of a an dog cat car bus sky tree man woman how many are there in image this
picture yes no red blue green white black one two three four five ten it on left right answer question using single
word or phrase with option letter from given choices directly context which animal sign say kind sport people playing
table room food where who does do can you see number 0 1 2 3 4 5 6 7 8 9 b c d user assistant model system User
Assistant INST . , ? ! ' : - _ / |""".split()))

VOCAB_SIZE = TEXT["vocab_size"]
PAD, BOS, EOS = TEXT["pad_token_id"], TEXT["bos_token_id"], TEXT["eos_token_id"]

# Chat templates, after the published ones (google/gemma-3-*-it, HuggingFaceTB/SmolVLM-*-Instruct,
# meta-llama/Llama-3.2-*-Vision-Instruct, Qwen/Qwen2-VL-*-Instruct, llava-hf/llava-v1.6-mistral-7b-hf).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
MLLAMA_TEMPLATE = (
    "{{- bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|image|>{% elif c['type'] == 'text' %}"
    "{{ c['text'] | trim }}{% endif %}{% endfor %}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ ' ' + content['text'] }}"
    "{% endfor %}{{ eos_token }}{% endif %}{% endfor %}")


def word_tokenizer(special: dict[str, int | None], *, bos: str | None, eos: str, pad: str, unk: str = "<unk>",
                   add_bos: bool, extra_special_tokens: dict[str, str] | None = None, words=WORDS,
                   size: int = VOCAB_SIZE) -> T.PreTrainedTokenizerFast:
    """A WordLevel tokenizer of exactly `size` ids: each special token at its given id (None: the next free id),
    then `words`, then `<unused_N>` fillers. `add_bos`: the tokenizer prepends `bos` (Gemma, Llama) or not."""
    vocab: dict[str, int] = {}
    taken = {i for i in special.values() if i is not None}
    free = (i for i in range(size) if i not in taken)
    for tok, i in special.items():
        vocab[tok] = i if i is not None else next(free)
    for w in words:
        if w not in vocab:
            vocab[w] = next(free)
    for i in free:
        vocab[f"<unused_{i}>"] = i
    assert len(vocab) == size and max(vocab.values()) == size - 1, "vocabulary does not fit the tiny config"
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, vocab[bos])])
    kwargs = dict(bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk, padding_side="left")
    if extra_special_tokens:
        kwargs["extra_special_tokens"] = extra_special_tokens
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _finish(config, processor, path: Path, seed: int, eos_ids: list[int], lm_head_scale: float) -> Path:
    from transformers import AutoModelForImageTextToText

    tok = processor.tokenizer
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        # Larger output weights make the random model's logits less flat: greedy decoding says different things.
        model.get_output_embeddings().weight.mul_(lm_head_scale)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _gemma3(path, seed):
    tok = word_tokenizer({"<pad>": PAD, "<bos>": BOS, "<eos>": EOS, "<unk>": 3, "<image_soft_token>": IMAGE_TOKEN,
                          "<start_of_image>": IMAGE_TOKEN + 1, "<end_of_image>": IMAGE_TOKEN + 2,
                          "<start_of_turn>": None, "<end_of_turn>": None},
                         bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True,
                         extra_special_tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                               "eoi_token": "<end_of_image>"})
    config = tiny_config("gemma3")
    image_processor = T.Gemma3ImageProcessor(size={"height": 32, "width": 32})
    processor = T.Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=GEMMA3_TEMPLATE,
                                  image_seq_length=config.mm_tokens_per_image)
    return config, processor, [EOS, tok.convert_tokens_to_ids("<end_of_turn>")]


def _smolvlm(path, seed):
    rows = [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)]
    tok = word_tokenizer({"<|endoftext|>": PAD, "<|im_start|>": BOS, "<end_of_utterance>": EOS, "<unk>": 3,
                          "<image>": IMAGE_TOKEN, "<fake_token_around_image>": None, "<global-img>": None,
                          **dict.fromkeys(rows)},
                         bos="<|im_start|>", eos="<end_of_utterance>", pad="<|endoftext|>", add_bos=False,
                         extra_special_tokens={"image_token": "<image>",
                                               "fake_image_token": "<fake_token_around_image>",
                                               "global_image_token": "<global-img>",
                                               "end_of_utterance_token": "<end_of_utterance>"})
    config = tiny_config("smolvlm")
    vision = config.vision_config
    image_processor = T.SmolVLMImageProcessor(do_image_splitting=True, size={"longest_edge": 2 * vision.image_size},
                                              max_image_size={"longest_edge": vision.image_size})
    video_processor = T.SmolVLMVideoProcessor(size={"longest_edge": 2 * vision.image_size},
                                              max_image_size={"longest_edge": vision.image_size})
    seq = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor ** 2
    processor = T.SmolVLMProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                   image_seq_len=seq, chat_template=SMOLVLM_TEMPLATE)
    return config, processor, [EOS]


def _mllama(path, seed):
    tok = word_tokenizer({"<|finetune_right_pad_id|>": PAD, "<|begin_of_text|>": BOS, "<|eot_id|>": EOS,
                          "<unk>": 3, "<|image|>": IMAGE_TOKEN, "<|start_header_id|>": None,
                          "<|end_header_id|>": None, "<|end_of_text|>": None, "<|python_tag|>": None},
                         bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", add_bos=True)
    config = tiny_config("mllama")
    vision = config.vision_config
    image_processor = T.MllamaImageProcessor(size={"height": vision.image_size, "width": vision.image_size},
                                             max_image_tiles=vision.max_num_tiles)
    processor = T.MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=MLLAMA_TEMPLATE)
    return config, processor, [EOS, tok.convert_tokens_to_ids("<|end_of_text|>")]


def _qwen2_vl(path, seed, model_type="qwen2_vl"):
    tok = word_tokenizer({"<|endoftext|>": PAD, "<|im_end|>": EOS, "<unk>": 3, "<|image_pad|>": IMAGE_TOKEN,
                          "<|video_pad|>": IMAGE_TOKEN + 1, "<|vision_start|>": IMAGE_TOKEN + 2,
                          "<|vision_end|>": None, "<|im_start|>": None},
                         bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False,
                         extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                               "vision_bos_token": "<|vision_start|>",
                                               "vision_eos_token": "<|vision_end|>"})
    config = tiny_config(model_type)
    v = config.vision_config
    factor = v.patch_size * v.spatial_merge_size
    size = {"shortest_edge": 4 * factor ** 2, "longest_edge": 16 * factor ** 2}  # 2x2 to 4x4 merged tokens
    kw = dict(size=size, patch_size=v.patch_size, merge_size=v.spatial_merge_size,
              temporal_patch_size=v.temporal_patch_size)
    processor = T.Qwen2VLProcessor(image_processor=T.Qwen2VLImageProcessor(**kw), tokenizer=tok,
                                   video_processor=T.Qwen2VLVideoProcessor(**kw), chat_template=QWEN2_VL_TEMPLATE)
    return config, processor, [EOS, PAD]


def _llava_next(path, seed):
    tok = word_tokenizer({"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3, "<image>": IMAGE_TOKEN,
                          "[INST]": None, "[/INST]": None},
                         bos="<s>", eos="</s>", pad="<pad>", add_bos=True,
                         extra_special_tokens={"image_token": "<image>"})
    config = tiny_config("llava_next")
    v = config.vision_config
    image_processor = T.LlavaNextImageProcessor(size={"shortest_edge": v.image_size},
                                                crop_size={"height": v.image_size, "width": v.image_size},
                                                image_grid_pinpoints=config.image_grid_pinpoints)
    processor = T.LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=v.patch_size,
                                     vision_feature_select_strategy=config.vision_feature_select_strategy,
                                     num_additional_image_tokens=1, chat_template=LLAVA_NEXT_TEMPLATE)
    return config, processor, [EOS]


def _paligemma(path, seed):
    """PaliGemma checkpoints carry no chat template: the processor writes `<image>...<bos>prefix\\n` itself."""
    tok = word_tokenizer({"<pad>": PAD, "<bos>": BOS, "<eos>": EOS, "<unk>": 3, "<image>": IMAGE_TOKEN},
                         bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True,
                         extra_special_tokens={"image_token": "<image>"})
    config = tiny_config("paligemma")
    v = config.vision_config
    image_processor = T.SiglipImageProcessor(size={"height": v.image_size, "width": v.image_size})
    image_processor.image_seq_length = (v.image_size // v.patch_size) ** 2
    processor = T.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    return config, processor, [EOS]


BUILDERS = {"gemma3": _gemma3, "smolvlm": _smolvlm, "mllama": _mllama, "qwen2_vl": _qwen2_vl,
            "llava_next": _llava_next, "paligemma": _paligemma}


def build_tiny_vlm(model_type: str, path, seed: int = 0, lm_head_scale: float = 20.0) -> Path:
    """Write a random tiny `model_type` checkpoint with its processor to `path` and return it."""
    path = Path(path)
    config, processor, eos = BUILDERS[model_type](path, seed)
    return _finish(config, processor, path, seed, eos, lm_head_scale)
