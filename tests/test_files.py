"""Files under damage and death: real SIGKILLed writers, truncated and flipped files, modes, symlinks."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import xarray as xr

import workbench as wb
from workbench.results import DamagedFileError, clean_stale_temps
from workbench.results.files import CHECKSUM_ATTR, STALE_AFTER_S, atomic_write, temp_path


def _temps(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".tmp"))


def _writer(path, n: int, mode: str) -> subprocess.Popen:
    """A process that saves ``path`` over and over (``loop``: every file all i, i = 0, 1, ...) or once after
    pausing inside the write with a half-written temporary file (``pause``); prints ``ready`` first."""
    code = textwrap.dedent(f"""
        import sys, time, numpy as np, xarray as xr, workbench as wb
        from workbench.results import files
        path, n = {str(path)!r}, {n}
        if {mode!r} == "pause":
            def write(tmp):
                open(tmp, "wb").write(b"half a netCDF file" * 100_000)
                print("ready", flush=True)
                time.sleep(60)
            print(files.atomic_write(path, write))
        print("ready", flush=True)
        i = 0
        while True:
            wb.save(xr.DataArray(np.full(n, float(i)), dims="x", name="v", attrs={{"i": i}}), path)
            i += 1
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_sigkill_mid_save_never_breaks_the_target_and_the_next_save_cleans_up(tmp_path):
    path = tmp_path / "r.nc"
    wb.save(xr.DataArray(np.zeros(4), dims="x", name="v"), path)
    p = _writer(path, 0, "pause")  # killed with its temporary file half-written
    assert len(_temps(tmp_path)) == 1
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    (left,) = _temps(tmp_path)
    assert f"-{p.pid}-" in left and os.path.getsize(tmp_path / left) > 1_000_000  # the leftover names its writer
    assert float(wb.load(path).sum()) == 0.0  # the target is intact, and loading into the folder cleaned up
    assert _temps(tmp_path) == []
    rng = np.random.default_rng(0)
    for _ in range(4):  # real saves (write, checksum, fsync, rename) killed at random moments
        p = _writer(path, 2_000_000, "loop")
        time.sleep(float(rng.uniform(0.05, 1.5)))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        back = wb.load(path)  # verified: never half-written
        assert back.size in (4, 2_000_000) and np.unique(back.values).size == 1
        assert _temps(tmp_path) == []  # load cleaned what the dead writer left
    p = _writer(path, 2_000_000, "loop")
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    wb.save(xr.DataArray([1.0], dims="x", name="v"), path)  # the next save cleans up too
    assert _temps(tmp_path) == [] and wb.load(path).values.tolist() == [1.0]


def test_temps_of_live_writers_and_other_files_are_kept(tmp_path):
    (tmp_path / "r.nc").write_bytes(b"x")
    live = temp_path(tmp_path / "r.nc")  # this process: alive
    live.write_bytes(b"in progress")
    other = tmp_path / ".notes.tmp"
    other.write_bytes(b"not ours")
    legacy_young = tmp_path / ".r.nc.ab12cd34.tmp"  # an earlier version's mkstemp leftover
    legacy_young.write_bytes(b"old")
    legacy_orphan = tmp_path / ".gone.nc.ab12cd35.tmp"  # its target does not exist: not clearly ours
    legacy_orphan.write_bytes(b"old")
    assert clean_stale_temps(tmp_path) == []
    old = time.time() - STALE_AFTER_S - 60
    for f in (live, other, legacy_young, legacy_orphan):
        os.utime(f, (old, old))
    assert sorted(p.name for p in clean_stale_temps(tmp_path)) == sorted([live.name, legacy_young.name])
    assert other.exists() and legacy_orphan.exists()


def test_a_killed_atomic_write_of_any_file_is_cleaned_on_the_next_write(tmp_path):
    code = textwrap.dedent(f"""
        import os, signal
        from workbench.results.files import atomic_write
        def write(tmp):
            open(tmp, "wb").write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(tmp_path / "model.pt")!r}, write)
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    assert len(_temps(tmp_path)) == 1 and not (tmp_path / "model.pt").exists()
    atomic_write(tmp_path / "model.pt", lambda tmp: open(tmp, "wb").write(b"weights"))
    assert os.listdir(tmp_path) == ["model.pt"]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_overwriting_keeps_the_mode(tmp_path, mode):
    path = tmp_path / "r.nc"
    wb.save(xr.DataArray([1.0], dims="x"), path)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # a new file: what open() gives
    os.chmod(path, mode)
    wb.save(xr.DataArray([2.0], dims="x"), path)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode and wb.load(path).values.tolist() == [2.0]


def test_a_symlink_is_written_through(tmp_path):
    real_dir = tmp_path / "store"
    real_dir.mkdir()
    real = real_dir / "r.nc"
    wb.save(xr.DataArray([1.0], dims="x"), real)
    os.chmod(real, 0o600)
    link = tmp_path / "link.nc"
    link.symlink_to(os.path.relpath(real, tmp_path))  # relative, into another folder
    wb.save(xr.DataArray([5.0], dims="x"), link)
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(real, tmp_path)
    assert wb.load(real).values.tolist() == [5.0] and stat.S_IMODE(os.stat(real).st_mode) == 0o600
    assert _temps(tmp_path) == [] and _temps(real_dir) == []
    dangling = tmp_path / "later.nc"
    dangling.symlink_to(real_dir / "later.nc")
    wb.save(xr.DataArray([7.0], dims="x"), dangling)
    assert dangling.is_symlink() and wb.load(real_dir / "later.nc").values.tolist() == [7.0]


def test_concurrent_saves_stay_consistent(tmp_path):
    path = tmp_path / "r.nc"
    errors = []

    def work(k):
        try:
            for i in range(5):
                v = float(10 * k + i)
                wb.save(xr.DataArray(np.full(10_000, v), dims="x", name="v"), path)
                back = wb.load(path)
                assert np.unique(back.values).size == 1
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and _temps(tmp_path) == []
    assert np.unique(wb.load(path).values).size == 1


def _result():
    return xr.Dataset(
        {
            "loss": (("seed", "alpha"), np.random.default_rng(0).random((3, 50))),
            "tag": ("seed", ["a", "bb", "ccc"]),
        },
        coords={"alpha": np.linspace(-1, 1, 50)},
        attrs={"probe": "slice_1d", "seed": 3},
    )


def test_the_checksum_is_stored_verified_and_not_returned(tmp_path):
    path = wb.save(_result(), tmp_path / "r.nc")
    import h5py

    with h5py.File(path, "r") as f:
        assert str(f.attrs[CHECKSUM_ATTR]).startswith("workbench-sha256:")
    back = wb.load(path)
    assert back.identical(_result()) and CHECKSUM_ATTR not in back.attrs
    with h5py.File(path, "r+") as f:  # an attribute edited behind save's back
        f.attrs["seed"] = 4
    with pytest.raises(DamagedFileError, match=r"^path: .*r\.nc is damaged.*checksum does not match"):
        wb.load(path)
    assert wb.load(path, verify=False).attrs["seed"] == 4
    xr.Dataset({"v": ("x", [1.0])}).to_netcdf(tmp_path / "plain.nc", engine="h5netcdf")  # no checksum: unchecked
    assert wb.load(tmp_path / "plain.nc").v.values.tolist() == [1.0]


def test_a_truncated_file_gets_a_clear_error(tmp_path):
    path = wb.save(_result(), tmp_path / "r.nc")
    good = path.read_bytes()
    for n in (0, 7, 512, len(good) // 2, len(good) - 1):
        path.write_bytes(good[:n])
        for verify in (True, False):
            with pytest.raises(DamagedFileError, match=r"^path: .*r\.nc is damaged or truncated") as ei:
                wb.load(path, verify=verify)
            assert isinstance(ei.value, ValueError)


def test_every_flipped_byte_is_caught(tmp_path):
    """Each byte of a saved file flipped in turn (every 3rd, and the data): always a DamagedFileError naming the
    file, found from the bytes before HDF5 parses them (a flipped length in HDF5's global heap makes h5py
    loop forever); never a different result, never a raw h5py error."""
    path = wb.save(_result(), tmp_path / "r.nc")
    good, ref = path.read_bytes(), wb.load(path)
    data_at = good.find(ref.loss.values.tobytes()[:64])
    assert data_at > 0
    t0 = time.perf_counter()
    positions = sorted(set(range(0, len(good), 3)) | {data_at, data_at + 100, good.find(b"workbench-sha256:") + 20})
    for i in positions:
        b = bytearray(good)
        b[i] ^= 0xFF
        path.write_bytes(bytes(b))
        with pytest.raises(DamagedFileError, match=r"^path: .*r\.nc is damaged"):
            wb.load(path)
    assert (time.perf_counter() - t0) / len(positions) < 0.05
    b = bytearray(good)
    b[data_at] ^= 0xFF
    path.write_bytes(bytes(b))
    assert not wb.load(path, verify=False).identical(ref)  # unchecked: the damage goes through
    path.write_bytes(good)
    assert wb.load(path).identical(ref)
