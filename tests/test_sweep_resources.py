"""Sweeps asking for worker resources (``resources={"GPU": 1}``, ``--resources GPU=1``) through dask's own
mechanism: parsing, the GPU-less error, real sweeps whose tasks the scheduler saw with the resource, and the
per-device local GPU cluster (with the device count faked: the workers' environment and declared resources
are real)."""

import importlib
import json
import warnings

import nbformat
import pytest
import torch
from dask.distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

import workbench as wb
from workbench import cli, reports
from workbench.reports import runner

sweep_mod = importlib.import_module("workbench.reports.sweep")  # the module (reports.sweep is the function)

BASE = dict(model="mlp-sam-s0", seeds=1, n_samples=100, reference=False)


@pytest.mark.parametrize(
    "text, want",
    [
        ("GPU=1", {"GPU": 1}),
        ("GPU=0.5,SLOT=2", {"GPU": 0.5, "SLOT": 2}),
        (" GPU = 1 , MEM=4e9", {"GPU": 1, "MEM": 4e9}),
    ],
)
def test_resources_are_parsed(text, want):
    got = sweep_mod.parse_resources(text)
    assert got == want and [type(v) for v in got.values()] == [type(v) for v in want.values()]


@pytest.mark.parametrize(
    "text", ["GPU", "GPU=", "=1", "GPU=x", "GPU=0", "GPU=-1", "GPU=nan", "GPU=inf", "GPU=1,GPU=2", ""]
)
def test_bad_resources_name_the_argument(text, capsys):
    with pytest.raises(ValueError, match=r"^resources: "):
        sweep_mod.parse_resources(text)
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "landscape", "--grid", "steps=3", "--resources", text])
    assert e.value.code == 2 and "argument --resources: " in capsys.readouterr().err


@pytest.mark.parametrize("bad, err", [({"GPU": "1"}, ValueError), ({"": 1}, ValueError), (["GPU"], TypeError)])
def test_bad_resources_in_the_api(bad, err, tmp_path):
    with pytest.raises(err, match=r"^resources: "):
        reports.sweep("landscape", {"steps": [3]}, tmp_path, resources=bad, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_gpu_requested_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"^resources: GPU requested but this machine has no CUDA device.*scheduler="):
        reports.sweep("landscape", {"steps": [3]}, tmp_path / "out", resources={"GPU": 1}, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing written, no cluster started
    code = cli.main(["sweep", "landscape", "--grid", "steps=3", "--out", str(tmp_path), "--resources", "GPU=1"])
    assert code == 2 and "workbench: --resources: GPU requested" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^resources: GPU=2: a local worker holds one GPU"):
        sweep_mod.start_cluster(1, {"GPU": 2})


class Restrictions(SchedulerPlugin):
    """Records the resource restrictions of every sweep point the scheduler sees (the scheduler runs in this
    process: the plugin is added directly, not pickled)."""

    def __init__(self, scheduler):
        self.scheduler, self.seen = scheduler, {}

    def transition(self, key, start, finish, *args, **kwargs):
        ts = self.scheduler.tasks.get(key)
        if ts is not None and "run_point" in str(key):
            self.seen[str(key)] = dict(ts.resource_restrictions or {})


def _record(cluster):
    plugin = Restrictions(cluster.scheduler)
    cluster.scheduler.add_plugin(plugin, name="restrictions")
    return plugin


def test_sweep_on_an_external_cluster_submits_points_with_the_resources(tmp_path, zoo_built):
    with LocalCluster(
        n_workers=2, threads_per_worker=1, dashboard_address=None, resources={"SLOT": 1}, env=reports.REPORT_ENV
    ) as cluster:
        seen = _record(cluster)
        res = reports.sweep(
            "landscape",
            {"steps": [3, 5]},
            tmp_path,
            base=BASE,
            scheduler=cluster.scheduler_address,
            resources={"SLOT": 1},
            progress=False,
        )
        with Client(cluster) as c:  # the workers declared it and hold none now (each point gave it back)
            held = c.run(lambda dask_worker: (dask_worker.state.total_resources, dask_worker.state.available_resources))
    assert [r["status"] for r in res["results"]] == ["ok", "ok"]
    assert len(seen.seen) == 2 and all(v == {"SLOT": 1} for v in seen.seen.values()), seen.seen
    assert all(h == ({"SLOT": 1}, {"SLOT": 1}) for h in held.values()), held
    ds = wb.load(res["dataset"])
    assert list(ds.steps.values) == [3, 5] and ds.alpha_1d.size == 5  # the real reports' results


def test_sweep_on_its_own_cluster_declares_and_submits_the_resources(tmp_path, zoo_built, monkeypatch):
    started = []

    def start(workers, resources=None):
        cluster = real(workers, resources)
        started.append((cluster, _record(cluster), resources))
        return cluster

    real = sweep_mod.start_cluster
    monkeypatch.setattr(sweep_mod, "start_cluster", start)
    res = reports.sweep(
        "landscape", {"steps": [3]}, tmp_path, base=BASE, workers=1, resources={"SLOT": 2}, progress=False
    )
    assert [r["status"] for r in res["results"]] == ["ok"]
    [(cluster, seen, asked)] = started
    assert asked == {"SLOT": 2} and list(seen.seen.values()) == [{"SLOT": 2}]


def test_a_scheduler_whose_workers_declare_nothing_gets_a_warning():
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as plain, Client(plain) as c:
        with pytest.warns(UserWarning, match=r"^resources: no worker of the scheduler at .* declares GPU=1 "):
            sweep_mod.warn_if_undeclared(c, plain.scheduler_address, {"GPU": 1})
    with LocalCluster(n_workers=0, dashboard_address=None) as empty, Client(empty) as c:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no worker yet: one may join, so no warning
            sweep_mod.warn_if_undeclared(c, empty.scheduler_address, {"GPU": 1})


def test_local_gpu_cluster_gives_each_worker_one_device(monkeypatch):
    """Two (faked) visible devices 5 and 7, three workers asked: two workers, each seeing its own device and
    declaring GPU=1 (and the other resources asked for)."""
    import os

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert sweep_mod.cuda_devices() == ["5", "7"]
    with sweep_mod.start_cluster(3, {"GPU": 1, "SLOT": 1}) as cluster, Client(cluster) as c:
        c.wait_for_workers(2)
        got = c.run(
            lambda dask_worker: (
                os.environ.get("CUDA_VISIBLE_DEVICES"),
                os.environ.get("WORKBENCH_THREADS"),
                dask_worker.state.total_resources,
            )
        )
        on = c.submit(lambda: os.environ["CUDA_VISIBLE_DEVICES"], resources={"GPU": 1}, pure=False).result()
    assert sorted(got.values()) == [("5", "1", {"GPU": 1, "SLOT": 1}), ("7", "1", {"GPU": 1, "SLOT": 1})]
    assert on in ("5", "7")


def test_gpu_points_run_with_device_cuda_where_the_report_has_a_device_parameter(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('device = "cpu"\nsteps = 3', metadata={"tags": ["parameters"]})]
    nbformat.write(nb, str(tmp_path / "dev.ipynb"))
    monkeypatch.setattr(runner, "REPORTS_DIR", tmp_path)
    gpu = {"GPU": 1}
    assert sweep_mod.gpu_params("dev", {"steps": 4}, {}, gpu) == {"steps": 4, "device": "cuda"}
    assert sweep_mod.gpu_params("dev", {"steps": 4}, {}, {}) == {"steps": 4}  # CPU: the report's default
    assert sweep_mod.gpu_params("dev", {"device": "cuda:1"}, {}, gpu) == {"device": "cuda:1"}  # the user's
    assert sweep_mod.gpu_params("dev", {}, {"device": ["cpu", "cuda"]}, gpu) == {}  # swept: left alone
    assert json.loads(runner.params_json(runner.effective_params("dev", {"device": "cuda"})))["device"] == "cuda"
