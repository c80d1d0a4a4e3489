"""Public testing tools: the probe contract checks and the hostile models they run on.

A probe of your own passes the same checks as workbench's::

    from workbench.testing import parametrize_with_probe_checks

    @parametrize_with_probe_checks([my_probe])
    def test_my_probe(probe, check):
        check(probe)

:mod:`workbench.testing.interrupts` sends real Ctrl-C (``SIGINT``) at chosen moments of a call
(:func:`interrupt_call`) and says whether the interrupt reached the caller and what was left changed.

:mod:`workbench.testing.fuzz` feeds every registered probe bad inputs generated from its signature and
tags (:func:`fuzz_probes`, :func:`check_bad_inputs`) and classifies each outcome: a clear error naming the
argument, a crash inside a dependency, a silently wrong result, or the right result.
"""

from .checks import CHECKS, case_of, check_probe, default_case, parametrize_with_probe_checks, probe_checks
from .fuzz import OUTCOMES, FuzzCase, FuzzReport, FuzzResult, check_bad_inputs, fuzz_cases, run_case
from .fuzz import fuzz as fuzz_probes  # the module keeps its name: workbench.testing.fuzz
from .interrupts import After, AtCall, AtLine, DeliveredInterrupt, Outcome, Watch, interrupt_call, under_functorch
from .models import (
    HostileNet,
    HostileTransformer,
    Trap,
    hostile_case,
    hostile_data,
    hostile_model,
    hostile_transformer,
    tiny_classifier,
)

__all__ = [
    "CHECKS",
    "check_probe",
    "parametrize_with_probe_checks",
    "probe_checks",
    "case_of",
    "default_case",
    "HostileNet",
    "HostileTransformer",
    "Trap",
    "hostile_case",
    "hostile_data",
    "hostile_model",
    "hostile_transformer",
    "tiny_classifier",
    "After",
    "AtCall",
    "AtLine",
    "DeliveredInterrupt",
    "Outcome",
    "Watch",
    "interrupt_call",
    "under_functorch",
    "OUTCOMES",
    "FuzzCase",
    "FuzzReport",
    "FuzzResult",
    "check_bad_inputs",
    "fuzz_probes",
    "fuzz_cases",
    "run_case",
]
