"""The MoE outputs mergekit-moe 0.1.5 writes, as rows of data, and its rule for choosing one.

A row says which dense inputs it takes, how many shared experts it holds, the config class and the fields set on
it, and how the experts' MLPs are laid out: `fused` (transformers 5's `experts.gate_up_proj[e]` = [gate; up]
and `experts.down_proj[e]`, as mergekit writes Mixtral and Qwen3-MoE) or one tensor per expert and projection
(`experts.{e}.gate_proj.weight`, as it writes Qwen2-MoE). Rows are tried in mergekit's order; Mixtral wins
when it fits, else the first that fits.

A vision-language row (`text_config` set) turns a VLM's language model into its MoE counterpart in transformers:
the MoE fields go into its text config, its tensors live under the VLM's language prefix, and everything outside the
language model's MLPs comes from the base (mergekit-moe has no such output). Which dense VLM pairs with which MoE
one is asked of the installed transformers (`moe_pairs`: an image-text-to-text type `T` and a `T_moe` one whose text
config counts experts); a row here says only what the MoE text config calls its fields and where its router and
shared expert live. Whether the MoE class holds every tensor of the dense one outside the MLPs, and how it lays out
its fused experts, is read from the classes built on the meta device when a model is written (build.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

from ..adapters.families import family_of
from ..adapters.hf_common import _kept_on_disk, auto_class_names
from ..errors import UnsupportedArchitectureError
from .config import MoEConfig


@dataclass(frozen=True)
class TensorNames:
    """Where a layer's tensors are ({layer}, {expert}, {proj} filled in): the dense inputs' MLPs, and the output's
    routers and experts, one tensor per expert and projection or fused (`gate_up` = [gate; up] per expert)."""

    source: str = "model.layers.{layer}.mlp.{proj}.weight"
    router: str = "model.layers.{layer}.mlp.gate.weight"
    shared_router: str | None = "model.layers.{layer}.mlp.shared_expert_gate.weight"  # None: a shared expert ungated
    expert: str = "model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"
    shared_expert: str = "model.layers.{layer}.mlp.shared_expert.{proj}.weight"
    gate_up: str = "model.layers.{layer}.mlp.experts.gate_up_proj"
    down: str = "model.layers.{layer}.mlp.experts.down_proj"


LANGUAGE_PREFIX = "model.language_model."  # where a transformers 5 VLM holds its language model's decoder


def in_vlm(names: TensorNames) -> TensorNames:
    """The output's MoE tensors inside a VLM whose language model is `model.language_model.`; the dense inputs'
    MLPs are read from their language component, under the text-only model's names."""
    return TensorNames(**{k: v.replace("model.", LANGUAGE_PREFIX, 1) if v and k != "source" else v
                          for k, v in vars(names).items()})


VLM_NAMES = in_vlm(TensorNames())


@dataclass(frozen=True)
class OutputArch:
    name: str                      # as mergekit-moe names it (`architecture:` matches a prefix of it)
    model_type: str                # transformers model type of the output
    class_name: str                # its *ForCausalLM
    inputs: tuple[str, ...]        # model types of the dense inputs it takes
    shared_experts: tuple[int, ...]  # how many shared experts it holds
    expert_count: str = "num_experts"   # the config field of the number of routed experts
    fields: dict = field(default_factory=dict)  # config fields set to constants
    intermediate_fields: tuple[str, ...] = ()   # config fields set to the base's intermediate_size
    via: str | None = None         # inputs of another type pass through this config class first
    fused: bool = True             # the experts' tensors as `names.gate_up` / `names.down`, else `names.expert`
    names: TensorNames = TensorNames()
    shared_prompts: bool = False   # its shared expert needs prompts unless the gates are random
    zero_attention_bias: bool = False  # q/k/v biases the base lacks are written as zeros
    writes: bool = True            # False: mergekit-moe writes it, mmmerge does not (say so)
    # the order mergekit reads (and draws noise for) one layer's expert MLPs: per expert these projections
    # (fused), or per projection every expert then the shared one (per-expert tensors)
    read_order: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    text_config: str | None = None  # a VLM output: the config key its MoE fields go into (the rest is the base's)


ROWS = (
    OutputArch("Mixtral", "mixtral", "MixtralForCausalLM", ("llama", "mistral"), (0,), expert_count="num_local_experts",
               fields={"sliding_window": None}, via="mistral",
               read_order=("gate_proj", "down_proj", "up_proj")),
    OutputArch("DeepSeek MoE", "deepseek", "DeepseekForCausalLM", ("llama", "mistral"), (0, 1), writes=False),
    OutputArch("Qwen MoE", "qwen2_moe", "Qwen2MoeForCausalLM", ("llama", "mistral", "qwen2"), (1,),
               fields={"decoder_sparse_step": 1, "norm_topk_prob": True, "sliding_window": None,
                       "use_sliding_window": False},
               intermediate_fields=("shared_expert_intermediate_size", "moe_intermediate_size"), fused=False,
               shared_prompts=True, zero_attention_bias=True,
               read_order=("down_proj", "gate_proj", "up_proj")),
    OutputArch("Qwen3 MoE", "qwen3_moe", "Qwen3MoeForCausalLM", ("qwen3",), (0,),
               fields={"decoder_sparse_step": 1, "norm_topk_prob": True}, intermediate_fields=("moe_intermediate_size",)),
)

# The MoE VLMs' text configs and MoE blocks, by the MoE model type; which dense VLM each takes is transformers'
# pairing (`moe_pairs`), filled in by `rows()`. Every layer is made sparse (mergekit-moe's rule).
VLM_ROWS = (
    OutputArch("Qwen3-VL MoE", "qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration", (), (0,),
               fields={"decoder_sparse_step": 1, "mlp_only_layers": []}, intermediate_fields=("moe_intermediate_size",),
               names=VLM_NAMES, text_config="text_config"),
    # a shared expert with a sigmoid gate in every layer, as Qwen2-MoE's
    OutputArch("Qwen3.5 MoE", "qwen3_5_moe", "Qwen3_5MoeForConditionalGeneration", (), (1,),
               intermediate_fields=("moe_intermediate_size", "shared_expert_intermediate_size"), names=VLM_NAMES,
               shared_prompts=True, text_config="text_config"),
    # a shared expert without a gate, added to the routed experts' output; sigmoid router scores in one group
    OutputArch("GLM-4V MoE", "glm4v_moe", "Glm4vMoeForConditionalGeneration", (), (1,), expert_count="n_routed_experts",
               fields={"first_k_dense_replace": 0, "n_shared_experts": 1, "n_group": 1, "topk_group": 1,
                       "norm_topk_prob": True, "routed_scaling_factor": 1.0},
               intermediate_fields=("moe_intermediate_size",),
               names=in_vlm(TensorNames(shared_router=None,
                                        shared_expert="model.layers.{layer}.mlp.shared_experts.{proj}.weight")),
               text_config="text_config"),
)
EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts")  # what MoE text configs call the count


@functools.lru_cache(maxsize=1)
def moe_pairs() -> dict[str, str]:
    """Dense image-text-to-text model type -> its MoE counterpart, as the installed transformers ships them: a type
    `T` and a type `T_moe` whose text config counts experts (kept on disk per transformers version)."""

    def compute() -> dict:
        from transformers import CONFIG_MAPPING

        types = auto_class_names("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES")
        pairs = {}
        for dense in types:
            sparse = f"{dense}_moe"
            text = getattr(CONFIG_MAPPING[sparse], "sub_configs", {}).get("text_config") if sparse in types else None
            if text is not None and any(k in text().to_dict() for k in EXPERT_COUNTS):
                pairs[dense] = sparse
        return pairs

    return _kept_on_disk("moe-pairs", "image-text-to-text", compute)


def rows() -> tuple[OutputArch, ...]:
    """Every output: mergekit-moe's text ones, then each MoE VLM transformers pairs with a dense one."""
    by_type = {r.model_type: r for r in VLM_ROWS}
    return ROWS + tuple(replace(by_type[sparse], inputs=(dense,)) for dense, sparse in moe_pairs().items()
                        if sparse in by_type)


def fits(row: OutputArch, config: MoEConfig, model_type: str) -> str | None:
    """Why `row` cannot hold this config (None when it can)."""
    shared = config.shared
    if model_type not in row.inputs:
        return f"takes {'/'.join(row.inputs)} models"
    if len(shared) not in row.shared_experts:
        return f"holds {' or '.join(map(str, row.shared_experts))} shared expert(s)"
    if row.shared_prompts and config.gate_mode != "random" and not shared[0].positive_prompts:
        return "needs prompts for its shared expert (unless gate_mode is random)"
    if not row.writes and shared and (shared[0].positive_prompts or shared[0].negative_prompts):
        return "has no gate for its shared expert"
    return None


def choose(config: MoEConfig, model_type: str, where: str = "config") -> OutputArch:
    """The output mergekit-moe 0.1.5 picks for these inputs: among the rows whose name starts with `architecture`,
    Mixtral if it fits, else the first that fits."""
    every = rows()
    named = [r for r in every if not config.architecture or r.name.lower().startswith(config.architecture.lower())]
    if not named:
        raise UnsupportedArchitectureError(f"{where}: architecture: no output is named {config.architecture!r} "
                                           f"(known: {', '.join(r.name for r in every if r.writes)})")
    reasons = {r.name: fits(r, config, model_type) for r in named}
    fitting = [r for r in named if reasons[r.name] is None]
    if not fitting and model_type in moe_pairs() and not any(model_type in r.inputs for r in every):
        raise UnsupportedArchitectureError(f"{where}: transformers pairs {model_type} with {moe_pairs()[model_type]}, "
                                           "an MoE text config mmmerge has no row for (mixture/architectures.py)")
    vlm = (family_of({"model_type": model_type})
           or model_type in auto_class_names("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"))
    if not fitting and vlm and not any(model_type in r.inputs for r in every):
        pairs = [f"{r.class_name} from {'/'.join(r.inputs)}" for r in every if r.text_config]
        raise UnsupportedArchitectureError(f"{where}: {model_type} is a vision-language family with no MoE counterpart "
                                           f"in transformers that mmmerge writes (it writes {', '.join(pairs)})")
    if not fitting:
        why = "; ".join(f"{name} {reason}" for name, reason in reasons.items())
        raise UnsupportedArchitectureError(f"{where}: no MoE output holds {len(config.experts)} {model_type} expert(s) "
                                           f"with {len(config.shared)} shared expert(s) here ({why})")
    chosen = next((r for r in fitting if r.name == "Mixtral"), fitting[0])
    if not chosen.writes:
        raise UnsupportedArchitectureError(
            f"{where}: mergekit-moe would write {chosen.name} here, which needs remote code to load and which mmmerge "
            "does not write; for Qwen2-MoE give the shared expert prompts (or use gate_mode: random) and set "
            "architecture: qwen")
    return chosen
