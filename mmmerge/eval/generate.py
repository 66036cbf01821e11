"""Batched greedy generation whose answers do not depend on the batch size.

Left padding with the attention mask (transformers derives position ids from it) makes a padded row compute
the same function as the row alone; what remains is float rounding, which differs with the shapes of a batch
(about 1e-5 in float32). So: float32 (TF32 off), and a guard against that rounding deciding a token: when, at
a step a row still generates, its best two logits are closer than `tie_tol` (relative), the row is generated
again alone — exactly what batch size 1 computes. An answer then equals its batch-size-1 answer whenever
the rounding is smaller than the guard, which float32 keeps it by orders of magnitude.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from ..errors import MMMergeError
from ..io.reader import first_line


class ModelLoadError(MMMergeError):
    """The model folder is not a transformers image-text-to-text checkpoint with its processor."""


class ProcessorError(MMMergeError):
    """The model's processor cannot encode the prompts with their images (an image placeholder too many or
    missing, an image its image processor rejects)."""


def load_model(path, device: str, progress: bool = True):
    """An image-text-to-text checkpoint and its processor, from a local folder only, in float32 on `device`."""
    from transformers import AutoModelForImageTextToText

    from ..adapters.hf_common import transformers_bars

    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such model folder")
    processor = load_processor(path)
    try:
        with transformers_bars(progress):
            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
        raise ModelLoadError(f"{path}: cannot load an image-text-to-text model with its processor "
                             f"({first_line(e)})") from e
    return model.to(device).eval(), processor


def load_processor(path: Path):
    """A model folder's processor, set up for batched generation (left padding, a pad token)."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
        # ImportError: a processor's optional dependency (SmolVLM's needs num2words).
        raise ModelLoadError(f"{path}: cannot load an image-text-to-text model with its processor "
                             f"({first_line(e)})") from e
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise ModelLoadError(f"{path}: the processor has no tokenizer or image processor")
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def _probe_image() -> Image.Image:
    return Image.new("RGB", (64, 64), (127, 127, 127))


def _encodes(processor, prompt: str) -> bool:
    """Whether the processor encodes `prompt` with one probe image (its warning about a missing placeholder
    silenced)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        processor(images=[[_probe_image()]], text=[prompt], add_special_tokens=False)
        return True
    except Exception:  # noqa: BLE001  (any refusal means: not a prompt it takes)
        return False
    finally:
        hf_logging.set_verbosity(level)


def _own_placement(processor, image_token: str) -> str:
    """How a processor that puts the image placeholders into a prompt itself takes one, asked once by encoding a
    prompt without a placeholder and one with it: "placeholder" where it takes the placeholder too (PaliGemma's:
    `<image>...<bos>prefix\n`), "text" where it always writes its own, so that a placeholder given is an image too
    many (Florence-2's), "" where the prompt must carry the placeholder."""
    cached = getattr(processor, "_mmmerge_places_image", None)
    if cached is None:
        cached = "" if not _encodes(processor, "probe") else \
            "placeholder" if _encodes(processor, f"{image_token}probe") else "text"
        try:
            processor._mmmerge_places_image = cached
        except AttributeError:
            pass
    return cached


def build_prompt(processor, text: str, images: int = 1) -> str:
    """The processor's chat template with the image(s) and then the text. Without a template: the image
    placeholders and the text where the processor completes the prompt itself (PaliGemma), the text alone where it
    writes the placeholders itself whatever the prompt holds (Florence-2), else LLaVA-1.5's format."""
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"}] * images + [{"type": "text", "text": text}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    image_token = getattr(processor, "image_token", None) or "<image>"
    placement = _own_placement(processor, image_token)
    if placement == "placeholder":
        return f"{image_token * images}{text}"
    if placement == "text":
        return text
    return f"USER: {image_token * images}\n{text} ASSISTANT:"


def adds_special_tokens(tokenizer, prompts: list[str]) -> bool:
    """`add_special_tokens` for encoding `prompts`: False where the chat template already wrote the BOS (Gemma,
    Llama 3, Idefics3, SmolVLM templates do), True otherwise (templates without it, LLaVA-1.5's format), so a
    prompt holds the BOS once either way. One rule for the prompt lengths and for the model's inputs."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and all(p.startswith(bos) for p in prompts))


def special_tokens_for(processor, prompts: list[str]) -> bool:
    """`add_special_tokens` for the processor's encoding of `prompts`: False where the processor writes the BOS itself
    whatever it is told (IDEFICS' builds each prompt from the BOS and passes the flag on to its tokenizer, so True
    would double it), else `adds_special_tokens`."""
    return False if _writes_bos_itself(processor) else adds_special_tokens(processor.tokenizer, prompts)


def _writes_bos_itself(processor) -> bool:
    """Whether the processor starts a text with the BOS though asked for no special tokens, asked once by encoding a
    text alone (a processor that refuses a text without images writes none we know of)."""
    cached = getattr(processor, "_mmmerge_writes_bos", None)
    if cached is None:
        bos = getattr(processor.tokenizer, "bos_token_id", None)
        try:
            ids = processor(text=["probe"], add_special_tokens=False)["input_ids"][0]
            cached = bos is not None and len(ids) > 0 and int(ids[0]) == bos
        except Exception:  # noqa: BLE001  (a processor that needs images with its text)
            cached = False
        try:
            processor._mmmerge_writes_bos = cached
        except AttributeError:
            pass
    return cached


def token_types_asked(processor, model) -> dict:
    """The argument that asks the processor for `mm_token_type_ids` where it makes them and the model takes them
    (Cosmos3-Edge's multimodal RoPE needs them, and its processor returns them only when asked)."""
    takes = "mm_token_type_ids" in inspect.signature(model.forward).parameters
    return {"return_mm_token_type_ids": True} if takes and "mm_token_type_ids" in processor.model_input_names else {}


def prompt_lengths(processor, prompts: list[str]) -> list[int]:
    """Token counts of the prompts before the image placeholders are expanded (to sort by length)."""
    tok = processor.tokenizer
    return [len(ids) for ids in tok(prompts, add_special_tokens=special_tokens_for(processor, prompts))["input_ids"]]


@contextmanager
def exact_float32():
    """TF32 off for matmuls and convolutions while generating (restored afterwards)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def config_stop_strings(model) -> tuple[str, ...]:
    """The stop strings the model's own generation config names (`stop_strings`), if any."""
    stops = getattr(model.generation_config, "stop_strings", None) or ()
    return (stops,) if isinstance(stops, str) else tuple(stops)


@contextmanager
def own_stop_strings(model):
    """The model's generation config without its stop_strings while generating (restored afterwards): the Generator
    applies them itself, with a rule that works for every tokenizer (transformers' own fails on some)."""
    config = model.generation_config
    stops = getattr(config, "stop_strings", None)
    config.stop_strings = None
    try:
        yield
    finally:
        config.stop_strings = stops


class Generator:
    """`gen(prompts, images) -> texts`: greedy answers for one batch. `images[i]` is prompt i's image (or a
    list of its images). `name` (the model folder) starts the message of a ProcessorError. A row stops at an
    end-of-sequence token of the model's generation config, or once its text holds one of `stop_strings`
    (e.g. "\n" for one-line answers; the config's own `stop_strings` are added), where its text is cut."""

    def __init__(self, model, processor, max_new_tokens: int = 16, tie_tol: float = 1e-3, name=None,
                 stop_strings=()):
        from transformers import GenerationConfig

        tok = processor.tokenizer
        self.model, self.processor, self.tie_tol = model, processor, tie_tol
        self.stops = tuple(dict.fromkeys((*stop_strings, *config_stop_strings(model))))
        self.name = str(name if name is not None else getattr(model, "name_or_path", "") or type(model).__name__)
        eos = model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id])
        self.config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                       pad_token_id=tok.pad_token_id, eos_token_id=sorted(self.eos),
                                       bos_token_id=model.generation_config.bos_token_id, output_scores=True,
                                       return_dict_in_generate=True)
        self.reruns = 0  # rows generated again alone (near ties)
        self.per_prompt_images = None  # the processor takes one list of images per prompt; found on first use

    def _layout(self, images: list[list[Image.Image]], per_prompt: bool):
        return images if per_prompt else [im for ims in images for im in ims]

    def _call_processor(self, prompts, images, per_prompt: bool):
        return self.processor(images=self._layout(images, per_prompt), text=prompts, return_tensors="pt",
                              padding=True, add_special_tokens=special_tokens_for(self.processor, prompts),
                              **token_types_asked(self.processor, self.model))

    def _find_layout(self, prompt: str, images: list[Image.Image]) -> bool:
        """Whether the processor takes images as one list per prompt (Gemma 3, SmolVLM and mllama need it;
        most others take it too) or only as one flat list: asked once with a batch of two."""
        try:
            self._call_processor([prompt, prompt], [images, images], True)
            return True
        except Exception as nested:  # noqa: BLE001
            try:
                self._call_processor([prompt, prompt], [images, images], False)
                return False
            except Exception:  # noqa: BLE001
                raise self._error(nested) from nested

    def _error(self, e: BaseException) -> ProcessorError:
        return ProcessorError(f"{self.name}: the processor cannot encode the prompts with their images "
                              f"({type(e).__name__}: {first_line(e)})")

    def encode(self, prompts: list[str], images) -> dict:
        """The processor's inputs for a batch: the chat template tokenized once (one BOS), images per prompt."""
        images = [list(im) if isinstance(im, (list, tuple)) else [im] for im in images]
        if len(images) != len(prompts):
            raise ProcessorError(f"{self.name}: {len(prompts)} prompts but {len(images)} image lists")
        if self.per_prompt_images is None:
            self.per_prompt_images = self._find_layout(prompts[0], images[0])
        try:
            enc = self._call_processor(prompts, images, self.per_prompt_images)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise self._error(e) from e
        enc.pop("labels", None)  # PaliGemma's processor returns training labels
        return enc

    @torch.inference_mode()
    def _run(self, prompts: list[str], images) -> tuple[list[str], list[int]]:
        device = self.model.device
        enc = self.encode(prompts, images).to(device)
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(torch.float32)
        criteria = None
        if self.stops:
            from transformers import StoppingCriteriaList

            from .answer_end import AnswerEnd

            start = enc["input_ids"].shape[1]
            criteria = StoppingCriteriaList([AnswerEnd(self.processor.tokenizer, start, self.stops)])
        try:
            with own_stop_strings(self.model):
                out = self.model.generate(**enc, generation_config=self.config, stopping_criteria=criteria)
        except ValueError as e:  # e.g. "Image features and image tokens do not match": processor and model disagree
            raise ProcessorError(f"{self.name}: the model rejects the inputs its processor made "
                                 f"({type(e).__name__}: {first_line(e)})") from e
        # the generated tokens, one per score: after the prompt (a decoder-only model's sequences start with it) or
        # after the decoder's start token (an encoder-decoder's, Florence-2's, hold no prompt)
        new = out.sequences[:, out.sequences.shape[1] - len(out.scores):].cpu()
        texts = self.processor.tokenizer.batch_decode([self._before_eos(row) for row in new.tolist()],
                                                      skip_special_tokens=True)
        ties = []
        top2 = torch.stack(out.scores, 1).float().topk(2, -1).values.cpu()  # [batch, step, 2], one transfer
        for i in range(len(prompts)):
            for step in range(top2.shape[1]):
                top = top2[i, step]
                if top[0] - top[1] < self.tie_tol * max(1.0, abs(top[0].item())):
                    ties.append(i)
                    break
                if new[i, step].item() in self.eos or self._ended(new[i, :step + 1]):
                    break
        return [self._cut(t) for t in texts], ties

    def _before_eos(self, ids: list[int]) -> list[int]:
        """The tokens before the first end-of-sequence one: an EOS the tokenizer does not call special (a generation
        config may name any token) is not part of the answer either."""
        return next((ids[:i] for i, t in enumerate(ids) if t in self.eos), ids)

    def _ended(self, ids) -> bool:
        if not self.stops:
            return False
        from .answer_end import answer_ended

        return answer_ended(self.processor.tokenizer.decode(ids, skip_special_tokens=True), self.stops)

    def _cut(self, text: str) -> str:
        from .answer_end import cut_answer

        return cut_answer(text, self.stops)

    def __call__(self, prompts: list[str], images) -> list[str]:
        with exact_float32():
            texts, ties = self._run(prompts, images)
            if len(prompts) > 1:
                for i in ties:
                    texts[i] = self._run([prompts[i]], [images[i]])[0][0]  # prompt i with its own image(s)
                    self.reruns += 1
        return texts
