"""The on-disk cache of architecture file layouts: equal to computing them, keyed by config, robust to damage."""

import json

import transformers

from mmmerge.adapters import open_checkpoint
from mmmerge.adapters.hf_common import _layout, layout_cache_dir
from mmmerge.adapters.hf_export import file_layout, meta_model
from tiny import llama_config, randomize


def test_cached_layout_equals_the_computed_one_and_survives_damage(tmp_path, monkeypatch):
    monkeypatch.setenv("MMMERGE_CACHE_DIR", str(tmp_path / "cache"))
    _layout.cache_clear()
    randomize(transformers.LlamaForCausalLM(llama_config()), 0).save_pretrained(tmp_path / "lm")
    first = open_checkpoint(tmp_path / "lm").component("language")
    files = list(layout_cache_dir().glob("*.json"))
    assert len(files) == 1
    want = file_layout(meta_model(first))
    _layout.cache_clear()  # a new process: the layout comes from the file
    second = open_checkpoint(tmp_path / "lm").component("language")
    assert set(second.tensors) == set(first.tensors)
    args = (first.arch, json.dumps(first.config, sort_keys=True, default=str))
    _layout.cache_clear()
    assert _layout(*args) == want
    files[0].write_text("{not json")  # damaged: computed again and rewritten
    _layout.cache_clear()
    assert _layout(*args) == want and json.loads(files[0].read_text())["required"]
    # another config is another entry
    randomize(transformers.LlamaForCausalLM(llama_config(num_hidden_layers=3)), 0).save_pretrained(tmp_path / "deep")
    assert "model.layers.2.mlp.up_proj.weight" in open_checkpoint(tmp_path / "deep").component("language").tensors
    assert len(list(layout_cache_dir().glob("*.json"))) == 2


def test_an_empty_cache_setting_disables_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MMMERGE_CACHE_DIR", "")
    _layout.cache_clear()
    assert layout_cache_dir() is None
    randomize(transformers.LlamaForCausalLM(llama_config()), 0).save_pretrained(tmp_path / "lm")
    assert open_checkpoint(tmp_path / "lm").component("language").tensors
