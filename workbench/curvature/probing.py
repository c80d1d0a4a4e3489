"""Random probe vectors and product guards for the torch-native linear algebra of :mod:`workbench.curvature`."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

CHUNK = 1 << 20  # signs drawn per numpy call: 8 MiB of int64 at a time, whatever P


def rademacher(
    rng: np.random.Generator,
    shape: int | tuple[int, ...],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Independent random signs +-1 of ``shape`` drawn from ``rng``, as a torch tensor on ``device`` (default
    CPU) in ``dtype``.

    The signs are ``2 rng.integers(0, 2) - 1`` in row-major order, drawn in chunks of 2^20 (the same stream as
    one ``rng.integers(0, 2, size=shape)`` call, so seeded results do not depend on P's size or the chunking);
    they travel to ``device`` as int8 and become ``dtype`` there, so a float32 P = 10^8 draw never holds a
    float64 P-vector (peak host memory: P bytes plus one chunk).

    >>> import numpy as np
    >>> from workbench.curvature import rademacher
    >>> rademacher(np.random.default_rng(0), 4).tolist()
    [1.0, 1.0, 1.0, -1.0]
    """
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    n = math.prod(shape)
    bits = torch.empty(n, dtype=torch.int8)
    out = bits.numpy()
    for s in range(0, n, CHUNK):
        out[s : s + CHUNK] = rng.integers(0, 2, size=min(CHUNK, n - s))
    signs = bits.to(device if device is not None else "cpu").to(dtype)
    return signs.mul_(2).sub_(1).reshape(shape)


def finite_products(fn: Callable, obj) -> Callable:
    """``fn`` (a mat-vec or mat-mat of a curvature operator of the Objective ``obj``, on torch tensors or numpy
    arrays) that raises a clear error instead of returning NaN or inf products (which would reach the linear
    algebra as a LinAlgError or a NaN result): a non-finite loss is named as such
    (:meth:`~workbench.objective.Objective.loss`), else the second derivatives themselves are non-finite.

    >>> import torch
    >>> finite_products(lambda v: 2 * v, None)(torch.ones(2)).tolist()
    [2.0, 2.0]
    """

    def checked(v):
        out = fn(v)
        ok = bool(torch.isfinite(out).all()) if isinstance(out, torch.Tensor) else bool(np.all(np.isfinite(out)))
        if not ok:
            if obj is not None:
                obj.loss()  # raises, naming the data, when the loss itself is not finite
            raise ValueError(
                "model: a Hessian-vector product has NaN or inf entries while the loss is finite: the loss is not "
                "twice differentiable at the parameters or its second derivatives overflow (check the model's "
                "weights and non-smooth operations)"
            )
        return out

    return checked


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """``a^T b`` by ``torch.sum`` of the products: a cascade (CPU) or tree (CUDA) reduction, accurate to about
    ``1e-7`` relative in float32 at P = 10^7, where BLAS ``dot`` and ``vector_norm`` accumulate float32
    sequentially on the CPU (``1e-4`` there, ``1e-3`` at 4 10^7 for same-sign terms such as ``||w||^2``).

    >>> inner(torch.ones(3), torch.tensor([1.0, 2.0, 3.0]))
    6.0
    """
    return float((a * b).sum())


def norm(a: torch.Tensor) -> float:
    """``||a||_2`` as ``sqrt(inner(a, a))`` (:func:`inner`).

    >>> norm(torch.tensor([3.0, 4.0]))
    5.0
    """
    return math.sqrt(inner(a, a))


BASES = ("auto", "float64", "float32", "host-float64", "host-float32")
BLOCK_BYTES = 256 << 20  # a basis block moved or cast to the working device at a time
DOT_BLOCK = 4096  # entries per float32 partial product on the CPU (KrylovBasis.coefficients)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the solvers accumulate in for an operator of ``dtype``: float64 for float64, else float32
    (bf16 / fp16 products are promoted; dot products and norms are never accumulated in less than float32).

    >>> working_dtype(torch.bfloat16), working_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def free_memory(device: torch.device | str) -> int:
    """Bytes free on ``device``: ``torch.cuda.mem_get_info`` on CUDA, else the host's available memory
    (``MemAvailable`` of /proc/meminfo, or ``os.sysconf`` where that is missing).

    >>> free_memory("cpu") > 0
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def resolve_basis(basis: str, P: int, m: int, device: torch.device | str, dtype: torch.dtype) -> str:
    """The storage of an ``m``-vector Krylov basis of length ``P`` for an operator on ``device`` in ``dtype``.

    ``basis`` other than ``"auto"`` is returned as it is (``"float64"``, ``"float32"``: on the device;
    ``"host-float64"``, ``"host-float32"``: in host memory, pinned when the device is CUDA). ``"auto"``: the
    working precision (:func:`working_dtype`) on the device if ``m P bytes`` fits in half its free memory,
    else in host memory if it fits in half of that, else the same in float32; the last candidate when none fits.

    >>> resolve_basis("auto", 1000, 10, "cpu", torch.float32), resolve_basis("host-float64", 10, 2, "cuda", torch.half)
    ('float32', 'host-float64')
    """
    if basis not in BASES:
        raise ValueError(f"basis: expected one of {', '.join(map(repr, BASES))}, got {basis!r}")
    if basis != "auto":
        return basis
    device = torch.device(device)
    names = ["float64", "float32"] if working_dtype(dtype) == torch.float64 else ["float32"]
    hosts = [False] if device.type == "cpu" else [False, True]
    cands = [(h, name) for name in names for h in hosts]
    for host, name in cands:
        need = m * P * (8 if name == "float64" else 4)
        if need <= 0.5 * free_memory("cpu" if host else device):
            return ("host-" if host else "") + name
    host, name = cands[-1]
    return ("host-" if host else "") + name


class KrylovBasis:
    """Up to ``m`` vectors of length ``P`` kept as the rows of an ``(m, P)`` tensor in the storage named by
    ``basis`` (:func:`resolve_basis`), used on ``device`` in ``dtype`` (the working precision).

    Products with the stored vectors run block by block (at most 256 MiB moved or cast to the working device
    at a time; a basis already there in the working dtype is used in one block, without a copy). ``reads``
    counts the stored vectors read back (the basis operations of a solver).

    >>> import torch
    >>> B = KrylovBasis(3, 2, "cpu", torch.float32, "host-float64")
    >>> B.append(torch.tensor([1.0, 0.0, 0.0])); w = torch.tensor([2.0, 3.0, 0.0])
    >>> B.project_out(w).tolist(), B.kind, B.reads
    ([0.0, 3.0, 0.0], 'host-float64', 1)
    """

    def __init__(self, P: int, m: int, device: torch.device | str, dtype: torch.dtype, basis: str = "auto"):
        self.device, self.dtype = torch.device(device), dtype
        self.kind = resolve_basis(basis, P, m, self.device, dtype)
        host = self.kind.startswith("host-")
        store = torch.float64 if self.kind.endswith("float64") else torch.float32
        pin = host and self.device.type == "cuda"
        self.rows = torch.empty((m, P), dtype=store, device="cpu" if host else self.device, pin_memory=pin)
        self.n = 0
        self.reads = 0

    def append(self, q: torch.Tensor) -> None:
        self.rows[self.n].copy_(q)
        self.n += 1

    def matrix(self) -> torch.Tensor:
        """The stored vectors as the columns of a ``(P, n)`` view."""
        return self.rows[: self.n].T

    def blocks(self):
        """(first row, block of rows on the working device in the working dtype) over the stored vectors."""
        R = self.rows[: self.n]
        if R.device == self.device and R.dtype == self.dtype:
            yield 0, R
        else:
            step = max(1, BLOCK_BYTES // max(1, R.shape[1] * R.element_size() * 2))
            for s in range(0, self.n, step):
                yield s, R[s : s + step].to(self.device, non_blocking=True).to(self.dtype)
        self.reads += self.n

    def coefficients(self, C: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``C w`` for a block ``C`` of stored vectors. float32 on the CPU: partial products over 4096 entries
        summed in float64 (BLAS sgemv accumulates sequentially: 1e-3 relative errors at P = 10^7 ruin the
        orthogonality, 1e-8 this way at the same speed); CUDA's reductions and float64 need no help."""
        if self.dtype == torch.float64 or w.device.type != "cpu" or w.shape[0] <= DOT_BLOCK:
            return C @ w
        out = torch.zeros(C.shape[0], dtype=torch.float64)
        for s in range(0, w.shape[0], DOT_BLOCK):
            out += (C[:, s : s + DOT_BLOCK] @ w[s : s + DOT_BLOCK]).double()
        return out.to(self.dtype)

    def project_out(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` minus its components along the stored vectors, in place, by block Gram-Schmidt (one read)."""
        for _, C in self.blocks():
            w.sub_(C.T @ self.coefficients(C, w))
        return w

    def combine(self, S: np.ndarray) -> torch.Tensor:
        """``Q S`` (``(P, k)``, working device and dtype) for coefficients ``S`` of shape ``(n, k)``."""
        St = torch.as_tensor(np.asarray(S)[: self.n], device=self.device, dtype=self.dtype)
        Y = torch.zeros(self.rows.shape[1], St.shape[1], device=self.device, dtype=self.dtype)
        for s, C in self.blocks():
            Y.addmm_(C.T, St[s : s + C.shape[0]])
        return Y
