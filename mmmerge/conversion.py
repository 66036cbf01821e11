"""`convert`: one component of any checkpoint mmmerge reads, written as a transformers folder.

An open_clip or timm vision encoder becomes a folder `AutoModel.from_pretrained` and
`AutoImageProcessor.from_pretrained` load (the source's preprocessing as the image processor), so any tool that
takes a transformers encoder, and `stitch`, can use it.
"""

from __future__ import annotations

from pathlib import Path

from .io.claim import writes_output


@writes_output(inputs=("path",))  # the output never over the checkpoint it converts; locked for the run
def convert(path, out, *, component: str = "vision", force: bool = False) -> list[str]:
    """Write the `component` ("vision" or "language") of the checkpoint at `path` to the transformers folder
    `out`; return the names of the tensors the transformers class does not hold (an open_clip projection head),
    which are left out. `force` replaces a non-empty `out`."""
    from .adapters import open_checkpoint
    from .adapters.hf_export import save_hf

    return save_hf(open_checkpoint(Path(path)).component(component), Path(out), force=force)
