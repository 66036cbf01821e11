"""Datasets as `huggingface_hub.snapshot_download` leaves lmms-lab's repositories: parquet shards per config and
split, images embedded in the rows as {"bytes": ..., "path": ...} structs.

Which files hold a split is read from the README's `configs:` front matter when it lists them (as the `datasets`
library reads it), else from the hub's naming convention (`<split>-00000-of-00002.parquet` in the config's folder
or `data/`). Rows stream shard by shard, so `--limit N` reads only what it needs; the images read stay in memory
encoded, as the shards hold them (a run holds about the split's size on disk, not its decoded pixels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..images import EmbeddedImage
from .tasks import EvalDataError


def _front_matter(root: Path) -> dict:
    readme = root / "README.md"
    if not readme.is_file():
        return {}
    import yaml

    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _listed(root: Path, config: str | None, split: str) -> list[Path] | None:
    """The files README.md's `configs:` names for (config, split); None when it names none for that config. Without
    a config, the one named "default", or the only one listed (as `datasets` picks it)."""
    configs = [c for c in _front_matter(root).get("configs") or [] if isinstance(c, dict)]
    for c in configs:
        name = c.get("config_name", "default")
        if name != (config or "default") and not (config is None and len(configs) == 1):
            continue
        files = c.get("data_files")
        entries = files if isinstance(files, list) else [files]
        for entry in entries:
            if isinstance(entry, dict) and entry.get("split") == split:
                paths = entry.get("path")
                found = sorted({p for pattern in (paths if isinstance(paths, list) else [paths])
                                for p in root.glob(str(pattern)) if p.is_file()})
                return found
        return None
    return None


def shards(root: Path, config: str | None, split: str) -> list[Path]:
    """The parquet files of split `split` of `config` (None: the default config) in a dataset folder, in order."""
    root = Path(root)
    if not root.is_dir():
        raise EvalDataError(f"{root}: not a folder (a dataset as huggingface_hub downloads it: parquet shards)")
    listed = _listed(root, config, split)
    if listed is not None:
        files = [f for f in listed if f.suffix == ".parquet"]
    else:
        folders = [root / config] if config else [root / "data", root]
        patterns = (f"{split}-*.parquet", f"{split}.parquet", f"{split}/*.parquet", f"*-{split}-*.parquet")
        files = next((found for d in folders for found in [sorted({p for pat in patterns for p in d.glob(pat)})]
                      if found), [])
    if not files:
        where = f"{root / config}" if config else f"{root}/data or {root}"
        raise EvalDataError(f"{root}: no parquet shards of split {split!r}"
                            f"{f' of config {config!r}' if config else ''} (looked in README.md's configs and for "
                            f"{split}-*.parquet in {where}); is it the dataset this task reads?")
    return files


def rows(files: list[Path], limit: int | None = None) -> Iterator[tuple[str, dict]]:
    """("FILE: row N", row) for every row of the shards in order; the first `limit` only when given."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = 0
    for f in files:
        try:
            reader = pq.ParquetFile(f)
            n = 0
            for batch in reader.iter_batches(batch_size=64):
                for row in batch.to_pylist():
                    if limit is not None and count >= limit:
                        return
                    yield f"{f}: row {n}", row
                    n, count = n + 1, count + 1
        except (pa.ArrowException, OSError) as e:
            raise EvalDataError(f"{f}: not a readable parquet file ({str(e).splitlines()[0]})") from None


def embedded_image(value, where: str) -> EmbeddedImage:
    """An image cell ({"bytes", "path"} struct, or raw bytes) as an EmbeddedImage; one line when it holds none."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if isinstance(data, (bytes, bytearray)) and data:
        return EmbeddedImage(bytes(data), where)
    path = value.get("path") if isinstance(value, dict) else None
    raise EvalDataError(f"{where}: the image cell holds no image bytes"
                        f"{f' (only a path, {path!r})' if path else ''}; eval reads images embedded in the shards, as "
                        f"lmms-lab's datasets hold them")
