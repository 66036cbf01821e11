"""One question about one image, answered by a model folder: a look at a merged or stitched model by eye.

It is the evaluation runner's path (`load_model`, `build_prompt`, `Generator`) for a single prompt: the model's
own processor and chat template, greedy decoding in float32, so what it answers here is what `eval` scores.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UnreadableFileError
from ..images import DEFAULT_MAX_PIXELS, open_rgb


def open_image(image, *, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """A PIL image from a path (or a PIL image as it is), in RGB; a file's size is checked from its header against
    `max_pixels` (None: no limit) before it is decoded."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise UnreadableFileError(f"{path}: no such image file")
    return open_rgb(path, max_pixels=max_pixels)


def task_instruction(task: str | None, instruction: str | None) -> str:
    """The instruction a prompt gets: `instruction` as given ("" for none), else the eval task's own (what `eval`
    adds after each question, e.g. vqav2's "Answer the question using a single word or phrase."), else none."""
    from .tasks import EvalDataError, get_task

    if instruction is not None and not isinstance(instruction, str):
        raise EvalDataError(f"instruction must be text, not {type(instruction).__name__}")
    if instruction is not None:
        return instruction.strip()
    return get_task(task).instruction if task is not None else ""


def with_instruction(prompt: str, instruction: str) -> str:
    """The prompt with the instruction on its own line after it, as eval's task templates put theirs."""
    return f"{prompt}\n{instruction}" if instruction else prompt


def generate(model, image, prompt: str, *, instruction: str | None = None, task: str | None = None,
             max_new_tokens: int = 64, device: str | None = None, stop_strings=(),
             max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> str:
    """The answer of the image-text-to-text checkpoint folder `model` (any family `evaluate` runs) to `prompt`
    about `image` (a path or a PIL image). `instruction` goes on the line after the prompt; `task` (an eval task
    name) makes it default to that task's instruction and ends a one-line task's answer at the line end, so the
    answer is the one `eval` scores (without `task`, no instruction is added). Generation stops at the model's
    end-of-sequence token, at the generation config's `stop_strings`, at `stop_strings` (e.g. ("\\n",)), or
    after `max_new_tokens`. `max_image_pixels`: a larger image file is refused before it is decoded (None: no
    limit)."""
    from .distributed import default_device
    from .generate import Generator, build_prompt, load_model
    from .tasks import EvalDataError, get_task

    if max_new_tokens < 1:
        raise EvalDataError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise EvalDataError("give a prompt: the question or instruction about the image")
    text = with_instruction(prompt, task_instruction(task, instruction))
    if task is not None and get_task(task).one_line:
        stop_strings = (*stop_strings, "\n")
    picture = open_image(image, max_pixels=max_image_pixels)
    model_obj, processor = load_model(model, default_device(device), progress=False)
    gen = Generator(model_obj, processor, max_new_tokens=max_new_tokens, name=model, stop_strings=stop_strings)
    return gen([build_prompt(processor, text)], [picture])[0]
