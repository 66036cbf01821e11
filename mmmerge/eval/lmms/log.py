"""lmms-eval sample logs (`--log_samples`, the 0.3 form): one JSON line per document, read in `doc_id` order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...io import read_jsonl
from ..tasks import EvalDataError


@dataclass
class Entry:
    """One logged document: the dataset row, and the answer as `process_results` receives it (stripped)."""
    doc_id: int
    doc: dict
    answer: str
    where: str  # "FILE: line N", for messages

    def field(self, name: str):
        """A field of the dataset row; a row without it is refused with one line naming the file and line."""
        if name not in self.doc:
            raise EvalDataError(f"{self.where}: the document has no `{name}` field, which this task scores with "
                                f"(is it a log of another task?)")
        return self.doc[name]

    def has(self, name: str) -> bool:
        return name in self.doc and self.doc[name] is not None


def _answer(row: dict, where: str) -> str:
    """filtered_resps[0] (its first element again when a filter kept a list), None as "", then stripped as
    lmms-eval's Task.process_results strips every generated answer before the task's own code sees it."""
    resps = row.get("filtered_resps")
    if not isinstance(resps, list) or not resps:
        raise EvalDataError(f"{where}: `filtered_resps` must be a non-empty list (the answers after the task's "
                            f"filter)")
    answer = resps[0]
    if isinstance(answer, list):
        answer = answer[0] if answer else None
    if answer is None:
        return ""
    if not isinstance(answer, str):
        raise EvalDataError(f"{where}: `filtered_resps[0]` is {type(answer).__name__}, not a generated answer "
                            f"(a log of a loglikelihood task?)")
    return answer.strip()


def entries_from_rows(rows: list[tuple[str, dict]]) -> list[Entry]:
    """(where, row) pairs -> entries sorted by doc_id; a row without `doc` or with a repeated doc_id is refused."""
    out, seen = [], {}
    for where, row in rows:
        if "doc" not in row:
            raise EvalDataError(f"{where}: no `doc` field: lmms-eval 0.4 and later leave the dataset row out of "
                                f"--log_samples, so their logs cannot be rescored from the file alone (log with "
                                f"lmms-eval 0.3)")
        if not isinstance(row["doc"], dict):
            raise EvalDataError(f"{where}: `doc` must be a JSON object (the dataset row)")
        doc_id = row.get("doc_id")
        if not isinstance(doc_id, int) or isinstance(doc_id, bool):
            raise EvalDataError(f"{where}: `doc_id` must be an integer")
        if doc_id in seen:
            raise EvalDataError(f"{where}: doc_id {doc_id} again (first at {seen[doc_id]}): one line per document")
        seen[doc_id] = where
        out.append(Entry(doc_id, row["doc"], _answer(row, where), where))
    if not out:
        raise EvalDataError("the sample log holds no documents")
    return sorted(out, key=lambda e: e.doc_id)


def read_log(path) -> list[Entry]:
    """The entries of a sample log file, in doc_id order."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: {'a folder, not' if path.is_dir() else 'no such'} sample log file")
    try:
        rows = read_jsonl(path, error=EvalDataError)
    except UnicodeDecodeError as e:
        raise EvalDataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}): not an lmms-eval sample "
                            f"log") from None
    return entries_from_rows([(f"{path}: line {n}", row) for n, row in rows])
