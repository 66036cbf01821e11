"""Extract a LoRA from a fine-tune: per linear layer, the truncated SVD of (model - base).

By Eckart-Young the rank-k truncation U_k S_k V_kᵀ is the best rank-k approximation in Frobenius and
spectral norm; it is split evenly as B = U_k sqrt(S_k), A = sqrt(S_k) V_kᵀ so neither factor dwarfs the
other. The rank is `rank` for every module (capped by its size), or per module the smallest that keeps a
fraction `energy` of the squared singular values (then `rank` is the cap). Only the Linear / Conv1D layers
of the component (lm_head excluded) are captured; other tensors that differ are reported, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters import open_checkpoint
from ..adapters.hf_export import meta_model
from ..checkpoint import Component
from ..device import resolve_device
from ..errors import NonFiniteError, RecipeError, ShapeMismatchError
from ..io.atomic import atomic_output_dir, check_output_dir
from ..io.claim import writes_output
from ..validate import integer
from .save import lora_config, save_adapter, target_modules
from .targets import component_prefix, peft_name

EXCLUDED = ("lm_head",)


@dataclass
class Row:
    module: str  # peft module name
    shape: tuple[int, int]
    rank: int
    rel_error: float  # ||delta - B A||_F / ||delta||_F
    energy: float  # retained fraction of squared singular values


def linear_modules(component: Component, model: torch.nn.Module) -> dict[str, bool]:
    """{module name: is Conv1D (weight stored (in, out))} for the Linear-like layers of the component."""
    from transformers.pytorch_utils import Conv1D

    out = {}
    for name, mod in model.named_modules():
        if name.split(".")[-1] in EXCLUDED or f"{name}.weight" not in component.tensors:
            continue
        if isinstance(mod, torch.nn.Linear) or isinstance(mod, Conv1D):
            out[name] = isinstance(mod, Conv1D)
    return out


def choose_rank(s: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """The rank kept for singular values `s` (descending)."""
    cap = len(s) if rank is None else min(rank, len(s))
    e = s.double() ** 2
    total = float(e.sum())
    if total == 0:  # an unchanged layer needs no adapter module
        return 0
    if energy is None:
        return cap
    kept = torch.cumsum(e, 0) / total
    k = int((kept < energy - 1e-12).sum()) + 1
    return min(k, cap)


def factorize(delta: torch.Tensor, rank: int | None, energy: float | None):
    """(A, B, k, relative error, retained energy) for a float delta of shape (out, in)."""
    U, S, Vh = torch.linalg.svd(delta.float(), full_matrices=False)
    k = choose_rank(S, rank, energy)
    e = S.double() ** 2
    total = float(e.sum())
    kept = float(e[:k].sum()) / total if total else 1.0
    err = (max(total - float(e[:k].sum()), 0.0) / total) ** 0.5 if total else 0.0
    root = S[:k].sqrt()
    B = U[:, :k] * root
    A = root[:, None] * Vh[:k]
    return A, B, k, err, kept


@writes_output(inputs=("base", "model"))
def extract_lora(base: Path, model: Path, out: Path, *, rank: int | None = None, energy: float | None = None,
                 component: str = "language", device: str = "cpu", force: bool = False) -> tuple[list[Row], list[str]]:
    """Write a peft adapter for `base` that turns it into (an approximation of) `model`.

    Returns the per-module table and the names of differing tensors the adapter cannot carry.
    """
    if rank is None and energy is None:
        raise RecipeError("give a rank, an energy fraction, or both")
    if rank is not None:
        integer("rank", rank, low=1)
    if energy is not None and not (isinstance(energy, (int, float)) and 0 < energy <= 1):
        raise RecipeError(f"energy must be in (0, 1], got {energy}")
    resolve_device(device)
    check_output_dir(out, force)
    bck, mck = open_checkpoint(base), open_checkpoint(model)
    bc, mc = bck.component(component), mck.component(component)
    meta = meta_model(bc)
    modules = linear_modules(bc, meta)
    if not modules:
        raise ShapeMismatchError(f"{base}: the {component} component has no linear layers")
    if len(set(modules.values())) > 1:
        raise ShapeMismatchError(f"{base}: mixes Linear and Conv1D layers; one fan_in_fan_out cannot describe both")
    for name in modules:
        w = f"{name}.weight"
        if w not in mc.tensors:
            raise ShapeMismatchError(f"{component}: tensor {w} is in {base} but not in {model}")
        if mc.tensors[w].shape != bc.tensors[w].shape:
            raise ShapeMismatchError(f"{component}: tensor {w} has shape {tuple(bc.tensors[w].shape)} in {base} "
                                     f"but {tuple(mc.tensors[w].shape)} in {model}")
    conv1d = next(iter(modules.values()))
    rows, factors, ranks = [], {}, {}
    for name in modules:
        w = f"{name}.weight"
        delta = mc.tensors[w].load().to(device, torch.float32) - bc.tensors[w].load().to(device, torch.float32)
        if not torch.isfinite(delta).all():  # an SVD would fail on it with a LinAlgError
            for who, t in ((base, bc.tensors[w]), (model, mc.tensors[w])):
                n = int((~torch.isfinite(t.load().float())).sum())
                if n:
                    raise NonFiniteError(f"tensor {w}: {who} holds {n} non-finite value(s) (NaN/inf); repair it")
            raise NonFiniteError(f"tensor {w}: {model} minus {base} overflows float32")
        if conv1d:
            delta = delta.T
        A, B, k, err, kept = factorize(delta, rank, energy)
        pname = peft_name(bck, component, name)
        rows.append(Row(pname, tuple(delta.shape), k, err, kept))
        if k > 0:
            factors[pname] = (A.cpu(), B.cpu())
            ranks[pname] = k
    if not factors:
        raise ShapeMismatchError(f"{model}: no linear layer of the {component} component differs from {base}; "
                                 f"there is nothing to extract")
    all_modules = [peft_name(bck, component, n) for n, _ in meta.named_modules() if n]
    targets = target_modules(list(factors), all_modules, component_prefix(bck, component))
    config = lora_config(ranks, targets, str(Path(base).absolute()), fan_in_fan_out=conv1d)
    with atomic_output_dir(out, force) as tmp:
        save_adapter(tmp, config, factors)
    return rows, not_captured(bc, mc, modules)


def not_captured(bc: Component, mc: Component, modules) -> list[str]:
    """Tensors other than the extracted weights that differ between base and model: LoRA cannot carry them."""
    skip = {f"{m}.weight" for m in modules}
    out = []
    for name, t in bc.tensors.items():
        if name in skip:
            continue
        other = mc.tensors.get(name)
        if other is None or other.shape != t.shape or not torch.equal(t.load(), other.load()):
            out.append(name)
    return out


def format_table(rows: list[Row]) -> str:
    width = max(len(r.module) for r in rows)
    lines = [f"{'module':<{width}}  {'shape':>11}  {'rank':>4}  {'rel.err':>8}  {'energy':>7}"]
    for r in rows:
        lines.append(f"{r.module:<{width}}  {f'{r.shape[0]}x{r.shape[1]}':>11}  {r.rank:>4}  {r.rel_error:>8.2e}  "
                     f"{r.energy:>7.4f}")
    return "\n".join(lines)
