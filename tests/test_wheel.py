"""workbench as a user installs it: the wheel built from this checkout, installed into a fresh venv outside
the checkout, runs ``workbench report model_report`` with the demo zoo in a temporary ``WORKBENCH_CACHE``.

The fresh venv borrows the dev venv's installed dependencies (torch and the rest, no network) through a
``.pth`` line naming the dev site-packages. ``.pth`` files inside a directory named that way are not read,
so the checkout's editable-install hook (``_editable_impl_workbench.pth``) stays out (and so do the dev venv's
kernels: only nbconvert's templates are linked in, as pip would have installed them into the venv): ``import workbench``
must come from the fresh venv's own site-packages, which the test asserts. The report notebooks and the
text task come from the wheel's package data; the zoo cache, the outputs and nothing else are written
where the test says.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nbformat
import pytest

import workbench as wb

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(steps=4, seeds=2, n_hvp=12, n_samples=300)  # as tests/test_reports.py
# built by the installed wheel itself (seconds each); the rest of the zoo is copied from the suite's cache
BUILT_BY_THE_WHEEL = ["mlp-sgd-small-s1", "mlp-sgd-small-s2", "src-mlp-untrained"]

PROBE = """
import json, sys, workbench, workbench.reports as r, workbench.zoo as z
from jupyter_client.kernelspec import KernelSpecManager
texts, labels = z.text_topics()
print(json.dumps(dict(
    workbench=workbench.__file__, reports_dir=str(r.REPORTS_DIR), reports=sorted(r.available()),
    cache=str(z.cache_dir()), texts=len(texts), python=sys.executable,
    kernel_python=KernelSpecManager().get_kernel_spec(r.kernel_name()).argv[0])))
"""


def _run(cmd, cwd, env, timeout=240):
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_wheel_installs_outside_the_checkout_and_runs_a_report(tmp_path, zoo_built):
    assert not tmp_path.resolve().is_relative_to(ROOT), "the fresh install must live outside the checkout"
    # the wheel, built offline from the checkout (hatchling comes with the dev extra)
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "whl", ROOT],
        tmp_path,
        None,
    )
    (whl,) = (tmp_path / "whl").glob("workbench-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for f in [
        "workbench/zoo/text_topics.csv",
        *(f"workbench/reports/notebooks/{n}.ipynb" for n in wb.reports.available()),
    ]:
        assert f in names, f"{f} is not in the wheel"

    # a fresh venv whose only extra path is the dev venv's site-packages (dependencies, not the editable hook)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, None)
    py = venv / "bin" / "python"
    fresh_site = Path(
        _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, None).strip()
    )
    dev_site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (fresh_site / "_workbench_test_deps.pth").write_text("\n".join(sorted(dev_site)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", whl], tmp_path, None)
    # the borrowed dependencies' data files that pip would have put under the venv's share/ (nbconvert's templates)
    (venv / "share" / "jupyter").mkdir(parents=True)
    (venv / "share" / "jupyter" / "nbconvert").symlink_to(Path(sys.prefix) / "share" / "jupyter" / "nbconvert")
    installed = _files(fresh_site / "workbench")

    cache, work = tmp_path / "cache", tmp_path / "work"
    (cache / "zoo").mkdir(parents=True)
    work.mkdir()
    for f in zoo_built.cache_dir().glob("*.pt"):
        if f.stem not in BUILT_BY_THE_WHEEL:
            shutil.copy2(f, cache / "zoo" / f.name)
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "JUPYTER_PATH", "WORKBENCH_DATA")
    }
    env.update(
        WORKBENCH_CACHE=str(cache),
        JUPYTER_DATA_DIR=str(tmp_path / "jupyter"),  # no user-level kernel named workbench pointing elsewhere
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
    )

    got = json.loads(_run([py, "-c", PROBE], work, env).strip().splitlines()[-1])
    assert Path(got["workbench"]).parent == fresh_site / "workbench", got  # the wheel's copy, not the checkout's
    assert Path(got["reports_dir"]) == fresh_site / "workbench" / "reports" / "notebooks"
    assert got["reports"] == sorted(wb.reports.available())
    assert got["cache"] == str(cache / "zoo") and got["texts"] == 160
    assert got["kernel_python"] == got["python"] == str(py), got  # the report's kernel runs the fresh venv

    args = [x for k, v in SMALL.items() for x in ("-p", k, str(v))]
    out = _run([venv / "bin" / "workbench", "report", "model_report", *args, "--out", "out"], work, env, timeout=300)
    assert "report model_report:" in out, out

    # outputs only where the user said; the zoo only in WORKBENCH_CACHE; nothing written into the package
    assert _files(work) == {f"out/model_report.{e}" for e in ("ipynb", "html", "nc")}
    for n in BUILT_BY_THE_WHEEL:
        assert (cache / "zoo" / f"{n}.pt").is_file(), n
    assert _files(fresh_site / "workbench") == installed
    assert not (ROOT / "out").exists()

    ds = wb.load(work / "out" / "model_report.nc")
    assert json.loads(ds.attrs["report_params"])["steps"] == 4
    assert float(ds["loss"]) < 0.02 and float(ds["lambda_max"]) > 0
    nb = nbformat.read(str(work / "out" / "model_report.ipynb"), as_version=4)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
