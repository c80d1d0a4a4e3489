"""Files that are never half-written: atomic writes whose leftovers are cleaned, and netCDF checksums.

:func:`atomic_write` fills a temporary file in the target's folder, fsyncs it, renames it onto the
target and fsyncs the folder. The temporary name carries the writer's host and pid
(``.<name>.wb-<host>-<pid>-<random>.tmp``), so a temporary file left by a killed writer (SIGKILL, power
loss) is recognised and removed by the next write or load into that folder (:func:`clean_stale_temps`).
An overwritten file keeps its permission mode; a symlink is written through (the link stays a link).

:func:`stamp_checksum` stores a sha256 over every byte of a netCDF (HDF5) file in the file itself (its
attribute ``workbench_checksum``); :func:`verify_checksum` recomputes it from the bytes, before HDF5 parses
anything, and raises :class:`DamagedFileError` naming the file when they differ.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import secrets
import socket
import stat
import time
from pathlib import Path

__all__ = [
    "atomic_write",
    "clean_stale_temps",
    "temp_path",
    "STALE_AFTER_S",
    "CHECKSUM_ATTR",
    "DamagedFileError",
    "file_checksum",
    "stamp_checksum",
    "verify_checksum",
    "damaged",
]

#: a temporary file of a live writer on another host, or whose pid was reused, is removed once untouched this long
STALE_AFTER_S = 600.0
CHECKSUM_ATTR = "workbench_checksum"
_HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()
_TEMP = re.compile(r"^\.(?P<name>.+)\.wb-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]+\.tmp$")
_LEGACY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp names of earlier versions
_MARK = b"workbench-sha256:"  # the stored value: marker and 64 hex digits, found in the file's bytes
_ZEROS = b"0" * 64


class DamagedFileError(ValueError):
    """A file that cannot be read back as written: truncated, bytes changed, or not a netCDF file at all."""


def temp_path(target: str | os.PathLike) -> Path:
    """The temporary file an atomic write of ``target`` fills: same folder, hidden, named by host and pid.

    >>> temp_path("/tmp/r.nc").name.startswith(".r.nc.wb-")
    True
    """
    target = Path(target)
    return target.parent / f".{target.name}.wb-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no harmless probe of a pid: rely on the age rule
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that interrupted atomic writes left in ``folder``; returns those removed.

    A temporary file is stale when its writer (named in the file name) was a process of this host that is
    gone, or when nobody touched it for :data:`STALE_AFTER_S` seconds. A live writer's file is kept.
    Files named like ``tempfile.mkstemp`` temporaries of earlier versions (``.r.nc.abcd1234.tmp``) are
    removed only when older than that and their target exists. Other files are never touched.

    >>> import tempfile
    >>> clean_stale_temps(tempfile.mkdtemp())
    []
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return removed
    now = time.time()
    for e in entries:
        if not (e.name.startswith(".") and e.name.endswith(".tmp")):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        old = now - st.st_mtime > STALE_AFTER_S
        m = _TEMP.match(e.name)
        if m:
            stale = old or (m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])))
        else:
            legacy = _LEGACY.match(e.name)
            stale = bool(legacy) and old and os.path.exists(os.path.join(folder, legacy["name"]))
        if stale:
            try:
                os.unlink(e.path)
            except OSError:  # already removed by another cleaner, or not ours to remove
                continue
            removed.append(Path(e.path))
    return removed


def _fsync(path, flags: int = os.O_RDONLY) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:  # a folder cannot be opened on some platforms: nothing to flush there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write) -> Path:
    """Write a file atomically: ``write(tmp_path)`` fills a temporary file in the same folder, which is
    fsynced and renamed onto ``path`` (then the folder is fsynced); an interrupted write never leaves a
    broken or half-written ``path``, and its temporary file is removed (by the next write or load into
    the folder if the writer was killed). A new file gets the permissions a plain ``open()`` gives; an
    existing one keeps its mode; a symlink is written through, so the link stays a link.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    >>> _ = atomic_write(p, lambda tmp: pathlib.Path(tmp).write_text("hi"))
    >>> p.read_text()
    'hi'
    """
    path = Path(path)
    target = Path(os.path.realpath(path))  # through symlinks: the file the link points to is replaced
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target.parent)
    tmp = temp_path(target)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as for open()
    try:
        write(str(tmp))
        _fsync(tmp)
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))  # an overwritten file keeps its mode
        except FileNotFoundError:
            pass
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync(target.parent)
    return path


def _fields(buf) -> list[int]:
    """Offsets of the hex digits that follow each checksum marker in ``buf``."""
    out, i = [], buf.find(_MARK)
    while i >= 0:
        out.append(i + len(_MARK))
        i = buf.find(_MARK, i + 1)
    return out


def _digest(buf, fields: list[int]) -> str:
    h, pos = hashlib.sha256(), 0
    with memoryview(buf) as mv:
        for k in fields:
            h.update(mv[pos:k])
            h.update(_ZEROS)
            pos = k + len(_ZEROS)
        h.update(mv[pos:])
    return h.hexdigest()


def _mapped(path):
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return b""  # nothing to map
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def _close(buf) -> None:
    if isinstance(buf, mmap.mmap):
        buf.close()


def file_checksum(path: str | os.PathLike) -> str:
    """sha256 (hex) over every byte of ``path`` with the digits of its stored checksum read as zeros.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> file_checksum(p)[:16]
    'ba7816bf8f01cfea'
    """
    buf = _mapped(path)
    try:
        return _digest(buf, _fields(buf))
    finally:
        _close(buf)


def stamp_checksum(path: str | os.PathLike) -> str:
    """Store the sha256 of a netCDF4 (HDF5) file in its attribute ``workbench_checksum``; returns the digest.

    The attribute is written with zeros for digits, the digest computed over the whole file (those digits
    read as zeros, :func:`file_checksum`) and written over them in place, so that verifying reads bytes
    only: a damaged file is caught before HDF5 parses it (some damage makes HDF5 loop forever).
    """
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs[CHECKSUM_ATTR] = (_MARK + _ZEROS).decode()
    digest = file_checksum(path)
    buf = _mapped(path)
    try:
        ours = [k for k in _fields(buf) if buf[k : k + len(_ZEROS)] == _ZEROS]
    finally:
        _close(buf)
    if not ours:
        raise RuntimeError(f"path: the checksum placeholder written into {path} is not in its bytes")
    with open(path, "r+b") as fh:  # the digits overwritten in place: the file's layout does not change
        for k in ours:
            fh.seek(k)
            fh.write(digest.encode())
    return digest


def verify_checksum(path: str | os.PathLike) -> bool:
    """Check the checksum stored by :func:`stamp_checksum` against the bytes of ``path``: True when they
    match, False when the file stores none (written before checksums, or by another tool);
    :class:`DamagedFileError` naming the file when they differ or the file cannot be read."""
    import h5py

    try:
        buf = _mapped(path)
    except OSError as e:
        raise damaged(path, f"{type(e).__name__}: {e}") from e
    try:
        fields = _fields(buf)
        stored = {bytes(buf[k : k + len(_ZEROS)]).decode("ascii", "replace") for k in fields}
        actual = _digest(buf, fields) if fields else None
    finally:
        _close(buf)
    if not fields:  # no checksum, or its marker damaged: ask HDF5 whether the attribute is there
        try:
            with h5py.File(path, "r") as f:
                has = CHECKSUM_ATTR in f.attrs
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
            raise damaged(path, f"{type(e).__name__}: {e}") from e
        if has:
            raise damaged(path, "its stored checksum is unreadable")
        return False
    if actual not in stored:
        shown = ", ".join(sorted(v[:12] for v in stored))
        raise damaged(path, f"its checksum does not match its contents (stored {shown}..., now {actual[:12]}...)")
    return True


def damaged(path, why: str) -> DamagedFileError:
    """The error for a file that cannot be read back as written (its message names the file and the fix)."""
    return DamagedFileError(
        f"path: {path} is damaged or truncated and cannot be read back as written: {why}. Re-create it (re-run "
        "what wrote it) or restore a copy; load(path, verify=False) reads it without checking the checksum"
    )
