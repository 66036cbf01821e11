"""Projector modules: LLaVA's family (`linear`, `mlp{N}x_gelu`, `identity`) with LLaVA's parameter names.

LLaVA's builder makes `mlp{N}x_gelu` as Linear(vision, text), then (GELU, Linear(text, text)) N-1 times;
`linear` is the same with N = 1. Here the layers are `linear_1 ... linear_N` with one shared `act`, so a
`mlp2x_gelu` module has exactly the state dict of transformers' `LlavaMultiModalProjector`.

`LlavaMultiModalProjector` always holds two linears and an activation, with `linear_1` already mapping to
the text hidden size. `to_llava` writes every projector that fits it exactly:
  mlp2x_<act>                    as it is (a smaller hidden size is padded with zero units when act(0) = 0)
  linear                         linear_1 = the map, act "linear", linear_2 = identity
  identity                       both linears identity, act "linear" (vision and text sizes must be equal)
Deeper MLPs (mlp3x_gelu ...) have no LLaVA form and are refused there.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..errors import RecipeError, ShapeMismatchError, UnsupportedArchitectureError
from ..io.check import check_tensors

TYPE_PATTERN = re.compile(r"^mlp(\d+)x_(\w+)$")


def parse_type(projector_type: str) -> tuple[int, str]:
    """(number of linear layers, activation name between them) of a projector type name."""
    if projector_type == "identity":
        return 0, "linear"
    if projector_type == "linear":
        return 1, "linear"
    m = TYPE_PATTERN.match(projector_type)
    if m and int(m.group(1)) >= 1 and m.group(2) in ACT2FN:
        depth = int(m.group(1))
        return depth, (m.group(2) if depth > 1 else "linear")
    raise RecipeError(f"projector type {projector_type!r} is unknown; use linear, identity or mlp<N>x_gelu "
                      "(e.g. mlp2x_gelu, LLaVA-1.5's)")


def type_name(depth: int, act: str) -> str:
    if depth == 0:
        return "identity"
    if depth == 1:
        return "linear"
    return f"mlp{depth}x_{act}"


class Projector(nn.Module):
    """`linear_1`, then (`act`, `linear_i`) for i = 2..depth; depth 0 is the identity.

    `hidden_features` is the width between layers (the output size in LLaVA's builder; it differs only
    after a transfer to an LLM of another size).
    """

    def __init__(self, projector_type: str, in_features: int, out_features: int, *, bias: bool = True,
                 hidden_features: int | None = None):
        super().__init__()
        self.depth, self.act_name = parse_type(projector_type)
        hidden = out_features if hidden_features is None else hidden_features
        if self.depth == 0 and in_features != out_features:
            raise ShapeMismatchError(f"an identity projector needs equal sizes: vision features have {in_features},"
                                     f" the language model's embeddings {out_features}")
        self.in_features, self.out_features, self.bias = in_features, out_features, bias
        self.hidden_features = hidden if self.depth > 1 else out_features
        sizes = [in_features] + [hidden] * (self.depth - 1) + [out_features]
        for i in range(self.depth):
            setattr(self, f"linear_{i + 1}", nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        self.act = ACT2FN[self.act_name] if self.depth > 1 else nn.Identity()

    @property
    def projector_type(self) -> str:
        return type_name(self.depth, self.act_name)

    def linears(self) -> list[nn.Linear]:
        return [getattr(self, f"linear_{i + 1}") for i in range(self.depth)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.linears()
        if not layers:
            return x
        x = layers[0](x)
        for layer in layers[1:]:
            x = layer(self.act(x))
        return x

    def extra_repr(self) -> str:
        return f"type={self.projector_type}"


def build(projector_type: str, in_features: int, out_features: int, *, bias: bool = True, seed: int | None = 0) -> Projector:
    """A freshly initialised projector (nn.Linear's default init, reproducible with `seed`)."""
    if seed is None:
        return Projector(projector_type, in_features, out_features, bias=bias)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Projector(projector_type, in_features, out_features, bias=bias)


def from_state_dict(tensors: dict[str, torch.Tensor], projector_type: str | None = None, act: str = "gelu") -> Projector:
    """A projector holding `tensors` (named linear_1.weight, linear_1.bias, ...).

    Without `projector_type` the depth is the number of linears found and `act` the activation between
    them (a LLaVA projector is `mlp2x_<projector_hidden_act>`).
    """
    depth = sum(1 for k in tensors if re.fullmatch(r"linear_\d+\.weight", k))
    if projector_type is None:
        projector_type = type_name(depth, act)
    want_depth, _ = parse_type(projector_type)
    if want_depth != depth:
        raise ShapeMismatchError(f"a {projector_type} projector has {want_depth} linear layers, the weights hold {depth}")
    if depth == 0:
        raise ShapeMismatchError("an identity projector has no weights to load; build it with its size instead")
    first, last = tensors["linear_1.weight"], tensors[f"linear_{depth}.weight"]
    bias = "linear_1.bias" in tensors
    module = Projector(projector_type, first.shape[1], last.shape[0], bias=bias,
                       hidden_features=first.shape[0] if depth > 1 else None)
    own = module.state_dict()
    check_tensors(own, tensors, "projector", expected_from=f"a {projector_type} projector of these sizes")
    module.load_state_dict({k: tensors[k].float() for k in own})
    return module


def compose(projector: Projector, weight: torch.Tensor, bias: torch.Tensor | None) -> Projector:
    """The projector followed by the affine map y -> weight @ y + bias (folded into its last layer)."""
    weight = weight.float()
    out = weight.shape[0]
    has_bias = projector.bias or bias is not None
    if projector.depth == 0:
        new = Projector("linear", projector.in_features, out, bias=has_bias)
        with torch.no_grad():
            new.linear_1.weight.copy_(weight)
            if has_bias:
                new.linear_1.bias.copy_(bias if bias is not None else torch.zeros(out))
        return new
    hidden = projector.hidden_features if projector.depth > 1 else None
    new = Projector(projector.projector_type, projector.in_features, out, bias=has_bias, hidden_features=hidden)
    old_layers, new_layers = projector.linears(), new.linears()
    with torch.no_grad():
        for a, b in zip(old_layers[:-1], new_layers[:-1]):
            b.weight.copy_(a.weight)
            if has_bias:
                b.bias.copy_(a.bias if a.bias is not None else torch.zeros_like(b.bias))
        last_old, last_new = old_layers[-1], new_layers[-1]
        last_new.weight.copy_(weight @ last_old.weight.float())
        if has_bias:
            b_old = last_old.bias.float() if last_old.bias is not None else torch.zeros(last_old.out_features)
            last_new.bias.copy_(weight @ b_old + (bias.float() if bias is not None else 0))
    return new


def to_llava(projector: Projector, text_hidden_size: int) -> tuple[dict[str, torch.Tensor], str, bool]:
    """(LlavaMultiModalProjector tensors, projector_hidden_act, multimodal_projector_bias) computing `projector`."""
    if projector.out_features != text_hidden_size:
        raise ShapeMismatchError(f"the projector outputs {projector.out_features} features, the language model's "
                                 f"embeddings have {text_hidden_size}")
    d, bias = text_hidden_size, projector.bias
    state = {k: v.detach().float().clone() for k, v in projector.state_dict().items()}
    eye = torch.eye(d)

    def zeros(n):
        return torch.zeros(n)

    if projector.depth == 0:
        out = {"linear_1.weight": eye.clone(), "linear_2.weight": eye.clone()}
        if bias:
            out.update({"linear_1.bias": zeros(d), "linear_2.bias": zeros(d)})
        return out, "linear", bias
    if projector.depth == 1:
        out = {"linear_1.weight": state["linear_1.weight"], "linear_2.weight": eye}
        if bias:
            out.update({"linear_1.bias": state["linear_1.bias"], "linear_2.bias": zeros(d)})
        return out, "linear", bias
    if projector.depth == 2:
        hidden = projector.hidden_features
        if hidden == d:
            return state, projector.act_name, bias
        zero_out = float(ACT2FN[projector.act_name](torch.zeros(1)).abs().max())
        if hidden > d or zero_out != 0.0:
            why = (f"its hidden size {hidden} is larger than the language model's {d}" if hidden > d else
                   f"its activation {projector.act_name}(0) is not 0, so it cannot be padded to {d} units")
            raise UnsupportedArchitectureError(f"a {projector.projector_type} projector does not fit LLaVA's "
                                               f"projector: {why}")
        # pad the hidden layer with units whose input and output weights are zero: act(0) = 0 adds nothing
        w1 = torch.zeros(d, projector.in_features)
        w1[:hidden] = state["linear_1.weight"]
        w2 = torch.zeros(d, d)
        w2[:, :hidden] = state["linear_2.weight"]
        out = {"linear_1.weight": w1, "linear_2.weight": w2}
        if bias:
            b1 = zeros(d)
            b1[:hidden] = state["linear_1.bias"]
            out.update({"linear_1.bias": b1, "linear_2.bias": state["linear_2.bias"]})
        return out, projector.act_name, bias
    raise UnsupportedArchitectureError(f"a {projector.projector_type} projector has {projector.depth} linear layers; "
                                       "LLaVA's projector holds at most 2 (use mlp2x_gelu or linear)")
