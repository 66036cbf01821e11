"""Inputs whose vocabularies differ only by appended rows (a VLM's image tokens beside its text-only LLM), and
tensors only some inputs carry: made mergeable, with what was done said in the plan's notes."""

from __future__ import annotations

import dataclasses

from ..checkpoint import Component, LazyTensor


def vocab_rows(component: Component) -> int | None:
    v = component.config.get("vocab_size")
    return v if isinstance(v, int) else None


def align_vocabularies(comps: dict[str, Component], ref_key: str, paths: dict[str, str], multimodal: dict[str, bool],
                       where: str, notes: list[str]) -> tuple[dict[str, Component], dict[str, LazyTensor], int]:
    """Inputs whose vocabularies differ only by rows appended at the end (a VLM's `<image>` and padding rows
    beside its text-only LLM): every input is cut to the shared rows, which are merged; the extra rows come
    unmerged from the reference (base) model or, when it lacks them, from the first input that has them.

    Returns the cut components, the extra rows per tensor name, and the output's row count. Only tensors
    whose first dimension is the vocabulary size are cut, and only when every larger input is a multimodal
    checkpoint (whose extra rows are the tokens it added); any other difference is left to the layout check,
    which refuses it.
    """
    rows = {r: vocab_rows(c) for r, c in comps.items()}
    if None in rows.values() or len(set(rows.values())) != 2:
        return comps, {}, rows[ref_key] or 0
    shared, most = min(rows.values()), max(rows.values())
    if not all(multimodal[r] for r in comps if rows[r] == most):
        return comps, {}, rows[ref_key]
    donor = ref_key if rows[ref_key] == most else next(r for r in comps if rows[r] == most)
    ref = comps[ref_key]
    vocab_names = [n for n, t in ref.tensors.items() if t.shape and t.shape[0] == rows[ref_key]
                   and all(n in c.tensors and tuple(c.tensors[n].shape) == (rows[r], *t.shape[1:])
                           for r, c in comps.items())]
    if not vocab_names:
        return comps, {}, rows[ref_key]
    cut = {}
    for r, c in comps.items():
        tensors = dict(c.tensors)
        for n in vocab_names:
            t = tensors[n]
            if t.shape[0] > shared:
                tensors[n] = t.derive(lambda x: x[:shared], (shared, *t.shape[1:]))
        cut[r] = dataclasses.replace(c, config={**c.config, "vocab_size": shared}, tensors=tensors)
    extra = {}
    for n in vocab_names:
        t = comps[donor].tensors[n]
        extra[n] = t.derive(lambda x: x[shared:], (most - shared, *t.shape[1:]))
    notes.append(f"{where}language: vocabulary rows {shared}..{most - 1} of {', '.join(vocab_names)} are not in every "
                 f"input; the first {shared} rows are merged, the rest copied from {paths[donor]}")
    return cut, extra, most


def drop_partial_extras(comps: dict[str, Component], paths: dict[str, str], where: str, cname: str,
                        notes: list[str]) -> dict[str, Component]:
    """Extras (tensors the target class does not hold, e.g. open_clip's projection head) that only some inputs
    carry cannot be merged and would not be written: leave them out, and say so."""
    partial = sorted({n for c in comps.values() for n in c.extra if n in c.tensors
                      and not all(n in o.tensors for o in comps.values())})
    if not partial:
        return comps
    holders = sorted({paths[r] for r, c in comps.items() if any(n in c.tensors for n in partial)})
    notes.append(f"{where}{cname}: {', '.join(partial)} (not held by the output architecture) is only in "
                 f"{', '.join(holders)}; not merged")
    return {r: dataclasses.replace(c, tensors={n: t for n, t in c.tensors.items() if n not in partial},
                                   extra=tuple(n for n in c.extra if n not in partial))
            for r, c in comps.items()}
