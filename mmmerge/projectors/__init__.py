"""Projectors: LLaVA-style modules, closed-form fitting, transfer to another LLM, a short training loop.

  modules   Projector (linear, identity, mlp{N}x_gelu) with LLaVA's names; `to_llava` for the checkpoint
  fit       ridge least squares and orthogonal Procrustes on paired features
  align     image-caption data and the closed-form projector fit on it
  transfer  re-target a projector at another LLM through shared token embeddings
  train     the alignment stage: frozen encoder and LLM, captioning loss, projector trained
  files     projector files (save/load), LLaVA folders and LLaVA's mm_projector.bin
"""

from .files import ProjectorSource, load_projector, save_projector
from .fit import LinearFit, fit_linear, procrustes, ridge
from .modules import Projector, build, compose, from_state_dict, parse_type, to_llava
from .transfer import TransferReport, transfer_projector

__all__ = ["Projector", "ProjectorSource", "LinearFit", "TransferReport", "build", "compose", "fit_linear",
           "from_state_dict", "load_projector", "parse_type", "procrustes", "ridge", "save_projector", "to_llava",
           "transfer_projector"]
