"""One training run per work dir: ``<work_dir>/train.lock`` holds the running trainer's pid, host
and start time.

Two runs in one work dir would interleave their checkpoints (``last.ckpt`` of either) and logs.
The lock is created with O_EXCL (one creator wins), removed when the run ends (also on an
exception), and a lock left by a crashed or killed run is recognised as stale: its pid is not
alive on this host, or the pid now belongs to another process (a different process start time:
the pid was reused), or it is our own pid (a restarted container re-uses low pids). A lock of
another host cannot be checked from here: the error says to delete it if that run is gone.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "WorkDirLocked", "acquire", "release", "work_dir_lock"]

LOCK_NAME = "train.lock"
_WRITE_GRACE_S = 10.0  # an unreadable lock younger than this is a run still writing it


class WorkDirLocked(RuntimeError):
    """Another training run holds the work dir."""


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat; the name before ")" may hold spaces


def _alive(info: dict[str, Any]) -> bool:
    """Whether the run described by a lock's contents still runs (assumed so on another host)."""
    if info.get("host") != socket.gethostname():
        return True
    pid = int(info.get("pid", -1))
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    start = _proc_start(pid)
    return start is None or info.get("proc_start") in (None, start)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict[str, Any]) -> str:
    return (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"
            + (f" ({info['command']})" if info.get("command") else ""))


def acquire(work_dir: str | os.PathLike, command: str = "") -> Path:
    """Create ``<work_dir>/train.lock`` for this process (taking over a stale one); ``WorkDirLocked``
    naming the holder (pid, host, start time) if another run holds it."""
    path = Path(work_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _check_holder(path)
            path.unlink(missing_ok=True)  # stale: take it over (a rival doing the same loses at O_EXCL)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        return path
    raise WorkDirLocked(f"work dir {path.parent} is in use: could not take {path} (another run keeps taking it)")


def _check_holder(path: Path) -> None:
    """Raise ``WorkDirLocked`` if the lock at ``path`` belongs to a live run; return if it is stale."""
    info = _read(path)
    if info is None:  # empty or half written: a run between creating and writing it, or a crash then
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return
        if age < _WRITE_GRACE_S:
            raise WorkDirLocked(f"work dir {path.parent} is in use: another run is just starting ({path})")
        return
    if _alive(info):
        raise WorkDirLocked(
            f"work dir {path.parent} is in use by another training run: {_describe(info)}; wait for it to "
            f"finish, pass another --work-dir, or delete {path} if that run is gone")


def release(path: str | os.PathLike) -> None:
    """Remove the lock if it is still ours (never another run's)."""
    path = Path(path)
    info = _read(path)
    if info is not None and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextmanager
def work_dir_lock(work_dir: str | os.PathLike, command: str = "", enabled: bool = True) -> Iterator[None]:
    """Hold the work dir's lock for the block (``enabled=False``: a no-op, e.g. on DDP ranks > 0,
    whose rank 0 holds it for them)."""
    path = acquire(work_dir, command) if enabled else None
    try:
        yield
    finally:
        if path is not None:
            release(path)
