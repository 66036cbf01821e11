"""One LoRA from several with the same base, as peft's `add_weighted_adapter` does.

Per module, over the adapters that target it (weight w, scale s = its own alpha / r):
- `cat`: A = [w s A_i] stacked, B = [B_i] side by side: B A = sum w s B_i A_i exactly, rank sum r_i.
- `linear`, `ties`, `dare_*`, `magnitude_prune`: A and B are combined separately (peft's choice: cheap,
  rank kept, but B A is not sum w s B_i A_i), with weights sqrt(|w s|) (the sign of w s on A's side).
- `svd` and `<method>_svd`: the update sum w s B_i A_i (pruned per `<method>`) is truncated by SVD to
  `rank` (default: the largest rank among the inputs), B = U S, A = Vᵀ.
The result has scale 1 (lora_alpha = r) and exact per-module ranks in rank_pattern. A LoRA on a Conv1d/2d/3d is
combined as the matrices B (out, r) and A (r, in * kernel) its update is made of.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import NonFiniteError, RecipeError
from ..io.atomic import atomic_output_dir, check_output_dir
from ..io.claim import writes_output
from ..validate import integer
from .adapter import AdapterMismatchError, LoraAdapter, LoraModule, read_adapter
from .save import lora_config, save_adapter
from .sparsify import METHODS, combine

SVD_METHODS = ("svd",) + tuple(f"{m}_svd" for m in METHODS if m != "linear")
ALL_METHODS = ("cat",) + METHODS + SVD_METHODS
NEEDS_DENSITY = ("ties", "dare_linear", "dare_ties", "magnitude_prune")


def check_compatible(adapters: list[LoraAdapter]) -> None:
    """Same base (name and shapes), same layout conventions, nothing peft could not combine either."""
    first = adapters[0]
    for a in adapters:
        if a.whole:
            raise AdapterMismatchError(f"{a.file}: carries whole tensors ({next(iter(a.whole))}: modules_to_save or "
                                       f"a saved embedding layer) that cannot be combined")
        bias = next((m.name for m in a.modules.values() if m.bias is not None), None)
        if bias:
            raise AdapterMismatchError(f"{a.file}: module {bias} has a lora_B bias (lora_bias), which cannot be combined")
        b0, b1 = first.config.get("base_model_name_or_path"), a.config.get("base_model_name_or_path")
        if b0 and b1 and b0 != b1:
            raise AdapterMismatchError(f"{a.file}: made for base model {b1}, but {first.file} for {b0}")
        if bool(a.config.get("fan_in_fan_out")) != bool(first.config.get("fan_in_fan_out")):
            raise AdapterMismatchError(f"{a.file}: fan_in_fan_out differs from {first.file}")
    seen: dict[str, tuple[LoraModule, Path]] = {}
    for a in adapters:
        for name, m in a.modules.items():
            if name in seen:
                other, file = seen[name]
                if m.weight_shape != other.weight_shape or m.embedding != other.embedding:
                    raise AdapterMismatchError(f"{a.file}: module {name} updates a weight of shape {m.weight_shape}, "
                                               f"but {file} one of shape {other.weight_shape}: not the same base")
            else:
                seen[name] = (m, a.file)


def _svd(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, len(S))
    return Vh[:k].clone(), (U[:, :k] * S[:k]).clone()


def combine_module(method: str, mods: list[LoraModule], weights: list[float], *, density=None, rank=None,
                   sign_method="total", generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the combined module, scale 1. A convolution's factors are combined as matrices, A (r, in * kernel)
    and B (out, r), as peft's SVD flattens a Conv2d's update, and get their kernel dimensions back after."""
    A, B = _combine_matrices(method, mods, weights, density=density, rank=rank, sign_method=sign_method,
                             generator=generator)
    return A.reshape(A.shape[0], *mods[0].A.shape[1:]), B.reshape(*B.shape, *mods[0].B.shape[2:])


def _combine_matrices(method: str, mods: list[LoraModule], weights: list[float], *, density, rank, sign_method,
                      generator) -> tuple[torch.Tensor, torch.Tensor]:
    As = [m.A.load().float().flatten(1) for m in mods]
    Bs = [m.B.load().float().flatten(1) for m in mods]
    ws = [w * m.scale for w, m in zip(weights, mods)]
    if method == "cat":
        return torch.cat([w * A for w, A in zip(ws, As)]), torch.cat(Bs, dim=1)
    if method in SVD_METHODS:
        inner = "linear" if method == "svd" else method.removesuffix("_svd")
        deltas = [s * (B @ A) for s, A, B in zip([m.scale for m in mods], As, Bs)]
        return _svd(combine(inner, deltas, weights, density, sign_method, generator), rank)
    if len({A.shape for A in As}) > 1:
        raise AdapterMismatchError(f"module {mods[0].name}: {method} needs the same rank in every adapter, got "
                                   f"{', '.join(str(m.r) for m in mods)}; use cat or svd")
    wa = [abs(w) ** 0.5 * (1 if w >= 0 else -1) for w in ws]
    wb = [abs(w) ** 0.5 for w in ws]
    return (combine(method, As, wa, density, sign_method, generator),
            combine(method, Bs, wb, density, sign_method, generator))


@writes_output(inputs=("paths",))
def merge_loras(paths: list[Path], out: Path, *, method: str = "cat", weights: list[float] | None = None,
                density: float | None = None, rank: int | None = None, sign_method: str = "total",
                seed: int | None = None, force: bool = False) -> dict[str, int]:
    """Write one peft adapter combining `paths`; returns the rank of each module written."""
    if method not in ALL_METHODS:
        raise RecipeError(f"unknown method {method!r} (use one of: {', '.join(ALL_METHODS)})")
    weights = [1.0] * len(paths) if weights is None else list(weights)
    if len(weights) != len(paths):
        raise RecipeError(f"{len(paths)} adapters but {len(weights)} weights")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise RecipeError(f"weights must be finite numbers, got {w!r}")
    if density is not None and (isinstance(density, bool) or not isinstance(density, (int, float))):
        raise RecipeError(f"density must be a number, got {density!r}")
    if method.removesuffix("_svd") in NEEDS_DENSITY and (density is None or not 0 <= density <= 1):
        raise RecipeError(f"{method} needs --density in [0, 1]")
    if rank is not None:
        integer("rank", rank, low=1)
    check_output_dir(out, force)
    adapters = [read_adapter(p) for p in paths]
    check_compatible(adapters)
    if method in METHODS and len({max(m.r for m in a.modules.values()) for a in adapters}) > 1:
        raise AdapterMismatchError(f"{method} needs adapters of the same rank; got r = "
                                   f"{', '.join(str(max(m.r for m in a.modules.values())) for a in adapters)}; "
                                   f"use cat or svd")
    svd_rank = rank or max(m.r for a in adapters for m in a.modules.values())
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    names = list(dict.fromkeys(n for a in adapters for n in a.modules))
    factors, ranks, embeddings = {}, {}, set()
    for name in names:
        present = [(a.modules[name], w) for a, w in zip(adapters, weights) if name in a.modules]
        mods = [m for m, _ in present]
        bad = non_finite_error(name, mods, adapters)  # factors are small: checked before the SVDs and top-k rules
        if bad is not None:
            raise bad
        A, B = combine_module(method, mods, [w for _, w in present], density=density, rank=svd_rank,
                              sign_method=sign_method, generator=generator)
        if not (_finite(A) and _finite(B)):
            raise NonFiniteError(f"module {name}: the {method} combination overflowed to non-finite values (NaN/inf); "
                                 "check the weights")
        factors[name], ranks[name] = (A, B), A.shape[0]
        if mods[0].embedding:
            embeddings.add(name)
    first = adapters[0].config
    targets = _union_targets([a.config.get("target_modules") for a in adapters], names)
    config = lora_config(ranks, targets, first.get("base_model_name_or_path"),
                         fan_in_fan_out=bool(first.get("fan_in_fan_out")), task_type=first.get("task_type"))
    with atomic_output_dir(out, force) as tmp:
        save_adapter(tmp, config, factors, embeddings)
    return ranks


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def non_finite_error(name: str, mods: list[LoraModule], adapters: list[LoraAdapter]) -> NonFiniteError | None:
    """The error naming the adapter whose factors for module `name` hold NaN/inf, or None when none does."""
    files = {id(m): a.file for a in adapters for m in a.modules.values()}
    for m in mods:
        for part, t in (("lora_A", m.A), ("lora_B", m.B)):
            x = t.load()
            n = int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0
            if n:
                return NonFiniteError(f"module {name}: {files.get(id(m), 'an adapter')} holds {n} non-finite "
                                      f"value(s) (NaN/inf) in {part}; repair or leave out that adapter")
    return None


def _union_targets(targets: list, names: list[str]):
    """peft's union of target_modules (a set union of lists, or an alternation of regexes)."""
    if all(isinstance(t, list) for t in targets):
        return sorted({x for t in targets for x in t})
    if all(isinstance(t, str) for t in targets):
        return "|".join(f"({t})" for t in targets)
    return sorted(names)
