"""mergekit 0.1.5 as the oracle of the merge-method tests: inputs laid out as its planner lays them out (the
models in order, then the base model), its per-tensor entry point, and the comparison with mmmerge's result."""

import contextlib

import torch
from mergekit.merge_methods import merge_tensors as mergekit_merge_tensors

from mmmerge.methods import merge_tensor

SHAPES = {"vector": (96,), "matrix": (24, 40), "embedding": (512, 24), "conv": (6, 3, 4, 4)}
TOL = 1e-5


def make_inputs(shape, n, seed=0, scale=0.05, unchanged=0.2):
    """A base and n fine-tunes of it; a fraction of each model's entries is exactly the base's."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    models = []
    for i in range(n):
        delta = torch.randn(shape, generator=g) * scale * (1 + i)
        delta[torch.rand(shape, generator=g) < unchanged] = 0
        models.append(base + delta)
    return models, base


def mergekit_result(name, models, base, params, global_params):
    """Run mergekit's kernel on one tensor group: models first, base (if any) last."""
    parameters = dict(global_params)
    for key in {k for p in params for k in p}:
        parameters[key] = [p[key] for p in params]
    inputs = list(models) + ([base] if base is not None else [])
    return mergekit_merge_tensors(inputs, name, parameters=parameters, base_index=len(models) if base is not None else None)


def assert_matches(name, models, base, params, global_params, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    expected = mergekit_result(name, models, base, params, global_params)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    got = merge_tensor(name, models, base, params, global_params, generator)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert torch.isfinite(expected).all()
    diff = (got - expected).abs().max().item()
    assert diff <= TOL, f"{name}: max abs difference {diff:g}"
    # the merge did something: a test whose result equals an input proves little
    reference = base if base is not None else models[0]
    return got, (got - reference).abs().max().item()


def W(*weights, **same):
    return [{"weight": w, **same} for w in weights]


def WD(pairs, **same):
    return [{"weight": w, "density": d, **same} for w, d in pairs]


@contextlib.contextmanager
def magnitude_sorts_stable():
    """mergekit with a stable sort where it ranks a whole task vector by magnitude (TIES, breadcrumbs: sorts of
    1-D tensors): equal magnitudes at the cut then come in index order, as mmmerge's default `tie_break: index`
    takes them. DELLA's row sorts (2-D) are left as they are, and so is mmmerge's own process."""
    import mergekit.sparsify as sparsify

    real = sparsify.torch

    class StableOnVectors:
        def __getattr__(self, name):
            return getattr(real, name)

        def argsort(self, x, *args, **kwargs):
            return real.argsort(x, *args, **{**kwargs, "stable": x.dim() == 1 or kwargs.get("stable", False)})

        def sort(self, x, *args, **kwargs):
            return real.sort(x, *args, **{**kwargs, "stable": x.dim() == 1 or kwargs.get("stable", False)})

    sparsify.torch = StableOnVectors()
    try:
        yield
    finally:
        sparsify.torch = real


def assert_linear_merge_is_mergekits(first, second, out, weights=(0.3, 0.7)) -> tuple[dict, dict]:
    """`mmmerge merge` of two model folders with `linear` in float32 into `out`: every written tensor is mergekit's
    linear kernel on the two inputs' tensors, and no tensor is dropped or added. Returns the inputs' tensors."""
    from safetensors.torch import load_file

    from mmmerge import merge

    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip((first, second), weights)]}
    merge(recipe, out, quiet=True)
    a, b = (load_file(m / "model.safetensors") for m in (first, second))
    merged = load_file(out / "model.safetensors")
    assert set(merged) == set(a)
    for name in merged:
        expected = mergekit_result("linear", [a[name].float(), b[name].float()], None, W(*weights), {})
        assert (merged[name].float() - expected).abs().max() <= TOL, name
    return a, b

