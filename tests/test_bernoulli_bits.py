"""DARE's draws computed from the CPU generator's state (methods/_bernoulli_bits.py) are torch.bernoulli's own, bit
for bit, and leave the generator where torch leaves it; where that cannot be shown, torch draws them."""

import numpy as np
import pytest
import torch

from mmmerge.methods import _bernoulli_bits, task_arithmetic


def torch_draws(generator, n, p, dtype):
    return np.packbits(torch.bernoulli(torch.full((n,), p, dtype=dtype), generator=generator).float().numpy() != 0)


@pytest.mark.parametrize("dtype", _bernoulli_bits.DTYPES)
@pytest.mark.parametrize("p", [0.0, 1e-3, 0.3, 0.5, 0.9, 1.0])
def test_draws_and_the_state_after_them_are_torchs(dtype, p):
    ours, theirs = torch.Generator().manual_seed(17), torch.Generator().manual_seed(17)
    for g in (ours, theirs):  # a generator that has drawn before, normals included (their cached sample is kept)
        torch.randn(3, generator=g)
        torch.rand(1001, generator=g)
    for n in (1, 13, 624, 625, 5000, 100_003):  # across the generator's 624-word blocks, not a multiple of 8
        packed = np.zeros((n + 7) // 8, np.uint8)
        _bernoulli_bits.draw_bits(ours, n, p, dtype, packed)
        assert np.array_equal(packed, torch_draws(theirs, n, p, dtype)), (n, p, dtype)
        assert torch.equal(ours.get_state(), theirs.get_state())
    assert torch.equal(torch.randn(5, generator=ours), torch.randn(5, generator=theirs))


def test_the_check_against_torch_holds_here():
    assert _bernoulli_bits.replicates()


def draws_of(generator, *, n=40_000, density=0.3, work=torch.bfloat16):
    return task_arithmetic._drawn(n, density, work, generator, torch.device("cpu"), 8192).bits


def test_dare_takes_the_computed_draws_and_falls_back_to_torchs(monkeypatch):
    calls = []
    real = _bernoulli_bits.draw_bits
    monkeypatch.setattr(_bernoulli_bits, "draw_bits", lambda *a: calls.append(1) or real(*a))
    computed = draws_of(torch.Generator().manual_seed(5))
    assert calls
    monkeypatch.setattr(_bernoulli_bits, "replicates", lambda: False)
    drawn = draws_of(torch.Generator().manual_seed(5))
    assert len(calls) == 1 and np.array_equal(computed, drawn)
    assert np.array_equal(computed, torch_draws(torch.Generator().manual_seed(5), 40_000, 0.3, torch.bfloat16))


def test_no_generator_draws_from_torchs_default_one():
    torch.manual_seed(23)
    computed = draws_of(None, work=torch.float32)
    after = torch.rand(3)
    torch.manual_seed(23)
    assert np.array_equal(computed, torch_draws(None, 40_000, 0.3, torch.float32))
    assert torch.equal(torch.rand(3), after)


def test_float64_draws_stay_torchs(monkeypatch):
    """A float64 probability draws 53 bits of a 64-bit output: not what draw_bits computes."""
    monkeypatch.setattr(_bernoulli_bits, "draw_bits", lambda *a: pytest.fail("computed a float64 draw"))
    drawn = draws_of(torch.Generator().manual_seed(2), work=torch.float64)
    assert np.array_equal(drawn, torch_draws(torch.Generator().manual_seed(2), 40_000, 0.3, torch.float64))
