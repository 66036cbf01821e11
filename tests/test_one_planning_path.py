"""A `models:` recipe is planned as mergekit plans it: as one slice holding every layer of every model. The same
merge written both ways gives the same task for every tensor (parameters resolved per model, gradients over the
layers), and `models:` keeps the model's own tensor order."""

import transformers

from mmmerge.adapters import open_checkpoint
from mmmerge.engine.plan import plan_merge
from tiny import llama_config, randomize

LAYERS = 3


def test_models_recipe_plans_as_one_slice_of_every_layer(tmp_path):
    paths = {}
    for name, seed in (("base", 0), ("a", 1), ("b", 2)):
        randomize(transformers.LlamaForCausalLM(llama_config(num_hidden_layers=LAYERS)), seed).save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    per_model = {"a": {"weight": [0.2, 0.9], "density": 0.5}, "b": {"weight": 0.4, "density": [0.3, 0.8, 0.6]}}
    shared = {"lambda": [{"filter": "mlp", "value": [0.5, 1.5]}, {"value": 1.0}]}
    models = {"merge_method": "ties", "base_model": paths["base"], "parameters": shared, "dtype": "float32",
              "models": [{"model": paths[m], "parameters": p} for m, p in per_model.items()]}
    sliced = {**{k: v for k, v in models.items() if k != "models"},
              "slices": [{"sources": [{"model": paths[m], "layer_range": [0, LAYERS], "parameters": p}
                                      for m, p in [*per_model.items(), ("base", None)]]}]}
    whole, one_slice = plan_merge(models), plan_merge(sliced)

    by_name = {t.name: t for t in one_slice.tasks}
    assert sorted(by_name) == sorted(t.name for t in whole.tasks)
    for t in whole.tasks:
        s = by_name[t.name]
        assert (t.params, t.global_params, t.shape, t.dtype) == (s.params, s.global_params, s.shape, s.dtype), t.name
    first_layer = next(t for t in whole.tasks if t.name == "model.layers.0.mlp.up_proj.weight")
    last_layer = next(t for t in whole.tasks if t.name == f"model.layers.{LAYERS - 1}.mlp.up_proj.weight")
    assert [p["weight"] for p in first_layer.params] == [0.2, 0.4]  # gradients run over the layers
    assert [p["weight"] for p in last_layer.params] == [0.9, 0.4]
    assert (first_layer.global_params["lambda"], last_layer.global_params["lambda"]) == (0.5, 1.5)
    reference = open_checkpoint(paths["base"]).component("language")
    assert [t.name for t in whole.tasks] == list(reference.tensors)  # the model's own order
