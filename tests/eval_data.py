"""Small evaluation sets in the official file layouts, written into a test's folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

QUESTIONS = ["what is the color of the dog ?", "how many cat are there ?", "is there a man in this picture ?",
             "which sport", "what", "where is the bus on the left ?", "what kind of food is on the table ?",
             "is it a car"]


def image(path: Path, seed: int, size=(40, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def ten(answers: list[str]) -> list[dict]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


def vqav2(root: Path, n: int = 8, subtype: str = "val2014") -> dict:
    """v2_OpenEnded_mscoco_val2014_questions.json / v2_mscoco_val2014_annotations.json / val2014/ in miniature."""
    root = Path(root)
    qs, anns = [], []
    for i in range(n):
        image_id, qid = 1000 + i // 2, (1000 + i // 2) * 1000 + i % 2  # two questions per image, as in VQAv2
        image(root / "val2014" / f"COCO_{subtype}_{image_id:012d}.jpg", image_id)
        qs.append({"image_id": image_id, "question": QUESTIONS[i % len(QUESTIONS)], "question_id": qid})
        answers = ["yes"] * 7 + ["no"] * 3 if i % 3 == 0 else ["2"] * 4 + ["two"] * 2 + ["3"] * 4
        anns.append({"question_id": qid, "image_id": image_id, "question_type": "is there" if i % 3 == 0 else "how many",
                     "answer_type": "yes/no" if i % 3 == 0 else "number", "multiple_choice_answer": answers[0],
                     "answers": ten(answers)})
    q = root / "questions.json"
    q.write_text(json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
                             "data_subtype": subtype, "questions": qs}))
    a = root / "annotations.json"
    a.write_text(json.dumps({"info": {}, "license": {}, "data_subtype": subtype, "annotations": anns}))
    return {"questions": q, "annotations": a, "images": root / "val2014"}


def textvqa(root: Path, n: int = 4) -> dict:
    root = Path(root)
    data = []
    for i in range(n):
        image_id = f"{i:016x}"
        image(root / "train_images" / f"{image_id}.jpg", 50 + i)
        data.append({"question": QUESTIONS[i], "image_id": image_id, "image_classes": ["Sign"], "question_id": 34602 + i,
                     "question_tokens": QUESTIONS[i].split(), "set_name": "val",
                     "answers": ["stop"] * 6 + ["Stop."] * 4 if i % 2 else ["coca-cola"] * 10})
    q = root / "TextVQA_0.5.1_val.json"
    q.write_text(json.dumps({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}))
    return {"questions": q, "images": root / "train_images"}


def gqa(root: Path, n: int = 5) -> dict:
    root = Path(root)
    qs = {}
    for i in range(n):
        image(root / "images" / f"n{i}.jpg", 70 + i)
        binary = i % 2 == 0
        qs[f"20{i:06d}"] = {"imageId": f"n{i}", "question": QUESTIONS[i], "answer": "yes" if binary else "dog",
                            "fullAnswer": "Yes, it is.", "isBalanced": i != n - 1,
                            "types": {"structural": "verify" if binary else "query",
                                      "semantic": "rel" if binary else "obj", "detailed": "x"},
                            "semantic": [], "entailed": [], "equivalent": [], "groups": {"global": None, "local": "x"}}
    q = root / "testdev_balanced_questions.json"
    q.write_text(json.dumps(qs))
    return {"questions": q, "images": root / "images"}


def pope(root: Path, n: int = 6, category: str = "adversarial") -> dict:
    root = Path(root)
    lines = []
    for i in range(n):
        name = f"COCO_val2014_{300000 + i // 2:012d}.jpg"
        image(root / "val2014" / name, 300000 + i // 2)
        lines.append({"question_id": i + 1, "image": name, "text": f"Is there a {['dog', 'car', 'man'][i % 3]} in the image?",
                      "label": "yes" if i % 2 == 0 else "no"})
    q = root / f"coco_pope_{category}.json"
    q.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"questions": q, "images": root / "val2014"}


def scienceqa(root: Path) -> dict:
    root = Path(root)
    problems = {
        "1": {"question": "Which animal is this?", "choices": ["dog", "cat"], "answer": 1, "hint": "Look at the picture.",
              "image": "image.png", "subject": "natural science", "split": "test"},
        "2": {"question": "Which is a city?", "choices": ["Rome", "Nile", "Alps"], "answer": 0, "hint": "",
              "image": "image.png", "subject": "social science", "split": "test"},
        "3": {"question": "No image here", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None,
              "subject": "language science", "split": "test"},
        "4": {"question": "Train question", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png",
              "subject": "natural science", "split": "train"},
    }
    for pid in ("1", "2"):
        image(root / "images" / "test" / pid / "image.png", int(pid))
    q = root / "problems.json"
    q.write_text(json.dumps(problems))
    return {"questions": q, "images": root / "images"}


def jsonl(root: Path, n: int = 6) -> dict:
    root = Path(root)
    lines = []
    for i in range(n):
        image(root / "img" / f"{i}.png", 900 + i)
        lines.append({"question_id": i, "image": f"img/{i}.png", "question": QUESTIONS[i],
                      "answers": ["red"] if i % 2 else "two"})
    q = root / "data.jsonl"
    q.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"questions": q}
