"""`mmmerge merge` under torchrun with two CPU processes: the same files, byte for byte, as one process; a rank
that fails stops both, with one line each, and leaves nothing."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file

from mmmerge import merge
from mmmerge.engine import plan_merge
from mmmerge.engine.execute import output_tensors
from mmmerge.engine.ranks import assign_files, check_split
from mmmerge.errors import MMMergeError, RecipeError
from mmmerge.io.writer import shard_layout
from mmmerge.validate import byte_size
from tiny import llama_config, randomize

ROOT = Path(__file__).resolve().parents[1]
SHARD = 12_000  # bytes: the tiny Llama's 0.1 MB of weights in about ten files


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base = randomize(transformers.LlamaForCausalLM(llama_config()), seed=0)
    base.save_pretrained(root / "base")
    for i in (1, 2):
        randomize(transformers.LlamaForCausalLM.from_pretrained(root / "base"), seed=i).save_pretrained(root / f"ft{i}")
    return root


def recipe(models, method, **extra):
    return {"merge_method": method, "base_model": str(models / "base"), "dtype": "bfloat16",
            "parameters": {"density": 0.5}, **extra,
            "models": [{"model": str(models / f"ft{i}"), "parameters": {"weight": w}} for i, w in ((1, 0.7), (2, 0.5))]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, logs: Path):
    """`mmmerge` under torchrun with two CPU processes; each rank's stderr goes to its own file under `logs`.
    torchrun stops the other processes once one has exited with an error; it looks every 3 s here (not every
    0.1 s), so that a rank still printing its own line is not stopped first."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "--log-dir", str(logs),
                           "--redirects", "2", "--monitor-interval", "3", "-m", "mmmerge", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def rank_stderr(logs: Path) -> dict[int, str]:
    """Each rank's stderr, as torchrun's --log-dir keeps it (<logs>/<run id>/attempt_0/<rank>/stderr.log)."""
    return {int(p.parent.name): p.read_text() for p in logs.glob("*/attempt_*/*/stderr.log")}


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("method, extra", [
    ("ties", {}),
    ("dare_ties", {"random_stream": "per_tensor"}),  # seeded: each tensor's draws from its name, on any rank
])
def test_two_processes_write_the_one_process_files(models, tmp_path, method, extra):
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe(models, method, **extra)))
    merge(path, tmp_path / "one" / "merged", seed=7, out_shard_size=SHARD, quiet=True)
    r = torchrun("merge", path, "--out", tmp_path / "two" / "merged", "--seed", 7, "--out-shard-size", SHARD,
                 "--quiet", logs=tmp_path / "logs")
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = files(tmp_path / "one" / "merged"), files(tmp_path / "two" / "merged")
    assert sum(name.endswith(".safetensors") for name in one) >= 4  # sharded, so both ranks wrote files
    assert one.keys() == two.keys()
    for name in one:
        assert one[name] == two[name], name
    assert not [p for p in (tmp_path / "two").iterdir() if p.name != "merged"]  # no temporary folder left


def test_a_failing_rank_stops_both_and_leaves_nothing(models, tmp_path):
    """An input tensor that only rank 1 merges holds NaN: rank 1 says so, rank 0 says rank 1 failed."""
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe(models, "ties")))
    plan = plan_merge(path)
    layout = shard_layout(output_tensors(plan, torch.device("cpu")), SHARD)
    owners = assign_files([sum(plan_task.nbytes for plan_task in plan.tasks if plan_task.name in names)
                           for names in layout.values()], 2)
    bad = next(names for names, owner in zip(layout.values(), owners) if owner == 1)[0]
    broken = tmp_path / "ft1"
    broken.mkdir()
    for p in (models / "ft1").iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    tensors = load_file(broken / "model.safetensors")
    tensors[bad][0] = float("nan")
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    path.write_text(path.read_text().replace(str(models / "ft1"), str(broken)))
    with pytest.raises(MMMergeError) as one_process:
        merge(path, tmp_path / "one", out_shard_size=SHARD, quiet=True)

    r = torchrun("merge", path, "--out", tmp_path / "out", "--out-shard-size", SHARD, "--quiet",
                 logs=tmp_path / "logs")
    assert r.returncode != 0
    errors = rank_stderr(tmp_path / "logs")
    assert errors[1] == f"error: {one_process.value}\n"
    assert errors[0].startswith("error: rank 0: stopped because rank 1 failed") and errors[0].count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft1", "logs", "recipe.yml"]


def test_one_rank_alone_under_torchrun(models, tmp_path, monkeypatch):
    """`across_ranks=False` (a search's rank 0 writing its best model) merges in this process, joining no group."""
    merge(recipe(models, "ties"), tmp_path / "one" / "merged", out_shard_size=SHARD, quiet=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    merge(recipe(models, "ties"), tmp_path / "alone" / "merged", out_shard_size=SHARD, quiet=True, across_ranks=False)
    assert files(tmp_path / "one" / "merged") == files(tmp_path / "alone" / "merged")


def test_mergekits_one_random_stream_is_not_split(models):
    """A seeded dare merge in mergekit's stream draws tensor after tensor: under torchrun it is refused."""
    plan = plan_merge(recipe(models, "dare_ties"), seed=7)
    with pytest.raises(RecipeError, match="random_stream: per_tensor"):
        check_split(plan)
    check_split(plan_merge(recipe(models, "dare_ties", random_stream="per_tensor"), seed=7))
    check_split(plan_merge(recipe(models, "ties"), seed=7))


def test_files_go_to_ranks_balanced_by_bytes():
    sizes = [5, 1, 4, 3, 3, 2]
    owners = assign_files(sizes, 2)
    load = [sum(s for s, o in zip(sizes, owners) if o == r) for r in (0, 1)]
    assert sorted(load) == [9, 9]
    assert assign_files([7], 3) == [0]


@pytest.mark.parametrize("text, size", [(1234, 1234), ("20K", 20_000), ("500M", 500 * 10**6), ("2g", 2 * 10**9),
                                        ("5B", 5 * 10**9)])
def test_out_shard_size(text, size):
    assert byte_size("out_shard_size", text) == size


@pytest.mark.parametrize("text", ["", "2 GB", "-3", 0, "1.5G", True])
def test_bad_out_shard_size(text):
    with pytest.raises(RecipeError, match="out_shard_size"):
        byte_size("out_shard_size", text)
