"""Models named by hub ID (`org/name`, `org/name@revision`), resolved through huggingface_hub: the local cache
first; missing files are downloaded only when the network is allowed (not `--offline`, not HF_HUB_OFFLINE).
Datasets named by hub ID (eval's lmms-eval tasks) come from the local cache only."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UnreadableFileError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
# What a merge reads from a model repository: configs, weights, tokenizer and processor files.
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def is_hub_id(ref: str) -> bool:
    return bool(HUB_ID.match(ref))


def offline_by_default() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve(ref: str, *, offline: bool | None = None) -> Path:
    """The local folder of hub model `ref` (a snapshot in the huggingface_hub cache)."""
    return _snapshot(ref, offline=offline_by_default() if offline is None else offline, repo_type="model",
                     patterns=MODEL_FILES)


def resolve_dataset(ref: str) -> Path:
    """The local folder of hub dataset `ref` (e.g. lmms-lab/MME), from the huggingface_hub cache only: a dataset
    is gigabytes, so eval never downloads one; the message says how to."""
    return _snapshot(ref, offline=True, repo_type="dataset", patterns=None)


def _snapshot(ref: str, *, offline: bool, repo_type: str, patterns) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    m = HUB_ID.match(ref)
    if m is None:
        raise UnreadableFileError(f"{ref}: no such file or folder, and not a hub ID (org/name[@revision])")
    try:
        return Path(snapshot_download(m["repo"], revision=m["revision"], repo_type=repo_type, local_files_only=offline,
                                      allow_patterns=patterns))
    except LocalEntryNotFoundError:
        where = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        if repo_type == "dataset":
            raise UnreadableFileError(f"{ref}: not a local folder and not in the Hugging Face cache ({where}); eval "
                                      f"reads datasets from the cache only: download it first with `hf download "
                                      f"--repo-type dataset {m['repo']}`") from None
        how = "downloads are off (--offline or HF_HUB_OFFLINE=1)" if offline else "the hub cannot be reached"
        raise UnreadableFileError(f"{ref}: not a local path, not in the Hugging Face cache ({where}), and {how}") from None
    except RepositoryNotFoundError:
        raise UnreadableFileError(f"{ref}: no such {repo_type} repository on the hub (or it is private)") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise UnreadableFileError(f"{ref}: cannot fetch it from the hub ({str(e).splitlines()[0]})") from None
