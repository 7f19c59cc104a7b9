"""Atomic file writes: a reader, or a crash mid-write, sees the old file or the complete new one.

One home for how outputs reach the disk:

* ``atomic_path`` / ``atomic_write_text``: one file, via a temp file ``.<name>.<pid>@<host>.<rand>.tmp``
  beside it, renamed into place when complete.
* ``atomic_paths``: several files that belong together (e.g. the info files of all splits): all
  temps are written first, then all renamed; a failure leaves every old file as it was.
* ``atomic_set``: a set of files and folders inside one output directory (a test run's results):
  staged in a hidden folder, then moved into place member by member; members the new set lacks
  are removed, so an old results file never stands beside new metrics.
* A full disk (ENOSPC / EDQUOT anywhere in the error chain, also under torch's "unexpected pos")
  becomes ``DiskFullError``: "no space left on <path>"; the old file stays intact.
* ``check_writable`` before long work; ``remove_stale_temps`` on start, for temps that an
  interrupted earlier run left behind (a temp whose writer is alive on this host is kept).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DiskFullError", "NotWritableError", "OutputError", "atomic_path", "atomic_paths", "atomic_set",
           "atomic_write_text", "check_writable", "pid_alive", "remove_stale_temps"]

_FULL = (errno.ENOSPC, errno.EDQUOT)
_OTHER_HOST_GRACE_S = 3600.0
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
# .<name>.<pid>@<host>.<random>.tmp for temp files and staging folders; older code wrote no pid@host
_TEMP_RE = re.compile(r"^\..+?\.(?:(\d+)@([A-Za-z0-9-]+)\.)?[^.]+\.tmp$")


class OutputError(OSError):
    """An output that cannot be written; ``str()`` is the plain one-line message (no '[Errno n]')."""

    def __init__(self, code: int, message: str, path: str | os.PathLike) -> None:
        super().__init__(code, message)
        self.path = str(path)

    def __str__(self) -> str:
        return str(self.strerror)


class DiskFullError(OutputError):
    """The disk (or quota) filled up while writing ``path``; what was there before is unchanged."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(errno.ENOSPC, f"no space left on {path} (free some space and re-run; "
                                       f"the previous file is unchanged)", path)


class NotWritableError(OutputError):
    """An output folder that cannot be created or written to."""


def _full_disk_cause(exc: BaseException | None) -> OSError | None:
    """The ENOSPC / EDQUOT error anywhere in the chain, or None. torch.save turns a failed write of
    its file object into RuntimeError('unexpected pos ...') with the OSError as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _is_disk_full(exc: BaseException) -> bool:
    return _full_disk_cause(exc) is not None


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}@{_HOST}."


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it completely inside the block. On success it
    is fsynced, made world-readable (mkstemp creates 0600) and renamed over ``path``; on any error
    it is removed and ``path`` is untouched (a full disk raises ``DiskFullError``)."""
    path = Path(path)
    with atomic_paths([path]) as (tmp,):
        yield tmp


@contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """``atomic_path`` for several files at once: all are renamed into place only after every one
    was written and fsynced; an error before that leaves all of ``paths`` untouched."""
    paths = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmps.append(Path(name))
        yield tmps
        for tmp in tmps:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
        for path, tmp in zip(paths, tmps):  # renames within a folder do not fail for want of space
            os.replace(tmp, path)
    except BaseException as e:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        if _is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(_full_path(e, paths)) from e
        raise


def _full_path(exc: BaseException, paths: list[Path]) -> Path:
    """The file being written when the disk filled (the one whose temp the error names), else
    the single target, else their folder."""
    cause = _full_disk_cause(exc)
    text = str(getattr(cause, "filename", "") or "")
    for path in paths:
        if text and f".{path.name}." in text:
            return path
    return paths[0] if len(paths) == 1 else paths[0].parent


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_set(out_dir: str | os.PathLike, members: Sequence[str]) -> Iterator[Path]:
    """Yield a staging folder inside ``out_dir``; write the set's ``members`` (file or folder names)
    there. On success each member replaces its old copy in ``out_dir`` and members missing from
    the new set are removed there; on any error the staging folder is removed and ``out_dir``
    keeps the previous complete set."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=_temp_prefix("results"), suffix=".tmp", dir=out_dir))
    try:
        yield stage
        for name in members:
            _swap_in(stage / name, out_dir / name)
    except BaseException as e:
        if _is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(out_dir) from e
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_in(new: Path, old: Path) -> None:
    """Move ``new`` (file or folder, or absent) to ``old``; the previous ``old`` goes away."""
    if new.is_dir():
        if old.exists():  # os.replace cannot replace a non-empty folder: move it aside first
            aside = old.with_name(f"{_temp_prefix(old.name)}old.tmp")
            os.replace(old, aside)
            os.replace(new, old)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(new, old)
    elif new.exists():
        os.replace(new, old)
    elif old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink(missing_ok=True)


def check_writable(directory: str | os.PathLike, what: str = "output directory") -> Path:
    """Create ``directory`` if needed and write a probe file there, before any long work starts.
    ``OSError`` naming the folder if that fails (read-only, permissions, full disk)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_temp_prefix("write_probe"), suffix=".tmp", dir=directory)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as e:
        if _is_disk_full(e):
            raise DiskFullError(directory) from None
        raise NotWritableError(e.errno or errno.EACCES, f"{what} {directory} is not writable "
                               f"({e.strerror or type(e).__name__})", directory) from None
    return directory


def _in_flight(p: Path, pid: str | None, host: str | None) -> bool:
    """Whether the temp's writer (pid@host from its name) may still be writing it: a live process
    on this host; on another host (a shared work dir) we cannot ask, so a recent temp is kept."""
    if pid is None:
        return False
    if host != _HOST:
        try:
            return time.time() - p.stat().st_mtime < _OTHER_HOST_GRACE_S
        except OSError:
            return False
    return pid_alive(int(pid))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temps(*directories: str | os.PathLike) -> list[Path]:
    """Remove the temp files / staging folders of interrupted atomic writes directly inside each
    of ``directories`` (missing folders are skipped). Returns what was removed."""
    removed: list[Path] = []
    for d in directories:
        d = Path(d)
        if not d.is_dir():
            continue
        for p in d.iterdir():
            m = _TEMP_RE.match(p.name)
            if m is None or _in_flight(p, m.group(1), m.group(2)):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed

