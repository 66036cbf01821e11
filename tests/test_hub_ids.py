"""Models named by hub ID resolve through huggingface_hub's local cache (a temporary HF_HOME in the layout
huggingface_hub writes); nothing is downloaded, and an ID the cache lacks is one clear line when offline."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file

from mmmerge import merge
from mmmerge.errors import MMMergeError
from tiny import llama_config, randomize

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(hub_cache, repo, folder, commit=COMMIT):
    """`folder` as huggingface_hub stores a downloaded snapshot: blobs, a snapshot of links, refs/main."""
    root = hub_cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "blobs").mkdir()
    for f in sorted(folder.iterdir()):
        blob = root / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    local = {}
    for name, seed in (("base", 0), ("tuned", 1)):
        randomize(transformers.LlamaForCausalLM(llama_config()), seed).save_pretrained(root / name)
        put_in_cache(root / "home" / "hub", f"tiny-org/{name}", root / name)
        local[name] = root / name
    return root / "home", local


@pytest.fixture
def cache(hub, monkeypatch):
    import huggingface_hub.constants as constants

    home, local = hub
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    return local


def test_hub_ids_merge_like_the_local_folders(cache, tmp_path):
    by_id = {"merge_method": "task_arithmetic", "base_model": "tiny-org/base", "dtype": "float32",
             "models": [{"model": f"tiny-org/tuned@{COMMIT}", "parameters": {"weight": 0.5}},
                        {"model": {"path": "tiny-org/tuned", "revision": "main"}, "parameters": {"weight": 0.25}}]}
    by_path = {**by_id, "base_model": str(cache["base"]),
               "models": [{"model": str(cache["tuned"]), "parameters": {"weight": 0.75}}]}
    a = load_file(merge(by_id, tmp_path / "a", quiet=True) / "model.safetensors")
    b = load_file(merge(by_path, tmp_path / "b", quiet=True) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_an_id_missing_from_the_cache_is_one_line_offline(cache, tmp_path):
    cfg = {"merge_method": "linear", "models": [{"model": "tiny-org/absent", "parameters": {"weight": 1.0}}]}
    with pytest.raises(MMMergeError, match=r"tiny-org/absent: not a local path, not in the Hugging Face cache .*"
                                           r"downloads are off"):
        merge(cfg, tmp_path / "o", quiet=True)
    assert not (tmp_path / "o").exists()


def test_cli_offline_flag_in_a_real_process(hub, tmp_path):
    home, _ = hub
    recipe = tmp_path / "r.yml"
    recipe.write_text("merge_method: linear\nmodels:\n  - model: tiny-org/tuned\n    parameters: {weight: 1.0}\n"
                      "  - model: tiny-org/nowhere\n    parameters: {weight: 1.0}\n")
    env = {**os.environ, "HF_HOME": str(home)}
    env.pop("HF_HUB_OFFLINE", None)
    r = subprocess.run([sys.executable, "-m", "mmmerge", "merge", str(recipe), "--out", str(tmp_path / "o"),
                        "--offline", "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "tiny-org/nowhere" in r.stderr and "downloads are off" in r.stderr
    recipe.write_text("merge_method: linear\nmodels:\n  - model: tiny-org/tuned\n    parameters: {weight: 1.0}\n")
    r = subprocess.run([sys.executable, "-m", "mmmerge", "merge", str(recipe), "--out", str(tmp_path / "o"),
                        "--offline", "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_relative_paths_are_relative_to_the_recipe_folder(hub, tmp_path, monkeypatch):
    _, local = hub
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copytree(local["tuned"], recipes / "tuned")
    (recipes / "r.yml").write_text("merge_method: linear\nmodels:\n  - model: tuned\n    parameters: {weight: 1.0}\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    shutil.copytree(local["base"], elsewhere / "tuned")  # a different model under the same name in the working folder
    monkeypatch.chdir(elsewhere)
    out = load_file(merge(str(recipes / "r.yml"), tmp_path / "o", quiet=True) / "model.safetensors")
    want = load_file(local["tuned"] / "model.safetensors")
    assert all(torch.equal(out[k], want[k]) for k in want)
