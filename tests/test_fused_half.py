"""The compiled bf16 and fp16 task-vector merge (methods/_fused_half.py) gives the torch path's bits, which are mergekit's
(tests/test_methods_native.py checks those against mergekit itself, through the compiled path too): on tensors
that span several histogram rows, thread ranges and page windows, on equal magnitudes at the cut, zeros and -0,
subnormals, 30 orders of magnitude, for 1 to 4 models, every density from none kept to all, negative and
cancelling weights, with and without normalising, consensus and lambda."""

import numpy as np
import pytest
import torch

from mmmerge.io import pages
from mmmerge.methods import _fused_half, merge_tensor
from mmmerge.methods import task_arithmetic as ta
from test_methods_native import adversarial


@pytest.fixture
def small_windows(monkeypatch):
    """Rows, thread ranges and windows a few blocks long, so that tensors of a few 100k entries cross them all."""
    monkeypatch.setattr(pages, "STREAMED_FROM", 1 << 16)
    monkeypatch.setattr(_fused_half, "ROW_MIN", 4 * _fused_half.BLOCK)
    monkeypatch.setattr(_fused_half, "WINDOW", 3 * _fused_half.BLOCK + 5)
    monkeypatch.setattr(_fused_half, "SERIAL_BELOW", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(threads)


def both_paths(monkeypatch, tensors, base, params, global_params, *, sparsify, consensus, seed=None):
    half = base.dtype
    """(compiled, torch) results of one bf16 merge, random draws from generators seeded with `seed`; fails if the
    compiled path was not taken."""
    def generator():
        return None if seed is None else torch.Generator().manual_seed(seed)

    calls = []
    real = _fused_half.merge
    monkeypatch.setattr(_fused_half, "merge", lambda *a, **k: calls.append(1) or real(*a, **k))
    compiled = ta._merge(tensors, base, params, global_params, generator(), sparsify=sparsify, consensus=consensus,
                         half=half)
    assert calls, "the compiled path was not taken"
    monkeypatch.setattr(ta, "_fused", lambda *a: None)
    reference = ta._merge(tensors, base, params, global_params, generator(), sparsify=sparsify, consensus=consensus,
                          half=half)
    monkeypatch.undo()
    return compiled, reference


def same_bits(a, b):
    return a.dtype == b.dtype and torch.equal(a.view(torch.int16), b.view(torch.int16))


GLOBAL = {"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False, "tie_break": "index"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["random", "ties", "zeros", "subnormal", "wide"])
@pytest.mark.parametrize("method", ["ties", "task_arithmetic"])
def test_compiled_merge_is_the_torch_paths_bit_for_bit(kind, method, dtype, small_windows, monkeypatch):
    sparsify, consensus = (ta._magnitude, True) if method == "ties" else (ta._none, False)
    models, base = adversarial(kind, (389, 517), dtype, n=4, seed=3)  # 201113 entries: not a block multiple
    cases = [
        ([0.5, 0.3, 0.2], [0.5, 0.5, 0.5], GLOBAL),
        ([0.9, -0.4, 0.7, 0.2], [0.1, 0.9, 1.0, 0.3], {**GLOBAL, "lambda": 0.7}),
        ([1.0, -1.0], [1e-6, 0.5], GLOBAL),  # weights cancelling: a zero normaliser counts as 1; k = 1
        ([0.6], [0.0], {**GLOBAL, "normalize": False}),  # nothing kept
        ([0.3, 0.3, 0.4], [1.0, 0.25, 0.75], {**GLOBAL, "normalize": False, "lambda": 1.5}),
    ]
    for weights, densities, global_params in cases:
        params = [{"weight": w, "density": d} for w, d in zip(weights, densities)]
        compiled, reference = both_paths(monkeypatch, models[:len(params)], base, params, global_params,
                                         sparsify=sparsify, consensus=consensus)
        assert same_bits(compiled, reference), (weights, densities, global_params)


@pytest.mark.parametrize("kind", ["random", "ties", "zeros", "subnormal", "wide"])
@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_compiled_dare_is_the_torch_paths_bit_for_bit(kind, method, small_windows, monkeypatch):
    """DARE's draws (the same generator stream), kept bits and L1 rescale factors, with and without the rescale,
    a model kept whole (density 1), consensus and lambda."""
    consensus = method == "dare_ties"
    models, base = adversarial(kind, (389, 517), torch.bfloat16, n=4, seed=4)
    plain = {**GLOBAL, "normalize": False, "rescale": True}
    cases = [
        ([0.5, 0.3, 0.2], [0.5, 0.5, 0.5], plain),
        ([0.9, -0.4, 0.7, 0.2], [0.1, 0.9, 1.0, 0.3], {**plain, "lambda": 0.7}),
        ([1.0, -1.0], [1e-6, 0.5], {**plain, "normalize": True}),  # about nothing kept: no rescale
        ([0.3, 0.3, 0.4], [0.7, 0.25, 0.75], {**plain, "rescale": False, "lambda": 1.5}),
    ]
    for weights, densities, global_params in cases:
        params = [{"weight": w, "density": d} for w, d in zip(weights, densities)]
        compiled, reference = both_paths(monkeypatch, models[:len(params)], base, params, global_params,
                                         sparsify=ta._random, consensus=consensus, seed=11)
        assert same_bits(compiled, reference), (weights, densities, global_params)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_consensus_without_normalising_and_one_model(dtype, small_windows, monkeypatch):
    models, base = adversarial("ties", (300, 301), dtype, n=2, seed=5)
    for params, global_params in [([{"weight": 0.7, "density": 0.3}], GLOBAL),
                                  ([{"weight": 0.7, "density": 0.4}, {"weight": 0.2, "density": 0.8}],
                                   {**GLOBAL, "normalize": False})]:
        compiled, reference = both_paths(monkeypatch, models[:len(params)], base, params, global_params,
                                         sparsify=ta._magnitude, consensus=True)
        assert same_bits(compiled, reference)


def test_a_9m_entry_tensor_at_the_default_sizes(monkeypatch):
    """The default histogram rows (16 here) and thread ranges, on a tensor of 9M entries (under
    pages.STREAMED_FROM, so in one window; `small_windows` tests crossing windows)."""
    g = torch.Generator().manual_seed(1)
    base = (torch.randn(3000, 3001, generator=g) * 0.02).to(torch.bfloat16)
    models = [(base.float() + torch.randn(base.shape, generator=g) * 0.002).to(torch.bfloat16) for _ in range(2)]
    params = [{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.3}]
    compiled, reference = both_paths(monkeypatch, models, base, params, GLOBAL, sparsify=ta._magnitude,
                                     consensus=True)
    assert same_bits(compiled, reference)


def test_non_finite_task_vectors_are_refused_as_by_the_torch_path(small_windows):
    models, base = adversarial("random", (200, 300), torch.bfloat16, n=2)
    models[1].view(-1)[12345] = float("nan")
    params = [{"weight": 0.5, "density": 0.5}] * 2
    with pytest.raises(ValueError, match="inf or NaN"):
        ta._merge(models, base, params, GLOBAL, None, sparsify=ta._magnitude, consensus=True, half=torch.bfloat16)
    # without a sparsifier the NaN reaches the output, where the engine's finite check refuses it
    out = ta._merge(models, base, params, GLOBAL, None, sparsify=ta._none, consensus=False, half=torch.bfloat16)
    assert torch.isnan(out.view(-1)[12345]) and torch.isfinite(out.view(-1)[:12345]).all()


def test_other_cases_keep_the_torch_path(monkeypatch):
    """DELLA's ranked draws, breadcrumbs, fp16 DARE (its draws and sums are float32) and `tie_break: sort` are not
    compiled; bf16 DARE, fp16 ties and a float32 input of a bf16 merge are (mergekit rounds it to bf16 first, and so
    does merge_tensor)."""
    calls = []
    monkeypatch.setattr(_fused_half, "merge", lambda *a, **k: calls.append(1))
    models, base = adversarial("random", (40, 50), torch.bfloat16, n=2)
    params = [{"weight": 0.5, "density": 0.5}] * 2
    merge_tensor("ties", [m.half() for m in models], base.half(), params, {"tie_break": "sort"},
                 native_dtype=torch.float16)
    merge_tensor("ties", models, base, params, {"tie_break": "sort"}, native_dtype=torch.bfloat16)
    merge_tensor("della", models, base, params, {}, torch.Generator().manual_seed(1), native_dtype=torch.bfloat16)
    merge_tensor("breadcrumbs", models, base, params, {}, native_dtype=torch.bfloat16)
    merge_tensor("dare_ties", [m.half() for m in models], base.half(), params, {}, torch.Generator().manual_seed(1),
                 native_dtype=torch.float16)
    assert not calls
    merge_tensor("task_arithmetic", [m.half() for m in models], base.half(), params, {}, native_dtype=torch.float16)
    merge_tensor("ties", [models[0].float(), models[1]], base, params, {}, native_dtype=torch.bfloat16)
    merge_tensor("dare_ties", models, base, params, {}, torch.Generator().manual_seed(1), native_dtype=torch.bfloat16)
    assert len(calls) == 3


def test_fp16_rounding_is_torchs_conversion():
    """The kernels' float32 -> fp16 rounding (to nearest, ties to even; subnormals; overflow to inf from 65520 on)
    and fp16 bit patterns, against torch's conversion, on random bit patterns and the edges."""
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(-2**31, 2**31 - 1, (20000,), generator=g, dtype=torch.int64).to(torch.int32)
    edges = torch.tensor([0.0, -0.0, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-14, 2.0**-14 - 2.0**-26, 65504.0,
                          65519.99, 65520.0, -65520.0, 1e30, float("inf"), -float("inf"), 1 + 2.0**-11,
                          1 + 3 * 2.0**-11, 5.9604645e-08, -2.9802322e-08])
    values = torch.cat([raw.view(torch.float32), edges.float(), (torch.randn(20000, generator=g) * 1e-6)])
    values = values[torch.isfinite(values) | torch.isinf(values)]
    for f in values.tolist():
        f = np.float32(f)
        expected = torch.tensor(f).half()
        rounded, bits, widened = _fused_half.fp16_round_trip(f)
        assert np.float32(rounded).tobytes() == np.float32(expected.float().item()).tobytes(), f
        assert int(bits) == int(expected.view(torch.int16).item()) & 0xFFFF, f
        assert np.float32(widened).tobytes() == np.float32(expected.float().item()).tobytes(), f
