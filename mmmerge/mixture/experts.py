"""The experts' MLP tensors of the output, read only when written: each expert's dense MLP as it is, stacked
(fused rows) or one tensor per expert (Qwen2-MoE), a shared expert one tensor per projection, with mergekit's
`noise_scale` and `residual_scale`.

mergekit adds `randn_like(w) * noise_scale` to a source MLP weight, in its dtype, drawing from torch's global
generator in the order it writes (after the random gates). The tensors here are read in another order, so
the generator's state before each draw is kept when the output is planned (drawing once to move past it), and
each tensor draws its noise from that state when it is read: the same noise, one tensor in memory at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from ..checkpoint import LazyTensor
from .architectures import OutputArch, TensorNames
from .config import Expert

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class Source:
    """One expert: its config entry and its tensors."""

    expert: Expert
    tensors: Mapping[str, LazyTensor]


def mlp_name(layer: int, proj: str) -> str:
    """A dense input's MLP weight."""
    return TensorNames.source.format(layer=layer, proj=proj)


def draw_order(row: OutputArch, layers: int, experts: list[Source], shared: list[Source]):
    """(layer, source, projection) in the order mergekit-moe reads, and so draws noise for, the experts' MLPs."""
    for layer in range(layers):
        if row.fused:
            for source in [*experts, *shared]:
                for proj in row.read_order:
                    yield layer, source, proj
        else:
            for proj in row.read_order:
                for source in [*experts, *shared]:
                    yield layer, source, proj


def noise_states(row: OutputArch, layers: int, experts: list[Source], shared: list[Source],
                 generator: torch.Generator) -> dict[tuple[int, int, str], torch.Tensor]:
    """The generator's state before each noise draw, keyed (layer, id(source), projection); moves `generator` past
    every draw, as mergekit's writing moves its global generator."""
    states = {}
    for layer, source, proj in draw_order(row, layers, experts, shared):
        if source.expert.noise_scale is not None:
            t = source.tensors[mlp_name(layer, proj)]
            states[(layer, id(source), proj)] = generator.get_state()
            torch.randn(t.shape, dtype=t.dtype, generator=generator)
    return states


def expert_weight(source: Source, layer: int, proj: str, states: dict) -> torch.Tensor:
    """A source MLP weight with its noise and residual scale, in its own dtype, as mergekit's noise_and_scale."""
    w = source.tensors[mlp_name(layer, proj)].load()
    state = states.get((layer, id(source), proj))
    if state is not None:
        g = torch.Generator().set_state(state)
        w = w + torch.randn(w.shape, dtype=w.dtype, generator=g) * source.expert.noise_scale
    if proj == "down_proj" and source.expert.residual_scale is not None:
        w = w * source.expert.residual_scale
    return w


def expert_tensors(row: OutputArch, layers: int, experts: list[Source], shared: list[Source], states: dict,
                   dtype: torch.dtype | None) -> dict[str, LazyTensor]:
    """The output's expert MLP tensors, layer by layer, each cast to `dtype` (None: its source's)."""
    out: dict[str, LazyTensor] = {}

    def one(source: Source, layer: int, proj: str) -> LazyTensor:
        t = source.tensors[mlp_name(layer, proj)]
        return LazyTensor(t.shape, dtype or t.dtype, lambda: expert_weight(source, layer, proj, states))

    names = row.names
    for layer in range(layers):
        if row.fused:
            gate, up, down = (experts[0].tensors[mlp_name(layer, p)] for p in PROJECTIONS)

            def gate_up(layer=layer):
                return torch.stack([torch.cat([expert_weight(s, layer, "gate_proj", states),
                                               expert_weight(s, layer, "up_proj", states)]) for s in experts])

            def downs(layer=layer):
                return torch.stack([expert_weight(s, layer, "down_proj", states) for s in experts])

            n = len(experts)
            out[names.gate_up.format(layer=layer)] = LazyTensor((n, gate.shape[0] + up.shape[0], gate.shape[1]),
                                                                dtype or gate.dtype, gate_up)
            out[names.down.format(layer=layer)] = LazyTensor((n, *down.shape), dtype or down.dtype, downs)
        else:
            for e, source in enumerate(experts):
                for proj in PROJECTIONS:
                    out[names.expert.format(layer=layer, expert=e, proj=proj)] = one(source, layer, proj)
        for source in shared:  # one tensor per projection beside fused experts too (Qwen3.5-MoE)
            for proj in PROJECTIONS:
                out[names.shared_expert.format(layer=layer, proj=proj)] = one(source, layer, proj)
    return out
