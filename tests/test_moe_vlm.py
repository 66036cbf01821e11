"""`mmmerge moe` for a vision-language model: dense Qwen3-VL fine-tunes of one base -> Qwen3VLMoeForConditionalGeneration.

Checked against transformers itself: the output loads strictly in its class, each expert computes what its source's
dense MLP computes, everything else equals the base's tensors bit for bit, hidden gates (text and image prompts run
through the whole VLM) route each expert's prompts to it, generate answers on an image as transformers' chat path
does, and the output goes through inspect, eval, a LoRA and merge. Bad configs stop with one line, nothing written.
"""

import json
import os
import shutil

import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

import eval_data
from cli_run import one_line_error, run
from mmmerge import describe, evaluate, generate, merge, moe
from tiny_vlm_processors import build_tiny_vlm

os.environ["HF_HUB_OFFLINE"] = "1"

MOE_CLASS = transformers.Qwen3VLMoeForConditionalGeneration
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230)}


def fine_tune(base, folder, seed):
    """The base with every tensor moved a little (vision, projector and language alike)."""
    shutil.copytree(base, folder)
    tensors = load_file(folder / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    save_file({k: v + torch.randn(v.shape, generator=g) * 0.02 for k, v in tensors.items()},
              folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlmoe")
    base = build_tiny_vlm("qwen3_vl", root / "base")
    experts = [fine_tune(base, root / f"expert{i}", seed=i) for i in (1, 2, 3)]
    images = {}
    for name, rgb in COLORS.items():
        images[name] = root / f"{name}.png"
        Image.new("RGB", (32, 32), rgb).save(images[name])
    return root, base, experts, images


def prompts(images):
    """Each expert's positive prompts: with an image, text only, or both. An expert's prompts end in one word of the
    tiny vocabulary, another expert's in another: layer 0's input is the last token's embedding, which tells them
    apart only so."""
    return [[{"text": "what is the color of this picture", "image": str(images["red"])},
             "a red car on the left of the picture"],
            ["is there a dog", "which animal is it , a cat or a dog"],
            [{"text": "how many people are in the image", "image": str(images["blue"])}]]


def config(vlm, mode="hidden", per_token=1, **kw):
    _, base, experts, images = vlm
    return {"base_model": str(base), "gate_mode": mode, "experts_per_token": per_token,
            "experts": [{"source_model": str(e), "positive_prompts": p} for e, p in zip(experts, prompts(images))], **kw}


@pytest.fixture(scope="module")
def built(vlm):
    root = vlm[0]
    return moe(config(vlm), root / "moe", quiet=True)


def loaded(folder):
    model, info = MOE_CLASS.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def test_output_loads_strictly_and_its_parts_equal_their_sources(vlm, built):
    _, base, experts, _ = vlm
    model = loaded(built)
    out, dense = load_file(built / "model.safetensors"), load_file(base / "model.safetensors")
    language_mlp = [n for n in dense if n.startswith("model.language_model.layers.") and ".mlp." in n]
    assert language_mlp and any(n.startswith("model.visual.deepstack_merger_list.") for n in dense)
    for name in set(dense) - set(language_mlp):  # vision tower, mergers, attention, norms, embeddings, head
        assert out[name].dtype == dense[name].dtype and torch.equal(out[name], dense[name]), name
    layers = model.config.text_config.num_hidden_layers
    moe_names = {f"model.language_model.layers.{i}.mlp.{n}" for i in range(layers)
                 for n in ("experts.gate_up_proj", "experts.down_proj", "gate.weight")}
    assert set(out) == (set(dense) - set(language_mlp)) | moe_names
    # each expert computes its source's dense MLP, as the transformers class runs its experts
    x = torch.randn(5, model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))
    for e, folder in enumerate(experts):
        source = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()
        for layer in range(layers):
            block = model.model.language_model.layers[layer].mlp.experts
            with torch.no_grad():
                got = block(x, torch.full((5, 1), e), torch.ones(5, 1))
                want = source.model.language_model.layers[layer].mlp(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # config: the base's, with the MoE fields the installed config class has, in its text config
    ours, theirs = (json.loads((p / "config.json").read_text()) for p in (built, base))
    assert ours["model_type"] == "qwen3_vl_moe" and ours["architectures"] == ["Qwen3VLMoeForConditionalGeneration"]
    text = transformers.Qwen3VLMoeTextConfig(**ours["text_config"])
    assert (text.num_experts, text.num_experts_per_tok) == (3, 1)
    assert text.moe_intermediate_size == theirs["text_config"]["intermediate_size"]
    assert text.decoder_sparse_step == 1 and not text.mlp_only_layers
    for key, value in theirs["text_config"].items():
        if key not in ("model_type", "dtype"):
            assert ours["text_config"][key] == value, key
    for key, value in theirs["vision_config"].items():
        if key not in ("model_type", "dtype"):
            assert ours["vision_config"][key] == value, key
    for side in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        assert (built / side).read_bytes() == (base / side).read_bytes(), side


def router_choices(model, inputs) -> list[int]:
    """The expert each layer's router picks for the last token (hooked on the routers)."""
    picks = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, o: picks.append(int(o[0][-1].argmax())))
             for layer in model.model.language_model.layers]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return picks


def encoded(processor, prompt):
    """A prompt as the gates encode it: a text prompt as mergekit-moe does (bos + text), a prompt with an image
    through the processor's own chat template (the user turn, cut after the prompt's text)."""
    tok = processor.tokenizer
    if isinstance(prompt, str):
        return tok((tok.bos_token or "") + prompt, return_tensors="pt", add_special_tokens=False)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt["text"]}]}]
    text = processor.apply_chat_template(messages)
    text = text[:text.index(prompt["text"]) + len(prompt["text"])]
    return processor(images=[Image.open(prompt["image"]).convert("RGB")], text=[text], return_tensors="pt")


def test_an_image_prompts_gate_is_the_base_vlms_hidden_state_on_it(vlm, built):
    """Expert 2's one prompt has an image: its router row at each layer is the base's (bfloat16) hidden state of the
    prompt's last token at that layer's input, normalised, as transformers computes it with the image."""
    base = transformers.AutoModelForImageTextToText.from_pretrained(vlm[1], dtype=torch.bfloat16).eval()
    prompt = prompts(vlm[3])[2][0]
    with torch.no_grad():
        states = base(**encoded(transformers.AutoProcessor.from_pretrained(vlm[1]), prompt),
                      output_hidden_states=True).hidden_states
    out = load_file(built / "model.safetensors")
    for layer in range(len(states) - 1):
        h = states[layer][0, -1]
        want = (h / h.norm()).float()
        got = out[f"model.language_model.layers.{layer}.mlp.gate.weight"][2]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-2)
    # not the text alone: the image changes the rows after layer 0
    with torch.no_grad():
        text_only = base(**encoded(transformers.AutoProcessor.from_pretrained(vlm[1]), prompt["text"]),
                         output_hidden_states=True).hidden_states[1][0, -1]
    assert (text_only / text_only.norm() - states[1][0, -1] / states[1][0, -1].norm()).abs().max() > 0.1


def test_top1_hidden_gates_route_each_experts_prompts_to_it(vlm, built):
    """At each prompt's last token, each prompt encoded as `encoded` says."""
    model = loaded(built)
    processor = transformers.AutoProcessor.from_pretrained(built)
    for expert, expert_prompts in enumerate(prompts(vlm[3])):
        for prompt in expert_prompts:
            assert router_choices(model, encoded(processor, prompt)) == [expert] * model.config.text_config.num_hidden_layers, prompt


def test_generate_answers_on_an_image_as_transformers_does(vlm, built):
    image, question = vlm[3]["green"], "what color is this picture ?"
    ours = generate(built, image, question, max_new_tokens=6)
    processor = transformers.AutoProcessor.from_pretrained(built)
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(image).convert("RGB")},
                                             {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        ids = loaded(built).generate(**inputs, do_sample=False, max_new_tokens=6)
    assert ours and ours == processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:],
                                                       skip_special_tokens=True).strip()


def test_inspect_shows_the_experts_of_each_layer(vlm, built, tmp_path):
    shown = describe(built)
    assert "language: Qwen3MoeForCausalLM" in shown and "num_local_experts=3, num_experts_per_tok=1" in shown
    assert "experts: 3 in layers 0-1" in shown
    assert "experts:" not in describe(vlm[1])  # the dense base has none
    # a layer left dense (mlp_only_layers) is named as such, from the tensors
    cfg = json.loads((built / "config.json").read_text())
    cfg["text_config"]["mlp_only_layers"] = [1]
    torch.manual_seed(0)
    MOE_CLASS(transformers.Qwen3VLMoeConfig(**cfg)).save_pretrained(tmp_path / "partly")
    assert "experts: 3 in layer 0 (dense MLP in layer 1)" in describe(tmp_path / "partly")


def test_eval_runs_on_it(vlm, built, tmp_path):
    files = eval_data.vqav2(tmp_path / "vqav2", n=4)
    metrics = evaluate(built, "vqav2", **files, out=tmp_path / "eval", batch_size=2, max_new_tokens=3, progress=False)
    samples = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and "overall" in metrics
    first = samples[0]
    assert first["raw"] == generate(built, first["image"], first["question"], task="vqav2", max_new_tokens=3)


def test_a_lora_applies_as_peft_merges_it(vlm, built, tmp_path):
    from mmmerge.adapters import open_checkpoint
    from mmmerge.lora import open_with_lora
    from test_lora_apply import compare, llava_state, make_adapter, peft_merged

    lora = make_adapter(MOE_CLASS, built, tmp_path / "lora", r=4, lora_alpha=8,
                        target_modules=r".*language_model.*\.(q_proj|v_proj)|.*visual.*linear_fc2")
    ours, plain = llava_state(open_with_lora(built, lora)), llava_state(open_checkpoint(built))
    changed = [n for n in ours if (ours[n] - plain[n]).abs().max() > 1e-3]
    assert "model.language_model.layers.1.self_attn.v_proj.weight" in changed
    assert any(n.startswith("model.visual.") for n in changed)
    compare(ours, peft_merged(MOE_CLASS, built, lora), plain, expect_changed=changed)


def test_two_moe_outputs_merge_tensor_by_tensor(vlm, tmp_path):
    from mergekit_oracle import assert_linear_merge_is_mergekits

    for seed in (1, 2):
        moe(config(vlm, mode="random"), tmp_path / f"moe{seed}", random_seed=seed, quiet=True)
    a, b = assert_linear_merge_is_mergekits(tmp_path / "moe1", tmp_path / "moe2", tmp_path / "merged")
    router = "model.language_model.layers.0.mlp.gate.weight"
    assert not torch.equal(a[router], b[router])
    loaded(tmp_path / "merged")


def refused(tmp_path, cfg, *needles):
    (tmp_path / "moe.yml").write_text(json.dumps(cfg))
    one_line_error(run("moe", tmp_path / "moe.yml", "--out", tmp_path / "out"), *needles)
    assert not (tmp_path / "out").exists()


def test_image_prompts_need_hidden_gates_a_vlm_base_and_their_files(vlm, tmp_path):
    cfg = config(vlm, mode="cheap_embed")
    refused(tmp_path, cfg, "experts[0]", "image", "gate_mode hidden", "cheap_embed")
    cfg = config(vlm)
    cfg["experts"][2]["positive_prompts"][0]["image"] = str(tmp_path / "nowhere.png")
    refused(tmp_path, cfg, "nowhere.png", "no such image file")
    text_base = tmp_path / "text"
    transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, vocab_size=160)).save_pretrained(text_base)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(vlm[1] / f, text_base / f)
    cfg = config(vlm)
    cfg["base_model"] = str(text_base)
    for e in cfg["experts"]:
        e["source_model"] = str(text_base)
    cfg["i_understand_this_is_not_useful_without_training"] = True
    refused(tmp_path, cfg, "base_model", "text model", "image")


def narrower(expert, folder, width=48):
    """The expert with a narrower language MLP (config and tensors agree: it reads, but is not the base's shape)."""
    shutil.copytree(expert, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = width
    (folder / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(folder / "model.safetensors")
    for name, t in tensors.items():
        if name.startswith("model.language_model.") and name.endswith(("gate_proj.weight", "up_proj.weight")):
            tensors[name] = t[:width].contiguous()
        elif name.startswith("model.language_model.") and name.endswith("down_proj.weight"):
            tensors[name] = t[:, :width].contiguous()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_experts_of_another_architecture_shape_or_family_are_refused(vlm, tmp_path):
    cfg = config(vlm)
    cfg["experts"][0]["source_model"] = str(narrower(vlm[2][0], tmp_path / "narrow"))
    refused(tmp_path, cfg, "experts[0]", "mlp.gate_proj", "shape")
    cfg = config(vlm)
    cfg["experts"][1].pop("positive_prompts")
    refused(tmp_path, cfg, "experts[1].positive_prompts", "gate_mode hidden")
    refused(tmp_path, config(vlm, architecture="mixtral"), "no MoE output holds", "qwen3_vl", "Mixtral takes llama")
    cfg = config(vlm)
    text_expert = tmp_path / "qwen3"
    transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, vocab_size=160)).save_pretrained(text_expert)
    cfg["experts"][1]["source_model"] = str(text_expert)
    refused(tmp_path, cfg, "experts[1]", "qwen3", "qwen3_vl", "base's architecture")
    llava = [build_tiny_vlm("llava", tmp_path / f"llava{i}", seed=i) for i in range(3)]
    cfg = {"base_model": str(llava[0]), "gate_mode": "random",
           "experts": [{"source_model": str(p)} for p in llava[1:]]}
    refused(tmp_path, cfg, "llava", "vision-language family with no MoE counterpart", "Qwen3VLMoeForConditionalGeneration")


def test_a_layout_the_installed_class_does_not_hold_is_refused_before_reading(vlm, tmp_path, monkeypatch):
    """Were transformers to hold the fused experts transposed (as Qwen3-VL-MoE hub checkpoints store them), the output
    is refused in one line naming the tensor, before any tensor is read and with nothing written."""
    from mmmerge.errors import ShapeMismatchError
    from mmmerge.mixture import build

    real = build.class_shapes

    def transposed(row, out_config):
        return {n: (s[0], s[2], s[1]) if n.endswith("experts.gate_up_proj") else s
                for n, s in real(row, out_config).items()}

    def no_reading(*args, **kwargs):
        raise AssertionError("the gates were computed (the base's tensors read) before the check")

    monkeypatch.setattr(build, "class_shapes", transposed)
    monkeypatch.setattr(build, "prompt_gates", no_reading)
    with pytest.raises(ShapeMismatchError, match=r"model\.language_model\.layers\.0\.mlp\.experts\.gate_up_proj"):
        moe(config(vlm), tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_image_paths_are_relative_to_the_config_and_inputs_of_the_run(vlm, built, tmp_path):
    """A config file's relative image paths are read from its folder (the same gates as absolute ones); --out may not
    replace a folder holding a prompt's image, even with --force."""
    cfg = config(vlm)
    (tmp_path / "images").mkdir()
    for expert in cfg["experts"]:
        for prompt in expert["positive_prompts"]:
            if isinstance(prompt, dict):
                prompt["image"] = str(shutil.copy(prompt["image"], tmp_path / "images")).replace(f"{tmp_path}/", "")
    assert cfg["experts"][0]["positive_prompts"][0]["image"] == "images/red.png"
    (tmp_path / "moe.yml").write_text(json.dumps(cfg))
    moe(tmp_path / "moe.yml", tmp_path / "out", quiet=True)
    ours, absolute = (load_file(p / "model.safetensors") for p in (tmp_path / "out", built))
    for layer in range(2):
        name = f"model.language_model.layers.{layer}.mlp.gate.weight"
        assert torch.equal(ours[name], absolute[name])
    shutil.copy(built / ".mmmerge-output", tmp_path / "images")  # even a folder marked as an mmmerge output
    r = run("moe", tmp_path / "moe.yml", "--out", tmp_path / "images", "--force")
    one_line_error(r, "images", "red.png", "which this run reads")
    assert (tmp_path / "images" / "red.png").is_file()


def test_search_runs_on_moe_outputs_and_its_best_candidate_is_what_merge_writes(vlm, tmp_path):
    """A search over the linear weights of two MoE outputs: the candidate held in memory for the best recipe equals
    `mmmerge merge best_recipe.yml` as transformers loads it, and that equals the formula on the two inputs."""
    import yaml

    from mmmerge.searching import search
    from mmmerge.searching.candidate import Candidates

    for seed in (1, 2):
        moe(config(vlm, mode="random"), tmp_path / f"moe{seed}", random_seed=seed, quiet=True)
    data = {k: str(v) for k, v in eval_data.vqav2(tmp_path / "vqav2", n=2).items()}
    spec = {"merge_method": "linear", "dtype": "float32",
            "models": [{"model": str(tmp_path / f"moe{s}"), "parameters": {"weight": {"search": [0.1, 1.0]}}}
                       for s in (1, 2)],
            "search": {"trials": 2, "max_new_tokens": 2, "tasks": [{"task": "vqav2", **data}]}}
    (tmp_path / "spec.yml").write_text(yaml.safe_dump(spec))
    result = search(tmp_path / "spec.yml", tmp_path / "out", quiet=True)
    assert result.trials == 2
    best = tmp_path / "out" / "best_recipe.yml"
    merge(best, tmp_path / "merged", quiet=True)
    candidates = Candidates(None)
    candidates.load(yaml.safe_load(best.read_text()))
    in_memory, written = candidates.model.state_dict(), loaded(tmp_path / "merged").state_dict()
    assert set(in_memory) == set(written)
    assert all(torch.equal(written[k], in_memory[k]) for k in written)
    a, b = (loaded(tmp_path / f"moe{s}").state_dict() for s in (1, 2))
    w = [m["parameters"]["weight"] for m in yaml.safe_load(best.read_text())["models"]]
    experts = "model.language_model.layers.0.mlp.experts.gate_up_proj"
    torch.testing.assert_close(written[experts], (w[0] * a[experts] + w[1] * b[experts]) / (w[0] + w[1]))
