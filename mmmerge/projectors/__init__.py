"""Projectors: LLaVA-style modules, closed-form fitting, transfer to another LLM, a short training loop.

  modules   Projector (linear, identity, mlp{N}x_gelu) with LLaVA's names; `to_llava` for the checkpoint
  fit       ridge least squares and orthogonal Procrustes on paired features
  align     image-caption data and the closed-form projector fit on it
  transfer  re-target a projector at another LLM through shared token embeddings
  train     the alignment stage: frozen encoder and LLM, captioning loss, projector trained
  files     projector files (save/load), LLaVA folders and LLaVA's mm_projector.bin
"""

from ..lazy import lazy_exports

_WHERE = {
    **dict.fromkeys(["ProjectorSource", "load_projector", "save_projector"], ".files"),
    **dict.fromkeys(["LinearFit", "fit_linear", "procrustes", "ridge"], ".fit"),
    **dict.fromkeys(["Projector", "build", "compose", "from_state_dict", "parse_type", "to_llava"], ".modules"),
    **dict.fromkeys(["TransferReport", "transfer_projector"], ".transfer"),
}
__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
