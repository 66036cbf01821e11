"""How a projector is fitted to this encoder and this LLM: one small function per method.

`FITS` maps each value of the `fit` option to its function; each takes the plan and the processor written to the
output folder (so images are preprocessed exactly as a user's will be) and returns the projector and how it was
made. `transfer` re-targets a projector at another LLM through shared token embeddings; it needs no images, so
it runs while planning, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from ..checkpoint import LazyTensor

if TYPE_CHECKING:
    from .plan import StitchPlan


@dataclass
class Fitted:
    projector: object  # projectors.Projector
    how: str  # where the projector came from and how it was made
    residual: float | None = None
    losses: list[float] = field(default_factory=list)


def transfer(projector, source_language, language, tokenizer, embeddings: torch.Tensor, options):
    """`projector`, made for the LLM at `source_language`, re-targeted at `language`; (projector, TransferReport)."""
    from ..projectors import transfer_projector

    return transfer_projector(projector, source_language, language, options.transfer_method, options.alpha,
                              target_tokenizer=tokenizer, target_embeddings=embeddings)


def _device(plan: StitchPlan) -> str:
    return plan.options.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _load_state(tensors: dict[str, LazyTensor], dtype=None) -> dict[str, torch.Tensor]:
    return {k: (t.load() if dtype is None else t.load().to(dtype)) for k, t in tensors.items()}


def _closed_form(method: str) -> Callable:
    def fit(plan: StitchPlan, image_processor, processor) -> Fitted:
        """A new linear projector from the encoder's features of each image to the LLM's embedding of its caption
        (`method`: ridge or procrustes)."""
        import transformers

        from ..adapters.hf_export import build_config
        from ..projectors.align import caption_embeddings, fit_projector, image_features

        o, vis, pairs = plan.options, plan.vision, plan.pairs
        state = _load_state({k: v for k, v in vis.tensors.items() if k not in vis.extra}, torch.float32)
        tower = getattr(transformers, vis.arch).from_pretrained(None, config=build_config(vis), state_dict=state)
        X = image_features(tower, image_processor, pairs, plan.features.layer, plan.features.strategy,
                           batch_size=o.batch_size, device=_device(plan), progress=o.progress)
        del tower
        Y = caption_embeddings(plan.language.tensors[plan.emb_in].load(), plan.tokenizer, [p.caption for p in pairs])
        projector, result = fit_projector(X, Y, "linear", method, o.alpha)
        return Fitted(projector, f"linear fitted in closed form ({method}) on {len(pairs)} image-caption pairs",
                      residual=result.residual)

    fit.__name__ = f"fit_{method}"
    return fit


def train(plan: StitchPlan, image_processor, processor) -> Fitted:
    """The projector trained on the captions with the encoder and the LLM frozen (the whole LLaVA in memory)."""
    import transformers

    from ..projectors.modules import from_state_dict
    from ..projectors.train import train_projector

    o, dev = plan.options, _device(plan)
    load_dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    model = transformers.LlavaForConditionalGeneration.from_pretrained(
        None, config=plan.config, state_dict=_load_state(plan.tensors, load_dtype), dtype=load_dtype)
    losses = train_projector(model, processor, plan.pairs, steps=o.train_steps, lr=o.lr, batch_size=o.batch_size,
                             device=dev, seed=o.seed, progress=o.progress)
    state = {k: v.detach().float().cpu() for k, v in model.model.multi_modal_projector.state_dict().items()}
    del model
    projector = from_state_dict(state, act=plan.config.projector_hidden_act)
    return Fitted(projector, plan.how + f", trained {o.train_steps} steps on {len(plan.pairs)} image-caption pairs",
                  losses=losses)


FITS: dict[str, Callable[..., Fitted]] = {"ridge": _closed_form("ridge"), "procrustes": _closed_form("procrustes"),
                                          "train": train}
