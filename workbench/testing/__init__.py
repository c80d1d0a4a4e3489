"""Public testing tools: the probe contract checks and the hostile models they run on.

A probe of your own passes the same checks as workbench's::

    from workbench.testing import parametrize_with_probe_checks

    @parametrize_with_probe_checks([my_probe])
    def test_my_probe(probe, check):
        check(probe)

:mod:`workbench.testing.interrupts` sends real Ctrl-C (``SIGINT``) at chosen moments of a call
(:func:`interrupt_call`) and says whether the interrupt reached the caller and what was left changed.
"""

from .checks import CHECKS, case_of, check_probe, default_case, parametrize_with_probe_checks, probe_checks
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
]
