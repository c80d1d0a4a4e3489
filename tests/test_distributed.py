"""Data-parallel curvature over torch.distributed: two CPU processes on the gloo backend, each with half of
the data, give the single-process values (the products are all-reduced with sample weights)."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workbench.curvature import hessian_eigenvalues, hessian_trace, spectral_density


def _setup():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(37, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (37,), generator=g)
    return model, torch.nn.CrossEntropyLoss(), x, y


def _probes(model, lf, data, group):
    kw = dict(progress=False, seed=3, group=group)
    ev = hessian_eigenvalues(model, lf, data, k=3, tol=1e-9, **kw)["eigenvalue"].values
    ggn = hessian_eigenvalues(model, lf, data, k=3, tol=1e-9, curvature="ggn", **kw)["eigenvalue"].values
    tr = float(hessian_trace(model, lf, data, n_hvp=30, **kw))
    nodes = spectral_density(model, lf, data, n_runs=1, n_lanczos=8, **kw).attrs["slq_nodes"]
    return np.r_[ev, ggn, tr, nodes]


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, lf, x, y = _setup()
        cut = 20  # uneven shards: 20 and 17 samples, in batches of 8
        xs, ys = (x[:cut], y[:cut]) if rank == 0 else (x[cut:], y[cut:])
        data = [(xs[i : i + 8], ys[i : i + 8]) for i in range(0, len(ys), 8)]
        np.save(f"{out}/rank{rank}.npy", _probes(model, lf, data, True))
        dist.barrier()  # no rank tears its group down while the other still talks to it
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    model, lf, x, y = _setup()
    single = _probes(model, lf, (x, y), None)
    r0, r1 = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    np.testing.assert_array_equal(r0, r1)  # every rank receives the same all-reduced products
    np.testing.assert_allclose(r0, single, rtol=1e-6, atol=1e-9)
    assert abs(single[0]) > 1e-3  # a real spectrum, not zeros


def test_group_without_an_initialised_process_group_is_a_clear_error():
    model, lf, x, y = _setup()
    with pytest.raises(ValueError, match="group: data-parallel curvature needs torch.distributed initialised"):
        hessian_eigenvalues(model, lf, (x, y), k=2, group=True, progress=False)
