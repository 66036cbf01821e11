"""Models named by hub ID (`org/name`, `org/name@revision`), resolved through huggingface_hub: the local cache
first; missing files are downloaded only when the network is allowed (not `--offline`, not HF_HUB_OFFLINE)."""

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
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    m = HUB_ID.match(ref)
    if m is None:
        raise UnreadableFileError(f"{ref}: no such file or folder, and not a hub ID (org/name[@revision])")
    offline = offline_by_default() if offline is None else offline
    try:
        return Path(snapshot_download(m["repo"], revision=m["revision"], local_files_only=offline,
                                      allow_patterns=MODEL_FILES))
    except LocalEntryNotFoundError:
        where = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        how = "downloads are off (--offline or HF_HUB_OFFLINE=1)" if offline else "the hub cannot be reached"
        raise UnreadableFileError(f"{ref}: not a local path, not in the Hugging Face cache ({where}), and {how}") from None
    except RepositoryNotFoundError:
        raise UnreadableFileError(f"{ref}: no such model repository on the hub (or it is private)") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise UnreadableFileError(f"{ref}: cannot fetch it from the hub ({str(e).splitlines()[0]})") from None
