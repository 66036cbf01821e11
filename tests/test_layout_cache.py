"""The on-disk cache of architecture file layouts: equal to computing them, keyed by config, robust to damage."""

import json
import os
import subprocess
import sys

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
    files = list(layout_cache_dir().glob("layout-*.json"))
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
    assert len(list(layout_cache_dir().glob("layout-*.json"))) == 2


def test_an_empty_cache_setting_disables_it(tmp_path, monkeypatch):
    """With MMMERGE_CACHE_DIR empty, reading a model that needs a layout writes nothing to any cache folder."""
    monkeypatch.setenv("MMMERGE_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # where the default cache would go
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _layout.cache_clear()
    assert layout_cache_dir() is None
    cfg = llama_config(num_hidden_layers=3, hidden_size=48)  # a config no earlier test computed a layout for
    randomize(transformers.LlamaForCausalLM(cfg), 0).save_pretrained(tmp_path / "lm")
    assert open_checkpoint(tmp_path / "lm").component("language").tensors
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()
    monkeypatch.setenv("MMMERGE_CACHE_DIR", str(tmp_path / "on"))  # the same read with the cache on writes it
    _layout.cache_clear()
    open_checkpoint(tmp_path / "lm")
    assert any((tmp_path / "on").rglob("*.json"))


def test_a_warm_cache_opens_and_merges_without_importing_transformers(tmp_path):
    """transformers takes 0.7 s to import; with the cache warm a causal-LM merge never needs it. Nor does a linear
    merge need numba (0.2 s, and its compiled code's loading), which only the compiled and drawn methods use."""
    randomize(transformers.LlamaForCausalLM(llama_config()), 0).save_pretrained(tmp_path / "lm")
    (tmp_path / "r.yml").write_text(f"merge_method: linear\nmodels:\n  - model: {tmp_path / 'lm'}\n"
                                    f"    parameters: {{weight: 1.0}}\n")
    env = {**os.environ, "MMMERGE_CACHE_DIR": str(tmp_path / "cache")}
    script = ("import sys, mmmerge; mmmerge.merge(sys.argv[1], sys.argv[2], quiet=True); "
              "print('transformers' in sys.modules, 'numba' in sys.modules)")
    cold = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r.yml"), str(tmp_path / "a")], env=env,
                          capture_output=True, text=True, check=True)
    warm = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r.yml"), str(tmp_path / "b")], env=env,
                          capture_output=True, text=True, check=True)
    assert cold.stdout.split()[0] == "True" and warm.stdout.split() == ["False", "False"]
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()
