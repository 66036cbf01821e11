"""Device names checked before any work: `--device bogus` or `cuda` on a machine without CUDA is a user's
mistake that deserves one line, not a torch traceback halfway through a run."""

from __future__ import annotations

import torch

from .errors import DeviceError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device `device` names (None: cuda when available, else cpu); DeviceError when torch does not
    know the name, it is neither cpu nor cuda, or this machine lacks it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"device {device!r}: not a device name; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {device}: use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
