"""An lmms-eval benchmark as an eval task: prompts as lmms-eval builds them, answers scored by the same scorers
`mmmerge score` uses, read from either of two sources of the same documents:

- a parquet folder (or a cached dataset ID) in the task's lmms-lab schema, the images embedded;
- a JSONL file, one document a line: the dataset row in the same schema, with `image` a path (or a list of
  paths), relative to the images folder when one is given, else to the file.

A document is a dataset row; its id is its position in the split (lmms-eval's doc_id). Its images are the ones
lmms-eval's `doc_to_visual` gives the model, in that order: several for MMMU questions that show several, and for
SEED-Bench's video questions (their frames); the prompt then holds one image placeholder per image, before the
text, as lmms-eval's LLaVA puts them.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...hub import is_hub_id, resolve_dataset
from ...io import read_jsonl
from ..parquet import embedded_image, rows, shards
from ..tasks import EvalDataError, EvalTask, Sample
from .log import Entry
from .mmbench import MAIN
from .per_document import document_scores
from .sources import GQA_IMAGES, LMMS_SOURCES, MMMU_PLACEHOLDERS
from .table import LMMS_TASKS

BREAKDOWN_BY_SCORER = ("mme", "mmstar")  # headlines that are not means over documents: each category scored so
FULL_SCALE = {"fraction": 1.0, "percent": 100.0, "points": 2000.0}  # a headline's maximum, by the table's unit
DOCUMENT_IMAGE = "image"  # a JSONL document's image path (or list of paths)


def dataset_folder(data) -> Path:
    """A folder as given, else a dataset ID from the Hugging Face cache."""
    if data is not None and Path(data).exists():
        return Path(data)
    if data is not None and is_hub_id(str(data)):
        return resolve_dataset(str(data))
    raise EvalDataError(f"{data}: no such folder, and not a dataset ID (org/name) either")


def _mmmu_image_columns(prompt: str) -> list[str]:
    """mmmu_doc_to_visual: the distinct "<image N>" placeholders, sorted, as column names image_N."""
    return sorted({t.strip("<>").replace(" ", "_") for t in re.findall(r"<image \d+>", prompt)})


class LmmsEvalTask(EvalTask):
    """One lmms-eval task (a name in LMMS_SOURCES and LMMS_TASKS) as `evaluate` runs it."""
    one_line = False  # lmms-eval stops at the end of sequence or the task's `until`, not at a line end
    instruction = ""  # the prompt is built whole from the row

    def __init__(self, name: str):
        if name not in LMMS_SOURCES:
            raise EvalDataError(f"task {name!r}: not an lmms-eval task mmmerge runs ({', '.join(LMMS_SOURCES)})")
        self.name, self.source, self.spec = name, LMMS_SOURCES[name], LMMS_TASKS[name]
        self.headline, self.max_new_tokens = self.spec.headline, self.source.max_new_tokens
        self.breakdown, self.default_data = self.source.breakdown, self.source.dataset
        self.full_scale = FULL_SCALE[self.spec.unit]

    @property
    def prompt(self) -> str:
        return "{question}"

    @property
    def stop_strings(self) -> tuple:
        return self.source.until

    # ------------------------------------------------------------------------------------------------ reading
    def read(self, questions=None, annotations=None, images=None):
        return self.read_limited(questions, annotations, images, None)

    def read_limited(self, questions, annotations, images, limit):
        if annotations is not None:
            raise EvalDataError(f"task {self.name} reads its answers from its documents: give only --data (a "
                                f"parquet folder, a dataset ID, or a JSONL file of documents)")
        if questions is not None and Path(questions).is_file():
            samples = self._from_documents(Path(questions), images, limit)
        else:
            if images is not None:
                raise EvalDataError(f"task {self.name} reads its images from the dataset's parquet shards: give "
                                    f"only --data (the folder or dataset ID)")
            samples = self._from_parquet(questions if questions is not None else self.default_data, limit)
        if samples:  # rows the scorer refuses (a field missing, MME's pairs cut by --limit) stop the run here
            self.spec.scorer(self._entries(samples, [""] * len(samples)), [])
        return samples

    def _from_parquet(self, data, limit) -> list[Sample]:
        root = dataset_folder(data)
        found = list(rows(shards(root, self.source.config, self.source.split), limit))
        if self.name == "gqa":
            found = self._with_gqa_images(root, found)
        return [self._sample(doc_id, where, row) for doc_id, (where, row) in enumerate(found)]

    def _from_documents(self, path: Path, images, limit) -> list[Sample]:
        """The JSONL reader: each line a dataset row whose `image` names its file(s)."""
        folder = Path(images) if images is not None else path.parent
        samples = []
        for doc_id, (n, row) in enumerate(read_jsonl(path, EvalDataError)):
            if limit is not None and doc_id >= limit:
                break
            where = f"{path}: line {n}"
            paths = row.get(DOCUMENT_IMAGE) if isinstance(row, dict) else None
            paths = [paths] if isinstance(paths, str) else paths
            if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
                raise EvalDataError(f"{where}: a document needs `{DOCUMENT_IMAGE}` (a path, or a list of paths) "
                                    f"beside the fields of lmms-eval's {self.name} row")
            row = {k: v for k, v in row.items() if k != DOCUMENT_IMAGE}
            samples.append(self._sample(doc_id, where, row, tuple(folder / p for p in paths)))
        return samples

    def _with_gqa_images(self, root: Path, found: list) -> list:
        """gqa_process_docs: each question's image is the row of the images config whose `id` is its imageId."""
        config, split, key = GQA_IMAGES
        wanted = {row.get("imageId") for _, row in found}
        by_id = {row[key]: row["image"] for _, row in rows(shards(root, config, split)) if row.get(key) in wanted}
        for where, row in found:
            if row.get("imageId") not in by_id:
                raise EvalDataError(f"{where}: imageId {row.get('imageId')!r} is not in the {config} config")
            row["image"] = by_id[row["imageId"]]
        return found

    def _image_cells(self, row: dict, prompt: str) -> tuple[list, list[str]]:
        """The document's image cells and the columns they came from."""
        if self.source.image == MMMU_PLACEHOLDERS:
            columns = _mmmu_image_columns(prompt)
            return [row.get(c) for c in columns], columns
        value = row.get(self.source.image)
        cells = value if isinstance(value, list) else [] if value is None else [value]
        return cells, [self.source.image]

    def _sample(self, doc_id: int, where: str, row: dict, files: tuple | None = None) -> Sample:
        """A document; its images are `files` (the JSONL reader's paths) or else the row's embedded cells."""
        try:
            prompt = self.source.prompt(row, self.source.post)
        except KeyError as e:
            raise EvalDataError(f"{where}: no column {e} (is this the dataset of lmms-eval's {self.name}?)") from None
        except (TypeError, ValueError, SyntaxError) as e:
            raise EvalDataError(f"{where}: cannot build {self.name}'s prompt from this row ({e})") from None
        images = files if files is not None else self._embedded_images(doc_id, where, row, prompt)
        doc = {k: v for k, v in row.items() if not _holds_images(v)}  # the row as lmms-eval logs it: images dropped
        info = {"row": where, "doc": doc}
        if self.source.breakdown is not None:
            info[self.source.breakdown] = self._category(doc, where)
        target = doc.get("answer", doc.get("answers"))
        return Sample(doc_id, images[0] if len(images) == 1 else images, prompt, target, info)

    def _embedded_images(self, doc_id: int, where: str, row: dict, prompt: str) -> tuple:
        cells, columns = self._image_cells(row, prompt)
        if self.source.image == MMMU_PLACEHOLDERS and None in cells:
            raise EvalDataError(f"{where}: the prompt shows <{columns[cells.index(None)].replace('_', ' ')}>, but "
                                f"{columns[cells.index(None)]} is empty")
        if not cells:
            raise EvalDataError(f"{where}: document {doc_id} has no image in {', '.join(columns) or 'its prompt'}")
        return tuple(embedded_image(c, f"{where} {column}") for c, column in zip(cells, _names(columns, cells)))

    def _category(self, doc: dict, where: str):
        if self.source.breakdown == "subject":
            from .mmmu import subject

            return subject(Entry(0, doc, "", where))
        if self.source.breakdown not in doc:
            raise EvalDataError(f"{where}: no column {self.source.breakdown!r} (is this the dataset of lmms-eval's "
                                f"{self.name}?)")
        return doc[self.source.breakdown]

    def split_key(self, sample: Sample):
        """The dataset's question id where it has one (MME's pair of questions shares one; MMBench's circular
        copies share their index modulo 1e6), else the doc_id."""
        column = self.source.question_id
        if column is None or column not in sample.info["doc"]:
            return sample.question_id
        value = sample.info["doc"][column]
        return value % MAIN if self.name == "mmbench_en_dev_static" and isinstance(value, int) else value

    # ------------------------------------------------------------------------------------------------ scoring
    def answer(self, raw: str) -> str:
        return raw.strip()  # Task.process_results strips every generated answer

    @staticmethod
    def _entries(samples, answers) -> list[Entry]:
        return [Entry(s.question_id, s.info["doc"], a, s.info["row"]) for s, a in zip(samples, answers)]

    def score(self, answer, sample):
        return self.score_all([sample], [answer])[0]

    def score_all(self, samples, answers) -> list[float]:
        return document_scores(self.name, self._entries(samples, answers))

    def metrics(self, samples, answers, scores) -> dict:
        entries, notes = self._entries(samples, answers), []
        out = dict(self.spec.scorer(entries, notes))
        out["questions"] = len(samples)
        field = self.source.breakdown
        if field is not None:
            groups: dict = {}
            for s, e, sc in zip(samples, entries, scores):
                groups.setdefault(s.info[field], []).append((e, sc))
            out[f"per_{field}"] = {str(k): self._group_score([e for e, _ in g], [sc for _, sc in g])
                                   for k, g in groups.items()}
        if notes:
            out["notes"] = notes
        return out

    def _group_score(self, entries, scores) -> float:
        if self.name in BREAKDOWN_BY_SCORER:
            m = self.spec.scorer(entries, [])
            return m.get(self.headline, next(iter(m.values())))
        return sum(scores) / len(scores)


def _names(columns: list[str], cells: list) -> list[str]:
    """Each image's place in the row: its column, or the column and the index in its list (SEED's frames)."""
    return columns if len(columns) == len(cells) else [f"{columns[0]}[{i}]" for i in range(len(cells))]


def _holds_images(value) -> bool:
    """An image cell ({"bytes", "path"} struct or raw bytes), or a non-empty list of them."""
    if isinstance(value, list):
        return bool(value) and all(_holds_images(v) for v in value)
    return isinstance(value, (bytes, bytearray)) or (isinstance(value, dict) and "bytes" in value)
