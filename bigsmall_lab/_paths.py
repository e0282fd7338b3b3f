"""The lab's cache folder and atomic folder writes.

Everything the lab writes (scale-ladder checkpoints, tiny pipelines) goes under :func:`cache_dir`:
``$BIGSMALL_LAB_CACHE`` when set, else the platform's user cache folder. A folder is built under a
temporary name beside its target and renamed into place only when complete, so an interrupted build
never leaves half a checkpoint; the next call finds no target, clears the stale temporary folder
(only folders of our own ``.partial-`` prefix inside the cache) and builds again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import platformdirs

__all__ = ["atomic_dir", "cache_dir"]

_PARTIAL = ".partial-"


def cache_dir(create: bool = True) -> Path:
    """The lab's cache folder (``$BIGSMALL_LAB_CACHE`` or the platform cache dir); checked writable."""
    env = os.environ.get("BIGSMALL_LAB_CACHE")
    path = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("bigsmall_lab"))
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f"{_PARTIAL}probe-{uuid.uuid4().hex}"
            probe.mkdir()
            probe.rmdir()
        except OSError as err:
            raise PermissionError(
                f"the cache folder {str(path)!r} is not writable ({err.strerror}); set BIGSMALL_LAB_CACHE "
                "to a folder you can write to") from None
    return path


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``target`` when the block ends without an exception.

    On an exception (or KeyboardInterrupt) the temporary folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{_PARTIAL}{target.name}-*"):
        # A build of this very target that was killed before it could clean up.
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f"{_PARTIAL}{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, target)
    except OSError:
        # Someone else finished the same build first: theirs is complete too, keep it.
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise
