"""Torch function modes (the attention capture is one) that an interrupt could leave active.

A Ctrl-C that lands inside a ``TorchFunctionMode``'s ``__enter__`` after the push, or inside its ``__exit__``
before the pop, leaves the mode on this thread's stack, where it intercepts every later torch call. The
``@probe`` decorator drops workbench's own stale modes when a probe starts and every mode the probe left above
the depth it found when it returns.
"""

from __future__ import annotations

import torch

from .state import run_shielded


def function_mode_depth() -> int:
    """The depth of this thread's stack of ``torch.overrides.TorchFunctionMode`` s (attention capture is one)."""
    return torch._C._len_torch_function_stack()


def drop_function_modes(depth: int) -> None:
    """Pop this thread's torch function modes above ``depth``: a Ctrl-C that lands inside a mode's
    ``__enter__`` (after the push) or ``__exit__`` (before the pop) would otherwise leave it active for every
    later call. Shielded from a second Ctrl-C; the stack is thread-local, so only this probe's modes go.

    >>> d = function_mode_depth()
    >>> torch.overrides.TorchFunctionMode().__enter__() is not None, function_mode_depth() - d
    (True, 1)
    >>> drop_function_modes(d); function_mode_depth() - d
    0
    """

    def pop():
        while torch._C._len_torch_function_stack() > depth:
            torch._C._pop_torch_function_stack()

    if torch._C._len_torch_function_stack() > depth:
        run_shielded(pop)


def drop_stale_modes() -> None:
    """Pop workbench's own function modes (``workbench_owned``, the attention capture) from the top of this
    thread's stack. Called when a probe starts: a capture is only legitimately active inside a model's forward,
    never around a probe call, so one found there was left by an interrupt (a user's own modes stay)."""

    def pop():
        while torch._C._len_torch_function_stack():
            top = torch._C._get_function_stack_at(torch._C._len_torch_function_stack() - 1)
            if not getattr(top, "workbench_owned", False):
                return
            torch._C._pop_torch_function_stack()

    run_shielded(pop)
