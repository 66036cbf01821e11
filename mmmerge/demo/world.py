"""A synthetic VQA world: small PIL images of shapes, and questions whose answers are known by construction.

Each scene holds 1-3 copies of one shape in one colour, all on one side of the image. The image is a 4x4
grid of 8-pixel cells; every shape sits inside its own cell with a gap to its neighbours, so what the
answers say can be checked on the pixels (coloured pixel counts, connected components, which half).

Five question types, one question of each per scene: color, shape, count, position, yes/no. Held-out
scenes are written as official-format VQAv2 files (questions, annotations, `COCO_val2014_%012d.jpg`
images) so the project's own VQAv2 evaluation reads them; training scenes give an image-caption JSONL
(projector alignment, captioning) and an image-question-answer JSONL (fine-tuning).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40),
          "purple": (160, 60, 200)}
SHAPES = ("circle", "square", "triangle")
SIDES = ("left", "right")
COUNTS = (1, 2, 3)
QUESTION_TYPES = ("color", "shape", "count", "position", "yes/no")
ANSWER_TYPES = {"color": "other", "shape": "other", "count": "number", "position": "other", "yes/no": "yes/no"}
BACKGROUND = (24, 24, 24)
SIZE, CELL, SHAPE = 32, 8, 6  # image side, grid cell, shape side (pixels)
TEMPLATES = {
    "color": ["what color is the {shape}?", "what color are the shapes?"],
    "shape": ["what shape is in the image?", "which shape is this?"],
    "count": ["how many shapes are there?", "how many {color} shapes are there?"],
    "position": ["where are the shapes?", "which side are the shapes on?"],
}
# Yes/no questions ask about one property (colour, shape or side) with a proposed value that is right half
# of the time; their wording ("is the shape red?", "is there a circle?", "are the shapes on the left?") starts
# differently from every other type, so a model cannot mistake one for a count question.
YES_NO_TEMPLATES = {
    "color": ["is the shape {value}?", "are the shapes {value}?"],
    "shape": ["is there a {value}?", "is there a {value} in the image?"],
    "side": ["are the shapes on the {value}?", "is the shape on the {value}?"],
}
TEMPLATES["yes/no"] = [t for ts in YES_NO_TEMPLATES.values() for t in ts]
IMAGE_NAME = "COCO_val2014_{:012d}.jpg"  # VQAv2's image file naming, used for every split


@dataclass(frozen=True)
class Scene:
    image_id: int
    color: str
    shape: str
    count: int
    side: str
    cells: tuple[tuple[int, int], ...]  # (column, row) of each shape
    offset: tuple[int, int]  # shift of every shape inside its cell (0 or 1 pixels)

    @property
    def caption(self) -> str:
        return f"{self.count} {self.color} {self.shape}{'s' if self.count > 1 else ''} on the {self.side}"


@dataclass(frozen=True)
class Question:
    question_id: int
    image_id: int
    question: str
    answer: str
    question_type: str


def make_scene(rng: random.Random, image_id: int) -> Scene:
    side = rng.choice(SIDES)
    count = rng.choice(COUNTS)
    columns = (0, 1) if side == "left" else (2, 3)
    cells = tuple(sorted(rng.sample([(c, r) for c in columns for r in range(4)], count)))
    return Scene(image_id, rng.choice(list(COLORS)), rng.choice(SHAPES), count, side, cells,
                 (rng.randint(0, 1), rng.randint(0, 1)))


def render(scene: Scene):
    """The scene as a 32x32 RGB PIL image."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    fill = COLORS[scene.color]
    for c, r in scene.cells:
        x, y = c * CELL + scene.offset[0], r * CELL + scene.offset[1]
        x1, y1 = x + SHAPE - 1, y + SHAPE - 1
        if scene.shape == "circle":
            draw.ellipse([x, y, x1, y1], fill=fill)
        elif scene.shape == "square":
            draw.rectangle([x, y, x1, y1], fill=fill)
        else:
            draw.polygon([(x + (SHAPE - 1) / 2, y), (x, y1), (x1, y1)], fill=fill)
    return image


def questions_for(scene: Scene, rng: random.Random, first_id: int) -> list[Question]:
    """One question of each type about `scene`; yes/no asks about its colour, shape or side and is true half of
    the time."""
    prop = rng.choice(list(YES_NO_TEMPLATES))
    truth, choices = {"color": (scene.color, COLORS), "shape": (scene.shape, SHAPES), "side": (scene.side, SIDES)}[prop]
    yes = rng.random() < 0.5
    value = truth if yes else rng.choice([v for v in choices if v != truth])
    answers = {"color": scene.color, "shape": scene.shape, "count": str(scene.count), "position": scene.side,
               "yes/no": "yes" if yes else "no"}
    out = []
    for i, qtype in enumerate(QUESTION_TYPES):
        templates = YES_NO_TEMPLATES[prop] if qtype == "yes/no" else TEMPLATES[qtype]
        text = rng.choice(templates).format(shape=scene.shape, color=scene.color, value=value)
        out.append(Question(first_id + i, scene.image_id, text, answers[qtype], qtype))
    return out


def scene_content(scene: Scene) -> tuple:
    """Everything the image shows (all of a scene but its id): two scenes with equal content look the same."""
    return scene.color, scene.shape, scene.count, scene.side, scene.cells, scene.offset


def make_world(num_scenes: int, seed: int | str, first_image_id: int = 1,
               exclude: frozenset = frozenset()) -> tuple[list[Scene], list[Question]]:
    """`num_scenes` scenes and their questions; the same seed gives the same world. A scene whose content is in
    `exclude` (see `scene_content`) is drawn again."""
    rng = random.Random(seed)
    scenes, questions = [], []
    while len(scenes) < num_scenes:
        scene = make_scene(rng, first_image_id + len(scenes))
        if exclude and scene_content(scene) in exclude:
            continue
        scenes.append(scene)
        questions += questions_for(scene, rng, scene.image_id * 10)
    return scenes, questions


def save_images(scenes: list[Scene], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in scenes:
        render(s).save(folder / IMAGE_NAME.format(s.image_id), quality=95, subsampling=0)


def write_vqav2(questions: list[Question], path_questions: Path, path_annotations: Path) -> None:
    """The official VQAv2 layout: a questions file and an annotations file with ten answers per question."""
    common = {"info": {"description": "mmmerge demo world"}, "license": {"name": "none"},
              "data_type": "mscoco", "data_subtype": "val2014"}
    qs = [{"image_id": q.image_id, "question": q.question, "question_id": q.question_id} for q in questions]
    anns = [{"question_id": q.question_id, "image_id": q.image_id, "question_type": q.question_type,
             "answer_type": ANSWER_TYPES[q.question_type], "multiple_choice_answer": q.answer,
             "answers": [{"answer": q.answer, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]}
            for q in questions]
    path_questions.write_text(json.dumps({**common, "task_type": "Open-Ended", "questions": qs}))
    path_annotations.write_text(json.dumps({**common, "annotations": anns}))


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@dataclass
class WorldFiles:
    images: Path  # training images
    captions: Path  # image-caption JSONL (alignment, captioning)
    qa: Path  # image-question-answer JSONL (fine-tuning), with question_type
    eval_images: Path
    questions: Path  # held-out VQAv2 questions
    annotations: Path  # held-out VQAv2 annotations


HELD_OUT = ("test", "validation")
TEST_SCENES_EXCLUDED = 1000  # a validation split never shows a scene of the first 1000 test scenes of its seed


def held_out_world(eval_scenes: int, seed: int, first_image_id: int, held_out: str = "test"):
    """The held-out scenes and questions of a world. `test`: the demo's held-out questions (random stream seed + 1).
    `validation`: for choosing settings, from a random stream of its own, and never a scene that looks like one
    of the first `TEST_SCENES_EXCLUDED` test scenes of the same seed (so it shares no image with any test split
    of up to that size)."""
    if held_out not in HELD_OUT:
        raise ValueError(f"held_out must be one of {', '.join(HELD_OUT)}; got {held_out!r}")
    if held_out == "test":
        return make_world(eval_scenes, seed + 1, first_image_id=first_image_id)
    test, _ = make_world(max(eval_scenes, TEST_SCENES_EXCLUDED), seed + 1)
    return make_world(eval_scenes, f"validation-{seed}", first_image_id=first_image_id,
                      exclude=frozenset(map(scene_content, test)))


def write_held_out(folder: Path, *, eval_scenes: int, seed: int, first_image_id: int,
                   held_out: str = "validation") -> tuple[Path, Path, Path]:
    """Only the held-out split, in VQAv2 files: (questions, annotations, images). The demo's search scores its
    candidates on a validation split written so."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    held, held_q = held_out_world(eval_scenes, seed, first_image_id, held_out)
    save_images(held, folder / "val")
    write_vqav2(held_q, folder / "questions.json", folder / "annotations.json")
    return folder / "questions.json", folder / "annotations.json", folder / "val"


def build_world(folder: Path, *, train_scenes: int = 1500, eval_scenes: int = 100, seed: int = 0,
                held_out: str = "test") -> WorldFiles:
    """Render the training and held-out scenes into `folder` and write every data file the demo needs; the
    held-out files hold the `test` split (the demo's) or a `validation` split (see `held_out_world`)."""
    folder = Path(folder)
    train, train_q = make_world(train_scenes, seed, first_image_id=1)
    held, held_q = held_out_world(eval_scenes, seed, train_scenes + 1, held_out)
    files = WorldFiles(folder / "train", folder / "captions.jsonl", folder / "qa.jsonl", folder / "val",
                       folder / "questions.json", folder / "annotations.json")
    save_images(train, files.images)
    save_images(held, files.eval_images)
    write_jsonl([{"image": f"train/{IMAGE_NAME.format(s.image_id)}", "caption": s.caption} for s in train],
                files.captions)
    write_jsonl([{"image": f"train/{IMAGE_NAME.format(q.image_id)}", "question": q.question, "answer": q.answer,
                  "question_type": q.question_type} for q in train_q], files.qa)
    write_vqav2(held_q, files.questions, files.annotations)
    return files


def vocabulary() -> list[str]:
    """Every word the world's captions, questions and answers use."""
    words = {w for templates in TEMPLATES.values() for t in templates
             for w in re.findall(r"\w+|[^\w\s]+", re.sub(r"\{\w+\}", " ", t))}
    words.update(COLORS, SHAPES, (s + "s" for s in SHAPES), SIDES, map(str, COUNTS), ("yes", "no", "on", "the"))
    return sorted(words)
