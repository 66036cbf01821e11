"""A search parses its recipe once: a candidate that differs only in parameter values has them set into the parsed
form, and plans exactly as its recipe parsed afresh does."""

import pytest
import transformers

import mmmerge.searching.candidate as candidate
from mmmerge.engine.plan import build_plan
from mmmerge.engine.recipe import parse_recipe
from mmmerge.searching.candidate import Candidates
from tiny import llama_config, randomize


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("candidates")
    out = {}
    for name, seed in (("base", 0), ("a", 1), ("b", 2)):
        randomize(transformers.LlamaForCausalLM(llama_config(num_hidden_layers=2)), seed).save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def recipe(paths, method, weight_a, density, lam):
    params = {"lambda": lam} if method != "linear" else {}
    per_model = {"weight": [weight_a, 0.3]} | ({"density": [{"filter": "mlp", "value": density}, {"value": 0.9}]}
                                                if method == "ties" else {})
    return {"merge_method": method, "base_model": paths["base"], "parameters": params, "dtype": "float32",
            "models": [{"model": paths["a"], "parameters": per_model},
                       {"model": paths["b"], "parameters": {"weight": 0.5}}]}


def test_candidates_parse_each_recipe_shape_once(paths, monkeypatch):
    parsed = []

    def counting(data, *args, **kwargs):
        parsed.append(data["merge_method"])
        return parse_recipe(data, *args, **kwargs)

    monkeypatch.setattr(candidate, "parse_recipe", counting)
    candidates = Candidates(None)
    points = [("ties", 0.1, 0.2, 1.0), ("ties", 0.7, 0.6, 0.5), ("task_arithmetic", 0.4, None, 2.0),
              ("ties", 0.9, 1.0, 1.5), ("task_arithmetic", 1.3, None, 0.25)]
    for point in points:
        got = candidates.plan(recipe(paths, *point))
        fresh = build_plan(parse_recipe(recipe(paths, *point)), opener=candidates.opener)
        assert [t.name for t in got.tasks] == [t.name for t in fresh.tasks]
        for g, f in zip(got.tasks, fresh.tasks):
            assert (g.params, g.global_params) == (f.params, f.global_params), (point, g.name)
        mlp = next(t for t in got.tasks if t.name == "model.layers.0.mlp.up_proj.weight")  # t = 0: the first value
        assert mlp.params[0]["weight"] == point[1] and mlp.global_params["lambda"] == point[3]
        if point[0] == "ties":
            assert mlp.params[0]["density"] == point[2]
    assert parsed == ["ties", "task_arithmetic"]  # one parse per recipe shape, not one per candidate
