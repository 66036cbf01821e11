"""Tiny random image-text-to-text checkpoint folders WITH their processors, one builder per family, offline.

    build_tiny_vlm("gemma3", folder)   # config + weights + tokenizer + image processor + processor + chat template

(The tests use this builder too, through tests/tiny_vlm_processors.py.)

`AutoProcessor.from_pretrained(folder)` and `AutoModelForImageTextToText.from_pretrained(folder)` load each as they
load the family's hub checkpoints. The model is tiny_family_configs.py's tiny config of the family; the tokenizer
is a word-level one (the `tokenizers` library) whose ids are laid out to fit that config (pad 0, bos 1, eos 2,
the image token at tiny_family_configs.IMAGE_TOKEN and the family's other multimodal tokens after it), so the config
is used as it is. Image processors work on 32-pixel images and expand each image into exactly as many tokens as
the model's vision tower gives, the way the family's real processor does. Chat templates keep the structure
of the published ones (where the BOS is written, the turn markers, where the image goes).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import transformers as T
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

from tiny_family_configs import IMAGE_TOKEN, TEXT, tiny_config

WORDS = sorted(set("""what is the color of a an dog cat car bus sky tree man woman how many are there in image this
picture yes no red blue green white black one two three four five ten it on left right answer question using single
word or phrase with option letter from given choices directly context which animal sign say kind sport people playing
table room food where who does do can you see number 0 1 2 3 4 5 6 7 8 9 b c d user assistant model system User
Assistant INST . , ? ! ' : - _ / |""".split()))

VOCAB_SIZE = TEXT["vocab_size"]
PAD, BOS, EOS = TEXT["pad_token_id"], TEXT["bos_token_id"], TEXT["eos_token_id"]

# Chat templates, after the published ones (google/gemma-3-*-it, HuggingFaceTB/SmolVLM-*-Instruct,
# HuggingFaceM4/Idefics3-8B-Llama3, meta-llama/Llama-3.2-*-Vision-Instruct, Qwen/Qwen2-VL-*-Instruct,
# Qwen/Qwen3-VL-*-Instruct, zai-org/GLM-4.1V-*, llava-hf/llava-v1.6-mistral-7b-hf, llava-hf/llava-onevision-*,
# mistralai/Mistral-Small-3.1-*, OpenGVLab/InternVL3-*-hf, CohereLabs/aya-vision-*), cut to one image and text.
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
QWEN3_VL_TEMPLATE = QWEN2_VL_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}", "")
GLM4V_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
IDEFICS3_TEMPLATE = "<|begin_of_text|>" + SMOLVLM_TEMPLATE[len("<|im_start|>"):]
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
MISTRAL3_TEMPLATE = (
    "{{- bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST]"
    "{% for block in message['content'] %}{% if block['type'] == 'text' %}{{ block['text'] }}"
    "{% elif block['type'] == 'image' %}[IMG]{% endif %}{% endfor %}[/INST]{% elif message['role'] == 'assistant' %}"
    "{% for block in message['content'] %}{{ block['text'] }}{% endfor %}{{ eos_token }}{% endif %}{% endfor %}")
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{{ '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
AYA_VISION_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{{ '<|USER_TOKEN|>' if message['role'] == 'user' else '<|CHATBOT_TOKEN|>' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|END_OF_TURN_TOKEN|>"
    "{% endfor %}{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}")
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
    """The random model of `config` (every parameter perturbed), saved with the
    processor; generation stops at `eos_ids`."""
    from transformers import AutoModelForImageTextToText

    tok = processor.tokenizer
    # Separate output weights: with tied ones a random model repeats the prompt's last token whatever it is asked.
    for c in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
        c.tie_word_embeddings = False
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


def _gemma3():
    """Gemma 3: the tokenizer adds `<bos>` and the template writes it too; `<start_of_image>` in the prompt becomes
    `<start_of_image>` + mm_tokens_per_image soft tokens + `<end_of_image>`."""
    tok = word_tokenizer({"<pad>": PAD, "<bos>": BOS, "<eos>": EOS, "<unk>": 3, "<image_soft_token>": IMAGE_TOKEN,
                          "<start_of_image>": IMAGE_TOKEN + 1, "<end_of_image>": IMAGE_TOKEN + 2,
                          "<start_of_turn>": None, "<end_of_turn>": None},
                         bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True,
                         extra_special_tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                               "eoi_token": "<end_of_image>"})
    config = tiny_config("gemma3")
    v = config.vision_config
    image_processor = T.Gemma3ImageProcessor(size={"height": v.image_size, "width": v.image_size})
    processor = T.Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=GEMMA3_TEMPLATE,
                                  image_seq_length=config.mm_tokens_per_image)
    return config, processor, [EOS, tok.convert_tokens_to_ids("<end_of_turn>")]


def _smolvlm(model_type="smolvlm"):
    """SmolVLM (SmolLM2 tokenizer: BOS `<|im_start|>`, written by the template) or Idefics3 (Llama 3 tokenizer:
    it adds `<|begin_of_text|>`, and the template writes it too). Images are split into 32-pixel tiles."""
    rows = [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)]
    smol = model_type == "smolvlm"
    bos, pad = ("<|im_start|>", "<|endoftext|>") if smol else ("<|begin_of_text|>", "<|end_of_text|>")
    tok = word_tokenizer({pad: PAD, bos: BOS, "<end_of_utterance>": EOS, "<unk>": 3,
                          "<image>": IMAGE_TOKEN, "<fake_token_around_image>": None, "<global-img>": None,
                          **dict.fromkeys(rows)},
                         bos=bos, eos="<end_of_utterance>", pad=pad, add_bos=not smol,
                         extra_special_tokens={"image_token": "<image>",
                                               "fake_image_token": "<fake_token_around_image>",
                                               "global_image_token": "<global-img>",
                                               "end_of_utterance_token": "<end_of_utterance>"})
    config = tiny_config(model_type)
    vision = config.vision_config
    sizes = dict(size={"longest_edge": 2 * vision.image_size}, max_image_size={"longest_edge": vision.image_size})
    seq = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor ** 2
    if smol:
        processor = T.SmolVLMProcessor(image_processor=T.SmolVLMImageProcessor(do_image_splitting=True, **sizes),
                                       tokenizer=tok, video_processor=T.SmolVLMVideoProcessor(**sizes),
                                       image_seq_len=seq, chat_template=SMOLVLM_TEMPLATE)
    else:
        processor = T.Idefics3Processor(image_processor=T.Idefics3ImageProcessor(do_image_splitting=True, **sizes),
                                        tokenizer=tok, image_seq_len=seq, chat_template=IDEFICS3_TEMPLATE)
    return config, processor, [EOS]


def _mllama():
    """Llama 3.2 Vision: the tokenizer adds `<|begin_of_text|>` and the template writes it too; one `<|image|>`
    token, the image reaches the text through cross-attention (up to two 32-pixel tiles)."""
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


def _qwen2_vl(model_type="qwen2_vl"):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: a Qwen2 tokenizer (no BOS); images at their own size, 2 to 4 tokens a side."""
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
    if model_type in ("qwen3_vl", "qwen3_vl_moe"):
        processor = T.Qwen3VLProcessor(image_processor=T.Qwen2VLImageProcessor(**kw), tokenizer=tok,
                                       video_processor=T.Qwen3VLVideoProcessor(**kw), chat_template=QWEN3_VL_TEMPLATE)
    else:
        cls = T.Qwen2VLProcessor if model_type == "qwen2_vl" else T.Qwen2_5_VLProcessor
        processor = cls(image_processor=T.Qwen2VLImageProcessor(**kw), tokenizer=tok,
                        video_processor=T.Qwen2VLVideoProcessor(**kw), chat_template=QWEN2_VL_TEMPLATE)
    return config, processor, [EOS, PAD]


def _glm4v():
    """GLM-4.1V: a GLM-4 tokenizer (no BOS; the template starts with `[gMASK]<sop>`); Qwen2-VL-style images."""
    tok = word_tokenizer({"<|endoftext|>": PAD, "<|user|>": EOS, "<unk>": 3, "<|image|>": IMAGE_TOKEN,
                          "<|video|>": IMAGE_TOKEN + 1, "<|begin_of_image|>": IMAGE_TOKEN + 2,
                          "<|end_of_image|>": IMAGE_TOKEN + 3, "<|begin_of_video|>": None, "<|end_of_video|>": None,
                          "[gMASK]": None, "<sop>": None, "<|assistant|>": None},
                         bos=None, eos="<|user|>", pad="<|endoftext|>", add_bos=False,
                         extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"})
    config = tiny_config("glm4v")
    v = config.vision_config
    factor = v.patch_size * v.spatial_merge_size
    kw = dict(size={"shortest_edge": 4 * factor ** 2, "longest_edge": 16 * factor ** 2}, patch_size=v.patch_size,
              merge_size=v.spatial_merge_size, temporal_patch_size=v.temporal_patch_size)
    processor = T.Glm4vProcessor(image_processor=T.Glm4vImageProcessor(**kw), tokenizer=tok,
                                 video_processor=T.Glm4vVideoProcessor(**kw), chat_template=GLM4V_TEMPLATE)
    return config, processor, [EOS, PAD]


def _llava():
    """LLaVA-1.5 (llava-hf): a Llama tokenizer that adds `<s>`, a template that does not write it."""
    from mmmerge.demo.models import CHAT_TEMPLATE

    tok = word_tokenizer({"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3, "<image>": IMAGE_TOKEN},
                         bos="<s>", eos="</s>", pad="<pad>", add_bos=True, words=WORDS + ["USER", "ASSISTANT"],
                         extra_special_tokens={"image_token": "<image>"})
    config = tiny_config("llava")
    v = config.vision_config
    image_processor = T.CLIPImageProcessor(size={"shortest_edge": v.image_size},
                                           crop_size={"height": v.image_size, "width": v.image_size})
    processor = T.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=v.patch_size,
                                 vision_feature_select_strategy=config.vision_feature_select_strategy,
                                 num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    return config, processor, [EOS]


def _llava_onevision():
    """LLaVA-OneVision: a Qwen2 tokenizer (no BOS); anyres image tiles, as LLaVA-NeXT."""
    tok = word_tokenizer({"<|endoftext|>": PAD, "<|im_end|>": EOS, "<unk>": 3, "<image>": IMAGE_TOKEN,
                          "<video>": IMAGE_TOKEN + 1, "<|im_start|>": None},
                         bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False,
                         extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})
    config = tiny_config("llava_onevision")
    v = config.vision_config
    size = {"height": v.image_size, "width": v.image_size}
    processor = T.LlavaOnevisionProcessor(
        image_processor=T.LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=config.image_grid_pinpoints),
        tokenizer=tok, video_processor=T.LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(v.image_size // v.patch_size) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy, chat_template=LLAVA_ONEVISION_TEMPLATE)
    return config, processor, [EOS, PAD]


def _llava_next():
    """LLaVA-NeXT (Mistral): a tokenizer that adds `<s>`, a template that does not write it; anyres tiles."""
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


def _mistral3():
    """Mistral 3 (Pixtral processor): the tokenizer adds `<s>` and the template writes it too."""
    tok = word_tokenizer({"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3, "[IMG]": IMAGE_TOKEN,
                          "[IMG_BREAK]": None, "[IMG_END]": None, "[INST]": None, "[/INST]": None},
                         bos="<s>", eos="</s>", pad="<pad>", add_bos=True)
    config = tiny_config("mistral3")
    v = config.vision_config
    image_processor = T.PixtralImageProcessor(size={"longest_edge": v.image_size},
                                              patch_size={"height": v.patch_size, "width": v.patch_size})
    processor = T.PixtralProcessor(image_processor=image_processor, tokenizer=tok, patch_size=v.patch_size,
                                   spatial_merge_size=config.spatial_merge_size, chat_template=MISTRAL3_TEMPLATE)
    return config, processor, [EOS]


def _internvl():
    """InternVL (transformers format): a Qwen2 tokenizer (no BOS); `<img><IMG_CONTEXT>*n</img>` per image."""
    tok = word_tokenizer({"<|endoftext|>": PAD, "<|im_end|>": EOS, "<unk>": 3, "<IMG_CONTEXT>": IMAGE_TOKEN,
                          "<img>": None, "</img>": None, "<video>": None, "<|im_start|>": None},
                         bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False,
                         extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                                               "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    config = tiny_config("internvl")
    v = config.vision_config
    size = {"height": v.image_size[0], "width": v.image_size[1]}
    seq = int((v.image_size[0] // v.patch_size[0]) ** 2 * config.downsample_ratio ** 2)
    processor = T.InternVLProcessor(image_processor=T.GotOcr2ImageProcessor(size=size, max_patches=2),
                                    tokenizer=tok, video_processor=T.InternVLVideoProcessor(size=size),
                                    image_seq_length=seq, chat_template=INTERNVL_TEMPLATE)
    return config, processor, [EOS, PAD]


def _aya_vision():
    """Aya Vision: a Cohere tokenizer that adds `<BOS_TOKEN>`, which the template writes too."""
    tok = word_tokenizer({"<PAD>": PAD, "<BOS_TOKEN>": BOS, "<|END_OF_TURN_TOKEN|>": EOS, "<UNK>": 3,
                          "<|IMG_PATCH|>": IMAGE_TOKEN, "<image>": None, "<|START_OF_IMG|>": None,
                          "<|END_OF_IMG|>": None, "<|IMG_LINE_BREAK|>": None, "TILE": None, "TILE_GLOBAL": None,
                          "<|START_OF_TURN_TOKEN|>": None, "<|USER_TOKEN|>": None, "<|CHATBOT_TOKEN|>": None},
                         bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>", pad="<PAD>", unk="<UNK>", add_bos=True)
    config = tiny_config("aya_vision")
    v = config.vision_config
    size = {"height": v.image_size, "width": v.image_size}
    processor = T.AyaVisionProcessor(image_processor=T.GotOcr2ImageProcessor(size=size, max_patches=2),
                                     tokenizer=tok, patch_size=v.patch_size,
                                     img_size=v.image_size, downsample_factor=config.downsample_factor,
                                     chat_template=AYA_VISION_TEMPLATE)
    return config, processor, [EOS]


def _paligemma():
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


BUILDERS = {"gemma3": _gemma3, "smolvlm": _smolvlm, "idefics3": partial(_smolvlm, model_type="idefics3"),
            "mllama": _mllama, "qwen2_vl": _qwen2_vl, "qwen2_5_vl": partial(_qwen2_vl, model_type="qwen2_5_vl"),
            "qwen3_vl": partial(_qwen2_vl, model_type="qwen3_vl"),
            "qwen3_vl_moe": partial(_qwen2_vl, model_type="qwen3_vl_moe"), "glm4v": _glm4v,
            "llava": _llava, "llava_next": _llava_next, "llava_onevision": _llava_onevision,
            "mistral3": _mistral3, "internvl": _internvl, "aya_vision": _aya_vision, "paligemma": _paligemma}


def build_tiny_vlm(model_type: str, path, seed: int = 0, lm_head_scale: float = 20.0) -> Path:
    """Write a random tiny `model_type` checkpoint with its processor to `path` and return it."""
    path = Path(path)
    config, processor, eos = BUILDERS[model_type]()
    return _finish(config, processor, path, seed, eos, lm_head_scale)
