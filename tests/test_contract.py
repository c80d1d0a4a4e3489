"""The probe contract over every registered probe, through the public checks of
:mod:`workbench.testing` (one test case per probe and check)."""

import pytest
import torch
import xarray as xr

import workbench as wb
from workbench.registry import probes
from workbench.testing import check_probe, parametrize_with_probe_checks

PROBES = probes()


def test_registry_holds_the_public_surface():
    assert {
        "evaluate",
        "landscape.slice_1d",
        "landscape.slice_2d",
        "landscape.interpolate",
        "attention.entropy",
        "curvature.hessian_eigenvalues",
        "sharpness.sam_sharpness",
        "attention.attention_map",
    } <= set(PROBES)


@parametrize_with_probe_checks(PROBES[name].func for name in sorted(PROBES))
def test_probe_contract(probe, check):
    check(probe)


# -- a user's own probe passes the same checks ----------------------------------------------------


@wb.probe("tests.mean_margin", tags=wb.Tags(inputs="pair", uses=("mode", "params")))
def mean_margin(model, loss_fn, data, *, ctx):
    """Mean of the top-1 minus top-2 logit over the data."""
    obj = ctx.objective()
    total = 0.0
    for x, _, _n in obj.batches():
        with torch.no_grad():
            top = torch.topk(obj.call(x), 2, dim=1).values
        total += float((top[:, 0] - top[:, 1]).sum())
    return xr.DataArray(total / obj.data.n, name="margin")


@parametrize_with_probe_checks([mean_margin])
def test_a_user_probe_passes_the_checks(probe, check):
    check(probe)


def _forward_once(model, data):
    x = data[0] if isinstance(data, tuple) else next(iter(data))[0]
    with torch.no_grad(), wb.state.modes(model, "eval"):
        model(x)


def test_a_probe_that_writes_the_weights_fails_the_checks():
    @wb.probe("tests.writes_weights", tags=wb.Tags(inputs="pair", uses=()))
    def writes_weights(model, loss_fn, data, *, ctx):
        _forward_once(model, data)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)  # the guard undoes it; the no-copy check cannot, and says so
        return xr.DataArray(0.0)

    try:
        with pytest.raises(Exception, match="WORKBENCH_SNAPSHOT_MB"):
            check_probe(writes_weights)
    finally:
        wb.registry.PROBES.pop("tests.writes_weights")


def test_the_decorator_isolates_a_body_that_reseeds_the_global_rngs():
    import random

    import numpy as np

    @wb.probe("tests.reseeds", tags=wb.Tags(inputs="pair", uses=()))
    def reseeds(model, loss_fn, data, *, ctx):
        _forward_once(model, data)
        random.seed(1)
        np.random.seed(1)
        torch.manual_seed(1)
        return xr.DataArray(float(torch.rand(())))

    try:
        check_probe(reseeds)  # the global RNG check passes: the decorator restored all three
        assert float(reseeds(*wb.testing.hostile_case())) == float(
            torch.rand((), generator=torch.Generator().manual_seed(1))
        )
    finally:
        wb.registry.PROBES.pop("tests.reseeds")


def test_an_unused_tail_keyword_is_refused_by_name():
    m, lf, d = wb.testing.hostile_case()
    with pytest.raises(ValueError, match="^seed: evaluate does not use 'seed'"):
        wb.evaluate(m, lf, d, seed=3)
    with pytest.raises(ValueError, match="^mode: expected 'eval'"):
        wb.evaluate(m, lf, d, mode="test")
