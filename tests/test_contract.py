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
    assert {"evaluate", "landscape.slice_1d", "landscape.slice_2d", "landscape.interpolate", "attention.entropy",
            "curvature.hessian_eigenvalues", "sharpness.sam_sharpness", "attention.attention_map"} <= set(PROBES)


@parametrize_with_probe_checks(PROBES[name].func for name in sorted(PROBES))
def test_probe_contract(probe, check):
    check(probe)


# -- a user's own probe passes the same checks ----------------------------------------------------

@wb.probe("tests.mean_margin", tags=wb.Tags(inputs="pair", uses=("mode", "params")))
def mean_margin(model, loss_fn, data, *, ctx):
    """Mean of the top-1 minus top-2 logit over the data."""
    obj = ctx.objective()
    total = 0.0
    for x, _, n in obj.batches():
        top = torch.topk(obj.call(x), 2, dim=1).values
        total += float((top[:, 0] - top[:, 1]).sum())
    return xr.DataArray(total / obj.data.n, name="margin")


@parametrize_with_probe_checks([mean_margin])
def test_a_user_probe_passes_the_checks(probe, check):
    check(probe)


def test_a_broken_probe_fails_the_checks():
    @wb.probe("tests.writes_weights", tags=wb.Tags(inputs="pair", uses=()))
    def writes_weights(model, loss_fn, data, *, ctx):
        with torch.no_grad():
            next(model.parameters()).add_(1.0)  # harms the model: the guard undoes it, the no-copy check sees it
        return xr.DataArray(0.0)

    @wb.probe("tests.reseeds", tags=wb.Tags(inputs="pair", uses=()))
    def reseeds(model, loss_fn, data, *, ctx):
        import random

        random.seed(1)  # the Python RNG is outside the guard's torch/numpy isolation? it is restored too
        return xr.DataArray(0.0)

    with pytest.raises(Exception, match="WORKBENCH_SNAPSHOT_MB|modified in place"):
        check_probe(writes_weights)
    check_probe(reseeds)  # restored by the decorator: passes
    for name in ("tests.writes_weights", "tests.reseeds"):
        PROBES.pop(name, None)
        wb.registry.PROBES.pop(name, None)
