"""Merge methods: pure per-tensor functions and a registry (mergekit 0.1.5 semantics).

    from mmmerge.methods import REGISTRY, get_method, validate_params, merge_tensor

    spec = get_method("ties")                      # RecipeError listing known methods if unknown
    params, global_params = validate_params(spec, [{"weight": 1, "density": .5}] * 2, {"lambda": 1})
    out = spec.fn(tensors, base, params, global_params, generator)   # float32 tensors in, float32 out
    out = merge_tensor("ties", tensors, base, [{"weight": 1, "density": .5}] * 2)   # all of the above

Every module in this package whose name does not start with "_" is imported and registers its
methods; adding a method is adding one such file. See _registry.py for the function contract.
"""

import importlib
import pkgutil

from ._registry import REGISTRY, REQUIRED, MethodSpec, Param, check_inputs, get_method, merge_tensor, register, validate_params

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
del _module

__all__ = [
    "REGISTRY",
    "REQUIRED",
    "MethodSpec",
    "Param",
    "check_inputs",
    "get_method",
    "merge_tensor",
    "register",
    "validate_params",
]
