"""The registry: schemas and input contracts equal mergekit 0.1.5's, and parameter errors name the parameter."""

import itertools

import pytest
import torch
from mergekit import merge_methods as mk

from mmmerge.errors import RecipeError, ShapeMismatchError
from mmmerge.methods import REGISTRY, REQUIRED, MethodSpec, Param, check_inputs, get_method, merge_tensor, validate_params
from mmmerge.methods._registry import method
from mergekit.merge_methods.base import MISSING, BasePolicy, ParameterScope

MERGEKIT_NAMES = sorted(m.spec.name for m in mk.registered_methods())
MMMERGE_ONLY = {"tie_break"}  # how equal magnitudes at a cut are chosen (methods/_selection.py); mergekit has no say


def test_every_mergekit_method_is_registered():
    # mmmerge also registers methods mergekit lacks (tsv_merge, iso_c, iso_cts: tests/test_methods_datafree.py)
    assert set(MERGEKIT_NAMES) <= set(REGISTRY)


@pytest.mark.parametrize("name", MERGEKIT_NAMES)
def test_parameters_and_defaults_equal_mergekits(name):
    ours = REGISTRY[name]
    theirs = mk.get(name).spec
    per_model = {p.name: p for p in theirs.parameters if p.scope != ParameterScope.SHARED}
    shared = {p.name: p for p in theirs.parameters if p.scope == ParameterScope.SHARED}
    assert set(ours.model_params) == set(per_model)
    assert set(ours.global_params) - MMMERGE_ONLY == set(shared)
    for mine, theirs_ in [(ours.model_params[k], per_model[k]) for k in per_model] + [
        (ours.global_params[k], shared[k]) for k in shared
    ]:
        if theirs_.default is MISSING:
            assert mine.required, theirs_.name
        else:
            assert mine.default == theirs_.default and type(mine.default) is type(theirs_.default), theirs_.name


@pytest.mark.parametrize("name", MERGEKIT_NAMES)
def test_input_contract_equals_mergekits(name):
    ours = REGISTRY[name]
    contract = mk.get(name).spec.contract
    assert {BasePolicy.REQUIRED: "required", BasePolicy.OPTIONAL: "optional", BasePolicy.IGNORED: "ignored"}[
        contract.base
    ] == ours.base
    for n, has_base in itertools.product(range(5), (False, True)):
        if has_base and not ours.uses_base:
            continue  # mergekit then treats the base model as an ordinary input: that is n + 1 inputs
        ids = list(range(n)) + (["base"] if has_base else [])
        try:
            contract.validate_ids(ids, "base" if has_base else None)
            accepted = True
        except ValueError:
            accepted = False
        try:
            check_inputs(name, n, has_base)
            mine = True
        except RecipeError:
            mine = False
        assert mine == accepted, (n, has_base)


def test_unknown_method_is_a_one_line_recipe_error_listing_known_methods():
    with pytest.raises(RecipeError) as err:
        get_method("tie")
    message = str(err.value)
    assert "'tie'" in message and "\n" not in message
    assert all(name in message for name in REGISTRY)
    with pytest.raises(RecipeError):
        merge_tensor("frankenmerge", [torch.zeros(2)])


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, float("nan"), "half", True])
@pytest.mark.parametrize("name", ["ties", "dare_ties", "dare_linear", "breadcrumbs", "della"])
def test_density_out_of_range_names_density(name, bad):
    params = [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": bad}]
    with pytest.raises(RecipeError, match="`density`"):
        validate_params(name, params, {})
    models = [torch.ones(3), torch.full((3,), 2.0)]
    with pytest.raises(RecipeError, match="`density`") as err:
        merge_tensor(name, models, torch.zeros(3), params)
    assert "\n" not in str(err.value)


def test_other_parameter_errors_name_the_parameter():
    cases = [
        ("ties", [{"density": 0.5}], {}, "`weight` is required"),
        ("slerp", [{}], {}, "`t` is required"),
        ("slerp", [{}], {"t": "0.5"}, "`t` must be a number"),
        ("ties", [{"weight": 1}], {"normalize": "yes"}, "`normalize` must be true or false"),
        ("karcher", [{}, {}], {"max_iter": 2.5}, "`max_iter` must be an integer"),
        ("karcher", [{}, {}], {"max_iter": 0}, "`max_iter` must be in"),
        ("breadcrumbs", [{"weight": 1, "gamma": 1.5}], {}, "`gamma`"),
        ("della", [{"weight": 1, "density": 0.9}], {}, "`epsilon`"),  # 0.9 + 0.15 >= 1
        ("della_linear", [{"weight": 1, "density": 0.1, "epsilon": 0.1}], {}, "`epsilon`"),
        ("sce", [{}], {"select_topk": 0}, "`select_topk`"),
        ("linear", [{"weight": 1}, {"weight": -1}], {}, "`weight` sums to 0"),
        ("ties", [{"weight": 1, "normalize": True}], {}, "`normalize` is global"),
        ("ties", [{"weight": 1}], {"density": 0.5}, "`density` is per model"),
        ("linear", [{"weight": 1, "density": 0.5}], {}, "unknown parameter `density`"),
    ]
    for name, params, global_params, message in cases:
        with pytest.raises(RecipeError, match=message):
            validate_params(name, params, global_params)


def test_defaults_are_filled_and_unknown_names_can_be_ignored():
    params, global_params = validate_params("ties", [{"weight": 1}], {})
    assert params == [{"weight": 1.0, "density": 1.0}]
    assert global_params == {"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False,
                             "tie_break": "index"}
    assert REGISTRY["sce"].unknown([{"weight": 1}], {"t": 0.5}) == ["t", "weight"]
    params, _ = validate_params("sce", [{"weight": 1}], {}, unknown="ignore")
    assert params == [{}]
    assert validate_params("passthrough", [{"scale": None}])[0] == [{"scale": None}]


def test_input_count_and_base_errors():
    x = torch.ones(4)
    with pytest.raises(RecipeError, match="needs a base_model"):
        merge_tensor("ties", [x, x], None, [{"weight": 1}] * 2)
    with pytest.raises(RecipeError, match="exactly 1"):
        merge_tensor("slerp", [x, x], x, [{}, {}], {"t": 0.5})
    with pytest.raises(RecipeError, match="at least 2"):
        merge_tensor("model_stock", [x], x, [{}])
    with pytest.raises(ShapeMismatchError):
        merge_tensor("linear", [x, torch.ones(5)], None, [{"weight": 1}] * 2)
    with pytest.raises(RecipeError, match="cancel out"):
        merge_tensor("multislerp", [x, -x, x - x], None, [{"weight": 1}, {"weight": 1}, {"weight": 0}])


def test_non_floating_tensors_are_copied_when_equal_and_dtype_is_float32():
    ids = torch.arange(6)
    out = merge_tensor("ties", [ids.clone()], ids.clone(), [{"weight": 0.3}])
    assert torch.equal(out, ids) and out.dtype == torch.int64
    with pytest.raises(RecipeError, match="non-floating"):
        merge_tensor("ties", [ids + 1], ids, [{"weight": 0.3}])
    half = [torch.randn(8).bfloat16() for _ in range(2)]
    out = merge_tensor("linear", half, None, [{"weight": 1}] * 2)
    assert out.dtype == torch.float32
    assert torch.allclose(out, (half[0].float() + half[1].float()) / 2)


def test_adding_a_method_is_one_decorated_function():
    @method("test_only_mean", base="ignored", min_models=1, global_params={"k": Param(float, 2.0, low=0)})
    def mean(tensors, base, params, global_params, generator=None):
        return global_params["k"] * torch.stack(tensors).mean(0)

    try:
        assert isinstance(get_method("test_only_mean"), MethodSpec)
        assert torch.equal(merge_tensor("test_only_mean", [torch.ones(2), torch.zeros(2)]), torch.ones(2))
        with pytest.raises(RecipeError, match="`k`"):
            merge_tensor("test_only_mean", [torch.ones(2)], global_params={"k": -1})
        with pytest.raises(ValueError, match="twice"):
            method("test_only_mean")(mean)
    finally:
        del REGISTRY["test_only_mean"]
    assert Param(float).default is REQUIRED
