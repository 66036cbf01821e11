"""Tiny lmms-lab datasets as `huggingface_hub.snapshot_download` leaves them: parquet shards in each task's schema
(the columns lmms-eval's task code reads, as the hub's dataset viewer lists them), images generated with PIL and
embedded as {"bytes", "path"} structs. A few rows each, written into a test's folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png(seed: int, size=(24, 20)) -> dict:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": f"{seed}.png"}


def write(root: Path, folder: str, split: str, rows: list[dict], shards: int = 1) -> Path:
    """`rows` as `shards` files named as the hub names them: FOLDER/SPLIT-0000i-of-0000n-<hash>.parquet."""
    root = Path(root)
    (root / folder).mkdir(parents=True, exist_ok=True)
    per = -(-len(rows) // shards)
    for i in range(shards):
        table = pa.Table.from_pylist(rows[i * per:(i + 1) * per])
        pq.write_table(table, root / folder / f"{split}-{i:05d}-of-{shards:05d}-0123abcd.parquet")
    return root


def mme(root):
    cats = [("existence", "Is there a dog in this image? Please answer yes or no."),
            ("OCR", "Is the word in the logo \"café\"? Please answer yes or no."),
            ("code_reasoning", "Will the code print 3? Please answer yes or no.")]
    rows = []
    for i, (cat, q) in enumerate(cats):
        for j, ans in enumerate(("Yes", "No")):
            rows.append({"question_id": f"{cat}/{i:04d}.png", "image": png(10 * i + j), "question": q,
                         "answer": ans, "category": cat})
    return write(root, "data", "test", rows, shards=2)


def pope(root):
    rows = [{"id": str(i), "question_id": str(i + 1), "question": f"Is there a {w} in the image?", "answer": a,
             "image_source": f"COCO_val2014_{i:012d}", "image": png(i), "category": c}
            for i, (w, a, c) in enumerate([("dog", "yes", "adversarial"), ("cat", "no", "adversarial"),
                                           ("car", "yes", "random"), ("bus", "no", "popular")])]
    return write(root, "data", "test", rows)


def mmbench(root):
    """MMBench dev (config `en`) with circular copies: index k·1e6 + i holds question i's options rotated."""
    base = [("What is shown?", "A diagram", ["cat", "dog", "bird", "fish"], "B", "nan"),
            ("Which colour dominates?", None, ["red", "green", "blue", None], "C", "attribute_recognition")]
    rows = []
    for i, (q, hint, opts, ans, cat) in enumerate(base):
        n = sum(o is not None for o in opts)
        for k in range(2):
            rot = opts[:n][k:] + opts[:n][:k] + opts[n:]
            gold = "ABCD"[("ABCD".index(ans) - k) % n]
            rows.append({"index": k * 1_000_000 + i, "question": q, "hint": hint if hint else "nan",
                         "A": rot[0], "B": rot[1], "C": rot[2], "D": rot[3], "answer": gold, "category": cat,
                         "image": png(20 + i), "source": "tiny", "L2-category": "perception", "split": "dev",
                         "comment": "nan"})
    return write(root, "en", "dev", rows)


def mmmu(root, several_images: bool = False):
    rows = []
    specs = [("validation_Art_Theory_1", "Which style is shown in <image 1>?", "['Baroque', 'Gothic', 'Cubism']",
              "multiple-choice", "B"),
             ("validation_Art_Theory_2", "What year? <image 1>", "[]", "open", "1907"),
             ("validation_Physics_1", "Find the force in <image 1>.", "['1 N', '2 N', '3 N', '4 N']",
              "multiple-choice", "C")]
    for i, (doc_id, q, opts, qtype, ans) in enumerate(specs):
        row = {"id": doc_id, "question": q, "options": opts, "explanation": "", "img_type": "['Photos']",
               "answer": ans, "topic_difficulty": "Easy", "question_type": qtype, "subfield": "x"}
        for n in range(1, 8):
            row[f"image_{n}"] = png(30 + i) if n == 1 else None
        rows.append(row)
    if several_images:
        rows[1]["question"] = "Compare <image 1> and <image 2>."
        rows[1]["image_2"] = png(99)
    return write(root, "data", "validation", rows)


def seedbench(root, video: bool = False):
    rows = [{"answer": a, "choice_a": "one", "choice_b": "two", "choice_c": "three", "choice_d": "four",
             "data_id": str(i), "data_type": "image", "question": q, "question_id": str(100 + i),
             "question_type_id": t, "image": [png(40 + i)], "segment": None}
            for i, (q, a, t) in enumerate([("How many apples?", "B", 5), ("Where is the cat?", "A", 4),
                                           ("How many dogs?", "D", 5)])]
    if video:
        rows.append({**rows[0], "data_id": "v1", "data_type": "video", "question_id": "900",
                     "question_type_id": 10, "image": [png(90), png(91), png(92)]})
    return write(root, "data", "test", rows)


def chartqa(root):
    rows = [{"type": t, "question": q, "answer": a, "image": png(50 + i)}
            for i, (t, q, a) in enumerate([("human_test", "What is the peak value?", "42"),
                                           ("augmented_test", "Which year is lowest?", "2019"),
                                           ("human_test", "What share is blue?", "35%")])]
    return write(root, "data", "test", rows)


def ocrbench(root):
    rows = [{"dataset": d, "question": q, "question_type": t, "answer": a, "image": png(60 + i)}
            for i, (d, q, t, a) in enumerate([("IIIT5K", " what is written in the image? ", "Regular Text Recognition",
                                               ["SALE"]),
                                              ("docVQA", "What is the date?", "Doc-oriented VQA", ["1 May", "May 1"])])]
    return write(root, "data", "test", rows)


def _vqa_rows(seed, extra):
    qs = [("what color is the bus?", ["red"] * 7 + ["maroon"] * 3), ("IS THIS A DOG?", ["yes"] * 10),
          ("how many people?", ["2"] * 6 + ["two"] * 4)]
    return [{"question_id": f"q{i}", "question": q, "answers": a, "image": png(seed + i), **extra}
            for i, (q, a) in enumerate(qs)]


def vizwiz(root):
    return write(root, "data", "val", _vqa_rows(70, {"category": "other"}))


def okvqa(root):
    return write(root, "data", "val2014", _vqa_rows(73, {"question_type": "one", "answer_type": "other"}))


def textvqa(root):
    rows = _vqa_rows(76, {"image_id": "abc", "question_tokens": [], "image_width": 24, "image_height": 20,
                          "flickr_original_url": "", "flickr_300k_url": "", "image_classes": [], "set_name": "val",
                          "ocr_tokens": ["SALE"]})
    return write(root, "data", "validation", rows)


def docvqa(root):
    rows = [{"questionId": str(i), "question": q, "question_types": ["form"], "image": png(80 + i), "docId": i,
             "ucsf_document_id": "x", "ucsf_document_page_no": "1", "answers": a, "data_split": "val"}
            for i, (q, a) in enumerate([("What is the total?", ["$12.50", "12.50"]), ("Who signed?", ["J. Smith"])])]
    return write(root, "DocVQA", "validation", rows)


def ai2d(root):
    rows = [{"question": q, "options": o, "answer": a, "image": png(85 + i)}
            for i, (q, o, a) in enumerate([("Which stage comes first?", ["egg", "larva", "adult"], "0"),
                                           ("What eats grass?", ["lion", "cow", "hawk", "snake"], "1")])]
    return write(root, "data", "test", rows)


def scienceqa(root):
    rows = [{"image": png(88 + i), "question": q, "choices": c, "answer": a, "hint": h, "task": "closed choice",
             "grade": "grade3", "subject": "natural science", "topic": "t", "category": "c", "skill": "s",
             "lecture": "", "solution": ""}
            for i, (q, c, a, h) in enumerate([("Which is a mammal?", ["shark", "whale"], 1, "Look at the animals."),
                                              ("Which is hotter?", ["ice", "lava", "snow"], 1, "")])]
    return write(root, "ScienceQA-IMG", "test", rows)


def gqa(root):
    rows = [{"id": str(200 + i), "imageId": im, "question": q, "answer": a, "fullAnswer": a, "isBalanced": True,
             "groups": {"global": None, "local": "x"}, "entailed": "", "equivalent": "",
             "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
             "annotations": {"answer": "", "question": "", "fullAnswer": ""}, "semanticStr": ""}
            for i, (im, q, a) in enumerate([("n1", "Is the sky blue?", "yes"), ("n2", "What animal is it?", "dog"),
                                            ("n1", "What color is the car?", "red")])]
    write(root, "testdev_balanced_instructions", "testdev", rows)
    images = [{"id": im, "image": png(95 + i)} for i, im in enumerate(["n0", "n1", "n2"])]
    return write(root, "testdev_balanced_images", "testdev", images)


def mmstar(root):
    rows = [{"index": i, "question": q, "image": png(100 + i), "answer": a, "category": c, "l2_category": l2,
             "meta_info": {"source": "x", "split": "val", "image_path": ""}}
            for i, (q, a, c, l2) in enumerate([
                ("Which option describes the image?\nOptions: A: a cat, B: a dog, C: a car, D: a tree", "A",
                 "coarse perception", "image scene and topic"),
                ("How many objects?\nOptions: A: 1, B: 2, C: 3, D: 4", "C", "fine-grained perception",
                 "object counting"),
                ("What is 2+2?\nOptions: A: 3, B: 4, C: 5, D: 6", "B", "math", "numeric commonsense and calculation"),
                ("Count the dots.\nOptions: A: 5, B: 6, C: 7, D: 8", "D", "fine-grained perception", "object counting")])]
    # Lin-Chen/MMStar: one file at the root, named by README.md's `configs:` (its only config, "val")
    Path(root).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), Path(root) / "mmstar.parquet")
    (Path(root) / "README.md").write_text("---\nconfigs:\n- config_name: val\n  data_files:\n  - split: val\n"
                                          "    path: mmstar.parquet\n---\n# MMStar\n")
    return Path(root)


def realworldqa(root):
    rows = [{"image": png(110 + i), "question": q, "answer": a}
            for i, (q, a) in enumerate([("Which way is the road turning?\nA. Left\nB. Right\nC. Straight\nPlease answer "
                                         "directly with only the letter of the correct option and nothing else.", "B"),
                                        ("How many cars are there? Please answer directly with a single word or "
                                         "number.", "3")])]
    return write(root, "data", "test", rows)


BUILDERS = {"mme": mme, "pope": pope, "mmbench_en_dev_static": mmbench, "mmmu_val": mmmu, "seedbench": seedbench,
            "chartqa": chartqa, "ocrbench": ocrbench, "vizwiz_vqa_val": vizwiz, "ok_vqa_val2014": okvqa,
            "textvqa_val": textvqa, "docvqa_val": docvqa, "ai2d": ai2d, "scienceqa_img": scienceqa, "gqa": gqa,
            "mmstar": mmstar, "realworldqa": realworldqa}
