"""The bad-input fuzz over every registered probe (:mod:`workbench.testing.fuzz`): each bad value of each
argument, each kind of bad data, loss and model is either a clear error naming the argument or the
reference result; never a crash inside a dependency, never a silently wrong result."""

import pytest

from workbench.registry import probes
from workbench.testing.fuzz import OUTCOMES, FuzzCase, fuzz, fuzz_cases, run_case
from workbench.testing.fuzz_variants import OneShot


@pytest.fixture(scope="module")
def report():
    return fuzz(timeout=10.0)


def test_every_probe_gets_a_clear_error_or_the_right_result(report, capsys):
    with capsys.disabled():
        print("\n" + report.table())
    counts = report.counts()
    assert len(report.results) >= 800
    assert {r.case.probe for r in report.results} == {
        n for n, i in probes().items() if i.func.__module__.startswith("workbench.")
    }
    bad = [f"{r.outcome}: {r.case.probe} {r.case.target}={r.case.variant}: {r.detail}" for r in report.failures()]
    assert bad == [], "\n".join(bad[:40])
    assert counts["deep_crash"] == 0 and counts["silent_wrong"] == 0
    assert counts["clear_error"] > 0 and counts["ok"] > 0


def test_the_fuzz_covers_every_kind_of_bad_input(report):
    variants = {r.case.variant for r in report.results}
    for v in (
        "negative",
        "zero",
        "huge",
        "NaN",
        "inf",
        "bool",
        "non-integral float",
        "wrong string",
        "NaN inputs",
        "empty",
        "int32 labels",
        "float labels",
        "list labels",
        "labels out of range",
        "NaN labels",
        "a generator",
        "a one-shot IterableDataset",
        "mismatched lengths",
        "wrong feature count",
        "no parameters",
        "mixed dtypes (a float64 layer)",
    ):
        assert v in variants, v


def test_the_classification_can_fail():
    """A silently wrong probe is caught: a one-shot dataset given to a probe that cannot tell is
    ``silent_wrong``; a torch crash is ``deep_crash``."""
    import workbench as wb

    info = probes()["evaluate"]
    base = dict(zip(("model", "loss_fn", "data"), wb.testing.hostile_case()))
    reference = info.func(**base, progress=False)
    x, y = base["data"]

    def case(variant, expect, data):
        return FuzzCase("evaluate", "data", variant, expect, lambda: {**base, "data": data})

    assert run_case(case("valid pair", "equal", (x, y)), reference).outcome == "ok"
    wrong = run_case(case("other labels", "equal", (x, (y + 1) % 3)), reference)
    assert wrong.outcome == "silent_wrong" and "differs" in wrong.detail
    assert run_case(case("generator", "error", OneShot([(x, y)])), reference).outcome == "clear_error"
    crash = FuzzCase("evaluate", "loss_fn", "bad loss", "error", lambda: {**base, "loss_fn": lambda o, t: o @ t})
    assert run_case(crash, reference).outcome == "deep_crash"
    accepted = FuzzCase("evaluate", "data", "accepted", "error", lambda: base)
    assert run_case(accepted, reference).outcome == "silent_wrong"


def test_cases_are_generated_from_the_signature():
    cases = fuzz_cases(probes()["curvature.hessian_trace"])
    targets = {c.target for c in cases}
    assert {"n_hvp", "method", "rtol", "max_hvp", "confidence", "engine", "data", "model", "loss_fn"} <= targets
    assert all(c.expect in ("error", "equal", "valid") for c in cases)
    assert set(OUTCOMES) == {"clear_error", "deep_crash", "silent_wrong", "ok"}
