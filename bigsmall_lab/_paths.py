"""The lab's cache folder and atomic, locked folder writes.

Everything the lab writes (scale-ladder checkpoints, tiny pipelines, the converted real model) goes
under :func:`cache_dir`: ``$BIGSMALL_LAB_CACHE`` when set, else the platform's user cache folder.

:func:`atomic_dir` builds a folder under a temporary name beside its target and renames it into
place only when complete, so an interrupted build never leaves half a checkpoint. Two processes
building the same target (two kernels on a workshop machine) do not race: each target has a lock
file (``.lock-<name>``, held with ``flock``, released by the kernel even when a writer is killed),
the second writer waits for the first and then finds the target complete. Temporary folders
(``.partial-<name>-<id>``) whose writer is gone (its lock is free) are removed by the next write in
the same folder, whatever its target: a killed build never leaves gigabytes behind for good.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import platformdirs
from filelock import FileLock, Timeout

from ._errors import LabError, shown

__all__ = ["atomic_dir", "cache_dir", "check_name", "writing_into"]

_PARTIAL = ".partial-"
_LOCK = ".lock-"
_WAIT_NOTICE_S = 2.0  # wait this long for another writer before saying so
# One path component: letters, digits and . _ + -, not starting with a dot (the lab's own files do).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def cache_dir(create: bool = True) -> Path:
    """The lab's cache folder (``$BIGSMALL_LAB_CACHE`` or the platform cache dir); checked writable."""
    env = os.environ.get("BIGSMALL_LAB_CACHE")
    path = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("bigsmall_lab"))
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".probe-{uuid.uuid4().hex}"
            probe.mkdir()
            probe.rmdir()
        except OSError as err:
            raise PermissionError(
                f"the cache folder {str(path)!r} is not writable ({err.strerror}); set BIGSMALL_LAB_CACHE "
                "to a folder you can write to") from None
    return path


def check_name(name: object, argument: str = "name") -> str:
    """``name`` if it is one safe path component (a folder name inside the cache), else one sentence.

    >>> check_name("llama-3.2-1b-bfloat16")
    'llama-3.2-1b-bfloat16'
    >>> check_name("../../x")
    Traceback (most recent call last):
    ...
    bigsmall_lab._errors.LabError: name '../../x' is not a folder name; use letters, digits and . _ + - (up to 128, not starting with a dot), e.g. 'my-model'
    """
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise LabError.bad(argument, name, "use letters, digits and . _ + - (up to 128, not starting with a dot), "
                           "e.g. 'my-model'", verb="is not a folder name")
    return name


def _lock(parent: Path, target_name: str) -> FileLock:
    return FileLock(str(parent / f"{_LOCK}{target_name}"))


def _clean_stale(parent: Path, own_target: str) -> None:
    """Remove temporary folders in ``parent`` whose writer is gone (its target's lock is free).

    The caller holds ``own_target``'s lock, so every temporary folder of that target is stale.
    """
    for partial in parent.glob(f"{_PARTIAL}*"):
        if not partial.is_dir():
            continue
        target_name = partial.name[len(_PARTIAL):].rsplit("-", 1)[0]
        if target_name == own_target:
            shutil.rmtree(partial, ignore_errors=True)
            continue
        other = _lock(parent, target_name)
        try:
            other.acquire(timeout=0)
        except Timeout:  # someone is writing it right now
            continue
        try:
            shutil.rmtree(partial, ignore_errors=True)
        finally:
            other.release()


def _disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)  # safetensors reports a full disk inside its own error type
    return "No space left on device" in text or "StorageFull" in text


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, complete: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``target`` when the block ends without an exception.

    Only one process at a time is inside the block for a given target: a second caller waits here,
    then should check whether ``target`` is complete now and return early (the empty temporary folder
    is then discarded, as is any folder built while ``target`` appeared). On an exception (or
    KeyboardInterrupt) the temporary folder is removed and ``target`` is untouched; a full disk is
    said in one sentence.

    ``complete(folder)`` says whether an existing ``target`` is whole and current: one that is not (a file
    deleted by hand, a folder built for another model) is replaced by the new build, so it is rebuilt
    once, not on every call. Without it, any existing ``target`` counts as complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock(target.parent, target.name)
    try:
        lock.acquire(timeout=_WAIT_NOTICE_S)
    except Timeout:
        print(f"bigsmall_lab: another process is building {target.name}; waiting for it to finish", file=sys.stderr)
        lock.acquire()
    try:
        _clean_stale(target.parent, target.name)
        tmp = target.parent / f"{_PARTIAL}{target.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if _disk_full(err):
                raise OSError(errno.ENOSPC, f"the disk holding {shown(str(target.parent))} is full, so "
                                            f"{target.name} could not be written (its partial folder was removed); "
                                            "free some space or set BIGSMALL_LAB_CACHE to a bigger disk") from None
            raise
        if target.exists() and (complete is None or complete(target)):
            # Finished by another writer while this one waited (or the caller found it and returned).
            shutil.rmtree(tmp, ignore_errors=True)
        elif target.exists():
            # An incomplete or stale target: set it aside (a stale partial folder if this process dies
            # now, which the next write removes), put the new build in place, then delete the old one.
            old = target.parent / f"{_PARTIAL}{target.name}-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        lock.release()


@contextlib.contextmanager
def writing_into(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """A block that writes files into ``folder`` (a library's disk offload): if the disk fills up, the files the
    block created are removed (no half-written shard is left to be read later) and one sentence says what
    happened, instead of the library's own error (safetensors' ``SafetensorError``, an ``OSError`` 28)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    before = {p for p in folder.rglob("*")}
    try:
        yield folder
    except BaseException as err:
        if not _disk_full(err):
            raise
        for path in sorted(set(folder.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise OSError(errno.ENOSPC, f"the disk holding {shown(str(folder))} filled up while {what}; the files "
                                    "written so far were removed. Free some space, or offload to a bigger disk") from None

