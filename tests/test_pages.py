"""A large tensor's file pages are held a slice at a time (io/pages.py): released pages leave the process (read
from the kernel's own account, /proc/self/smaps), read back unchanged, and a merge streamed this way writes the
same bytes as one that holds whole tensors."""

import os

import pytest
import torch
import transformers
from safetensors.torch import save_file

import mmmerge.io.writer as writer
from mmmerge import merge
from mmmerge.checkpoint import LazyTensor
from mmmerge.engine.execute import _all_finite
from mmmerge.io import pages, read_tensors, write_safetensors
from mmmerge.methods import _common, _fused_half
from tiny import llama_config, randomize

os.environ["HF_HUB_OFFLINE"] = "1"
pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads the kernel's page account")


def resident_kib(t: torch.Tensor) -> int:
    """Resident KiB of the mapping that holds `t`'s first byte, as the kernel counts it."""
    address, inside = t.data_ptr(), False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                low, high = (int(x, 16) for x in head.split("-"))
                inside = low <= address < high
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("no mapping holds the tensor")


def test_released_input_pages_leave_the_process_and_read_back_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(pages, "STREAMED_FROM", 1 << 20)
    monkeypatch.setattr(pages, "RELEASED_EVERY", 0)
    value = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)  # 2 MiB
    save_file({"w": value}, tmp_path / "model.safetensors")
    t = read_tensors(tmp_path / "model.safetensors")["w"].load()
    assert torch.equal(t, value)  # every page read
    assert resident_kib(t) >= 2048
    pages.release(t[: t.numel() // 2])
    assert resident_kib(t) <= 1024 + 8  # the half released, less a page it shares with the rest
    pages.release(t)
    assert resident_kib(t) <= 8
    assert torch.equal(t, value)  # mapped again from the file


def test_pages_are_let_go_a_few_mib_at_a_time(tmp_path, monkeypatch):
    """Slices released one by one leave together once RELEASED_EVERY bytes are due (each call flushes every
    thread's TLB); a new pass from the start lets the pending ones go first."""
    monkeypatch.setattr(pages, "STREAMED_FROM", 1 << 20)
    monkeypatch.setattr(pages, "RELEASED_EVERY", 768 << 10)
    value = torch.randn(1 << 21, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)  # 4 MiB
    save_file({"w": value}, tmp_path / "model.safetensors")
    t = read_tensors(tmp_path / "model.safetensors")["w"].load()
    assert torch.equal(t, value)
    quarter = 1 << 18  # entries: 512 KiB
    pages.release(t[:quarter])
    assert resident_kib(t) >= 4096  # pending
    pages.release(t[quarter:2 * quarter])
    assert 3072 - 8 <= resident_kib(t) <= 3072 + 8  # 768 KiB due: both let go
    pages.release(t[2 * quarter:3 * quarter])
    pages.release(t[:quarter])  # a new pass: the pending slice goes first
    assert resident_kib(t) <= 2560 + 16  # less a page at each boundary
    assert torch.equal(t, value)


def test_memory_the_process_computed_is_never_released(tmp_path, monkeypatch):
    """Only registered file mappings lose pages: releasing anything else would zero a computed tensor; a small
    input (under STREAMED_FROM) keeps its pages."""
    value = torch.randn(1 << 20, generator=torch.Generator().manual_seed(1))
    computed = value.clone()
    pages.release(computed)
    assert torch.equal(computed, value)
    save_file({"w": value}, tmp_path / "model.safetensors")
    small = read_tensors(tmp_path / "model.safetensors")["w"].load()
    assert torch.equal(small, value)
    before = resident_kib(small)
    pages.release(small)
    assert resident_kib(small) == before >= 4096


def test_an_output_tensor_filled_in_the_file_leaves_the_process_as_written(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "MAPPED_FROM", 0)
    monkeypatch.setattr(pages, "RELEASED_EVERY", 0)
    value = torch.arange(1 << 20, dtype=torch.float32)
    held = []

    def fill(out):
        pages.copy(out, value)
        held.append(resident_kib(out))
        assert _all_finite(out)  # the merge's check reads the output back: a slice at a time too
        held.append(resident_kib(out))

    write_safetensors(tmp_path, {"w": LazyTensor(tuple(value.shape), value.dtype, lambda: value, fill=fill)})
    assert max(held) <= 8  # 4 MiB written and read back, a page or two still held
    assert torch.equal(read_tensors(tmp_path / "model.safetensors")["w"].load(), value)


@pytest.fixture(scope="module")
def bf16_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    config = llama_config(hidden_size=64, intermediate_size=128, vocab_size=1024)
    paths = []
    for i in range(3):
        model = randomize(transformers.LlamaForCausalLM(config), 0)
        if i:
            randomize(model, i)
        model.to(torch.bfloat16).save_pretrained(root / f"m{i}")
        paths.append(str(root / f"m{i}"))
    return paths


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties", "breadcrumbs"])
def test_a_merge_streamed_a_slice_at_a_time_writes_the_same_bytes(bf16_models, tmp_path, monkeypatch, method):
    """With slices (and the compiled passes' windows) of 4096 entries and every tensor over 16 KiB streamed (the 1024 x 64 embeddings, the MLPs),
    the merge releases pages as it goes and writes what it writes holding whole tensors."""
    base, *models = bf16_models
    recipe = {"merge_method": method, "dtype": "bfloat16", **({} if method == "linear" else {"base_model": base}),
              "models": [{"model": m, "parameters": {"weight": w, **({} if method == "linear" else {"density": 0.5})}}
                         for m, w in zip(models, (0.6, 0.4))]}
    monkeypatch.setattr(_common, "CHUNK", 4096)
    monkeypatch.setattr(_fused_half, "WINDOW", 4096)  # the compiled passes' windows: slices of the same size
    whole = merge(recipe, tmp_path / "whole", seed=3, quiet=True)
    released = []

    def counted(t, release=pages.release):
        released.append(pages._pages(t, outward=False) is not None)
        release(t)

    monkeypatch.setattr(pages, "STREAMED_FROM", 16 << 10)
    monkeypatch.setattr(writer, "MAPPED_FROM", 16 << 10)
    monkeypatch.setattr(pages, "release", counted)
    streamed = merge(recipe, tmp_path / "streamed", seed=3, quiet=True)
    assert sum(released) > 20  # slices of tracked mappings let go
    assert (streamed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


def test_the_compiled_bf16_merge_holds_a_large_inputs_pages_a_window_at_a_time(tmp_path, monkeypatch):
    """ties through methods/_fused_half.py on 32 MiB inputs, with windows of 256K entries per thread and releases
    every 512 KiB: no input ever has more than a few MiB of its pages in the process (the kernel may map a file's
    pages 2 MiB at a time), in the histogram pass or the merge pass, and the result is the one computed from
    whole in-memory tensors."""
    from mmmerge.methods import task_arithmetic as ta

    monkeypatch.setattr(pages, "STREAMED_FROM", 1 << 20)
    monkeypatch.setattr(pages, "RELEASED_EVERY", 512 << 10)
    monkeypatch.setattr(_fused_half, "WINDOW", 1 << 18)
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(1 << 24, generator=g) * 0.02).to(torch.bfloat16)
    values = [base] + [(base.float() + torch.randn(base.shape, generator=g) * 0.002).to(torch.bfloat16)
                       for _ in range(3)]
    for i, v in enumerate(values):
        save_file({"w": v}, tmp_path / f"m{i}.safetensors")
    mapped = [read_tensors(tmp_path / f"m{i}.safetensors")["w"].load() for i in range(4)]
    held = []
    release = _fused_half._release

    def measured(*tensors, lo, hi):
        held.append(max(resident_kib(t) for t in mapped))
        release(*tensors, lo=lo, hi=hi)

    monkeypatch.setattr(_fused_half, "_release", measured)
    params = [{"weight": w, "density": 0.5} for w in (0.5, 0.3, 0.2)]
    global_params = {"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False, "tie_break": "index"}
    got = ta._merge(mapped[1:], mapped[0], params, global_params, None, sparsify=ta._magnitude, consensus=True,
                    half=torch.bfloat16)
    assert len(held) > 40 and max(held) <= 8192  # of 32768 KiB each
    expected = ta._merge(values[1:], values[0], params, global_params, None, sparsify=ta._magnitude,
                         consensus=True, half=torch.bfloat16)
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))
