"""regmean and fisher: their formulas re-derived in numpy on small layers (RegMean as the least-squares problem it
solves, independent of the normal equations the implementation uses), and end to end on a tiny Llama: statistics
collected by forward hooks and backward passes (mmmerge.calibration), then a merge through mmmerge.merge."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmmerge.calibration import collect_statistics
from mmmerge.engine import merge
from mmmerge.errors import RecipeError
from mmmerge.methods import REGISTRY, merge_tensor
from tiny_world import make_lm

TOL = 1e-5


# ---------------------------------------------------------------- numpy re-derivations (float64)


def np_regmean(weights, inputs, alpha):
    """argmin_W Σᵢ ||X̃ᵢ Wᵀ − X̃ᵢ Wᵢᵀ||² by least squares, X̃ᵢ = [√α Xᵢ; √(1−α) diag(XᵢᵀXᵢ)^½] (so X̃ᵢᵀX̃ᵢ is the
    paper's α Gᵢ + (1−α) diag(Gᵢ)); weights are torch's [out, in]."""
    rows, targets = [], []
    for w, x in zip(weights, inputs):
        x_tilde = np.vstack([np.sqrt(alpha) * x, np.sqrt(1 - alpha) * np.diag(np.sqrt(np.sum(x * x, axis=0)))])
        rows.append(x_tilde)
        targets.append(x_tilde @ w.T)
    solution, *_ = np.linalg.lstsq(np.vstack(rows), np.vstack(targets), rcond=None)
    return solution.T


def np_fisher(thetas, fishers, lambdas, eps):
    num = sum(lam * (f + eps) * t for t, f, lam in zip(thetas, fishers, lambdas))
    return num / sum(lam * (f + eps) for f, lam in zip(fishers, lambdas))


def sym_sqrt(g):
    """G^½ (symmetric, eigenvalues clipped at 0): an X with XᵀX = G for a Gram matrix of low rank."""
    w, v = np.linalg.eigh(g)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def stats_file(path, **entries):
    save_file({k: torch.as_tensor(v).float().contiguous() for k, v in entries.items()}, str(path))
    return str(path)


# ---------------------------------------------------------------- formulas on small layers


@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.5])
def test_regmean_matches_the_least_squares_rederivation(tmp_path, alpha):
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(5, 7)) for _ in range(3)]
    inputs = [rng.normal(size=(20, 7)) * rng.uniform(0.2, 3, size=7) for _ in range(3)]
    files = [stats_file(tmp_path / f"{i}.safetensors", **{"gram:l.weight": x.T @ x}) for i, x in enumerate(inputs)]
    got = merge_tensor("regmean", [torch.tensor(w) for w in weights], None,
                       [{"statistics": f} for f in files], {"alpha": alpha}, name="l.weight")
    np.testing.assert_allclose(got.numpy(), np_regmean(weights, inputs, alpha), atol=1e-4, rtol=1e-4)
    # a tensor the statistics do not cover (a bias, a norm) is averaged; no statistics at all: averaged too
    bias = [torch.tensor(rng.normal(size=5)) for _ in range(3)]
    torch.testing.assert_close(merge_tensor("regmean", bias, None, [{"statistics": f} for f in files], name="l.bias"),
                               sum(bias) / 3)
    torch.testing.assert_close(merge_tensor("regmean", [torch.tensor(w) for w in weights]),
                               torch.tensor(sum(weights) / 3))


def test_fisher_matches_the_elementwise_formula(tmp_path):
    rng = np.random.default_rng(1)
    thetas = [rng.normal(size=(4, 6)) for _ in range(3)]
    fishers = [rng.uniform(0, 2, size=(4, 6)) ** 3 for _ in range(3)]
    lambdas = [1.0, 0.5, 2.0]
    files = [stats_file(tmp_path / f"{i}.safetensors", **{"fisher:w": f}) for i, f in enumerate(fishers)]
    got = merge_tensor("fisher", [torch.tensor(t) for t in thetas], None,
                       [{"statistics": f, "weight": lam} for f, lam in zip(files, lambdas)], {"epsilon": 1e-3}, name="w")
    np.testing.assert_allclose(got.numpy(), np_fisher(thetas, fishers, lambdas, 1e-3), atol=TOL, rtol=TOL)


def test_statistics_errors_are_one_line_recipe_errors(tmp_path):
    w = [torch.ones(2, 3), torch.zeros(2, 3)]
    half = stats_file(tmp_path / "a.safetensors", **{"gram:w": torch.eye(3)})
    none = stats_file(tmp_path / "b.safetensors", **{"gram:other": torch.eye(3)})
    cases = [
        ([{"statistics": half}, {"statistics": none}], "w", "model\\(s\\) \\[1\\] have no gram entry"),
        ([{"statistics": str(tmp_path / "missing")}] * 2, "w", "no such file"),
        ([{"statistics": half}] * 2, None, "need the tensor's name"),
    ]
    for params, name, message in cases:
        with pytest.raises(RecipeError, match=message) as err:
            merge_tensor("regmean", w, None, params, name=name)
        assert "\n" not in str(err.value)
    with pytest.raises(RecipeError, match="`statistics` must be a path"):
        merge_tensor("fisher", w, None, [{"statistics": 3}] * 2, name="w")
    assert REGISTRY["regmean"].global_params["alpha"].default == 0.9


# ---------------------------------------------------------------- end to end on a tiny Llama


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataaware")
    calib = root / "calib.jsonl"
    lines = [{"question": "what color is the shape ?", "answers": ["red"]},
             {"question": "is there a circle ?", "answer": "yes"},
             {"question": "describe the picture . it shows a small object"}]
    calib.write_text("".join(json.dumps(line) + "\n" for line in lines))
    models = [make_lm(root / f"m{i}", seed=i + 1) for i in range(2)]
    stats = [collect_statistics(m, calib, root / f"m{i}.stats.safetensors", batch_size=2)
             for i, m in enumerate(models)]
    return {"root": root, "calib": calib, "models": models, "stats": stats}


def reference_inputs(folder, calib):
    """q_proj's input rows, computed without hooks: layer 0's input norm applied to the embeddings, padding
    dropped; and the per-example LM losses' squared gradients of the final norm, averaged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    texts = [(r["question"] + " " + (r.get("answers") or [r.get("answer", "")])[0]).strip()
             for r in map(json.loads, calib.read_text().splitlines())]
    rows, grads = [], []
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            rows.append(model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))[0])
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(model.model.norm.weight.grad.clone() ** 2)
    return torch.cat(rows).double(), torch.stack(grads).mean(0)


def test_hooks_collect_the_gram_matrices_and_the_fisher(world):
    x, fisher_norm = reference_inputs(world["models"][0], world["calib"])
    stats = load_file(world["stats"][0])
    torch.testing.assert_close(stats["gram:model.layers.0.self_attn.q_proj.weight"].double(), x.T @ x / len(x),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats["fisher:model.norm.weight"], fisher_norm.float(), atol=1e-9, rtol=1e-4)
    assert "gram:lm_head.weight" in stats and "gram:model.norm.weight" not in stats


@pytest.mark.parametrize("method", ["regmean", "fisher"])
def test_merge_with_statistics_through_a_recipe(world, tmp_path, method):
    recipe = {"merge_method": method, "dtype": "float32",
              "models": [{"model": str(m), "parameters": {"statistics": str(s)}}
                         for m, s in zip(world["models"], world["stats"])]}
    merge(recipe, tmp_path / "out", quiet=True)
    out = load_file(tmp_path / "out" / "model.safetensors")
    thetas = [load_file(m / "model.safetensors") for m in world["models"]]
    stats = [load_file(s) for s in world["stats"]]
    name = "model.layers.0.mlp.down_proj.weight"
    ws = [t[name].double().numpy() for t in thetas]
    if method == "regmean":
        grams = [s[f"gram:{name}"].double().numpy() for s in stats]
        inputs = [sym_sqrt(g) for g in grams]  # any X with XᵀX = G will do
        want = np_regmean(ws, inputs, 0.9)
        torch.testing.assert_close(out["model.norm.weight"], (thetas[0]["model.norm.weight"] +
                                                              thetas[1]["model.norm.weight"]) / 2)
    else:
        want = np_fisher(ws, [s[f"fisher:{name}"].double().numpy() for s in stats], [1.0, 1.0], 1e-6)
    np.testing.assert_allclose(out[name].double().numpy(), want, atol=1e-4, rtol=1e-3)
    assert not np.allclose(out[name].numpy(), (ws[0] + ws[1]) / 2, atol=1e-4)  # the statistics made a difference


def test_image_question_calibration_covers_every_component_of_a_llava(tmp_path):
    from PIL import Image

    from tiny_llava import build_tiny_llava

    models = [build_tiny_llava(tmp_path / f"m{i}", seed=i + 1) for i in range(2)]
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "red.png")
    (tmp_path / "calib.jsonl").write_text(
        json.dumps({"image": "red.png", "question": "what is the color ?", "answers": ["red"]}) + "\n"
        + json.dumps({"image": "red.png", "question": "is it a dog ?"}) + "\n")
    stats = [collect_statistics(m, tmp_path / "calib.jsonl", tmp_path / f"s{i}.safetensors", batch_size=2)
             for i, m in enumerate(models)]
    recipe = {"merge_method": "regmean", "dtype": "float32",
              "models": [{"model": str(m), "parameters": {"statistics": str(s)}} for m, s in zip(models, stats)]}
    merge(recipe, tmp_path / "out", quiet=True)
    out = load_file(tmp_path / "out" / "model.safetensors")
    s = [load_file(f) for f in stats]
    thetas = [load_file(m / "model.safetensors") for m in models]
    for name in out:  # the statistics' names are the merge's names, in the vision tower, projector and LM alike
        if name.endswith(("q_proj.weight", "fc1.weight", "linear_1.weight")):
            assert f"gram:{name}" in s[0] and f"fisher:{name}" in s[0], name
            assert not torch.allclose(out[name], (thetas[0][name] + thetas[1][name]) / 2, atol=1e-6), name
    assert {k.split(":")[0] for k in s[0]} == {"gram", "fisher"}
    assert any("vision" in k for k in s[0]) and any("projector" in k for k in s[0])


def test_calibration_errors_are_one_line(tmp_path):
    from mmmerge.errors import MMMergeError

    bad = tmp_path / "bad.jsonl"
    for text, message in (("", "no calibration examples"), ('{"image": "x.png"}\n', r"needs a 'question' \(or 'text'\) string"),
                          ('{"question": "a"}\n{"question": "b", "image": "x.png"}\n', "either every")):
        bad.write_text(text)
        with pytest.raises(MMMergeError, match=message) as err:
            collect_statistics(tmp_path / "model", bad, tmp_path / "s.safetensors")
        assert "\n" not in str(err.value)
    bad.write_text('{"question": "a"}\n')
    with pytest.raises(MMMergeError, match="cannot load a causal LM"):
        collect_statistics(tmp_path / "nowhere", bad, tmp_path / "s.safetensors")


# ---------------------------------------------------------------- slices that renumber layers


@pytest.mark.parametrize("method", ["regmean", "fisher"])
def test_slices_read_each_sources_statistics_under_its_own_layer(tmp_path, method):
    """Output layers 0-2 from input layers 2-4: each output layer's statistics are its input layer's (the file is
    keyed by the input's names), checked against the formula on those input tensors and statistics."""
    import transformers

    from tiny import llama_config, randomize
    from tiny_tokenizer import make_tokenizer

    models = []
    for i in range(2):
        tok = make_tokenizer(tmp_path / f"m{i}")
        lm = transformers.LlamaForCausalLM(llama_config(vocab_size=len(tok), num_hidden_layers=5))
        randomize(lm, seed=10 + i).save_pretrained(tmp_path / f"m{i}")
        models.append(tmp_path / f"m{i}")
    (tmp_path / "calib.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in
                                                  ("what color is the shape ?", "is there a circle ? yes")))
    kind = "gram" if method == "regmean" else "fisher"
    stats = [collect_statistics(m, tmp_path / "calib.jsonl", tmp_path / f"s{i}.safetensors", kinds=[kind],
                                device="cpu") for i, m in enumerate(models)]
    recipe = {"merge_method": method, "dtype": "float32",
              "slices": [{"sources": [{"model": str(m), "layer_range": [2, 5], "parameters": {"statistics": str(s)}}
                                      for m, s in zip(models, stats)]}]}
    merge(recipe, tmp_path / "out", quiet=True)
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 3
    thetas = [load_file(m / "model.safetensors") for m in models]
    s = [load_file(f) for f in stats]

    def formula(name, key):
        ws = [t[name].double().numpy() for t in thetas]
        if method == "regmean":
            return np_regmean(ws, [sym_sqrt(x[f"gram:{key}"].double().numpy()) for x in s], 0.9)
        return np_fisher(ws, [x[f"fisher:{key}"].double().numpy() for x in s], [1.0, 1.0], 1e-6)

    for out_layer, in_layer in ((0, 2), (2, 4)):
        for module in ("self_attn.q_proj", "mlp.down_proj"):
            out_name = f"model.layers.{out_layer}.{module}.weight"
            in_name = f"model.layers.{in_layer}.{module}.weight"
            np.testing.assert_allclose(out[out_name].double().numpy(), formula(in_name, in_name), atol=1e-4,
                                       rtol=1e-3)
            # the output layer's own number names another input layer, whose statistics would give another result
            assert not np.allclose(out[out_name].double().numpy(), formula(in_name, out_name), atol=1e-4, rtol=1e-3)


def test_statistics_names_follow_a_renamed_prefix():
    """A multimodal output writes the planned name under its layout's prefix; the input's name gets the same one."""
    import torch

    from mmmerge.engine.tasks import TensorTask

    def task(planned, own):
        return TensorTask(name=planned, shape=(1,), dtype=torch.float32, tensors=[], input_names=[own])

    f = task("model.layers.0.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight")
    assert f.renamed("model.language_model.layers.0.mlp.up_proj.weight").input_names == \
        ["model.language_model.layers.2.mlp.up_proj.weight"]
    assert f.renamed("language_model.model.layers.0.mlp.up_proj.weight").input_names == \
        ["language_model.model.layers.2.mlp.up_proj.weight"]
    assert f.renamed("model.layers.0.mlp.up_proj.weight").input_names == ["model.layers.2.mlp.up_proj.weight"]
    same = task("model.norm.weight", "model.norm.weight")
    assert same.renamed("model.language_model.norm.weight").input_names == ["model.language_model.norm.weight"]
