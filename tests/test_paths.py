"""The cache folder: atomic, locked writes; two builders of one checkpoint; killed builders cleaned up."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from filelock import FileLock

from bigsmall_lab._errors import LabError
from bigsmall_lab._paths import atomic_dir, cache_dir, check_name


def folders(path):
    """Folders (complete or partial) in ``path``; the lock files beside them are left out."""
    return sorted(p.name for p in path.iterdir() if p.is_dir())


# --- atomic_dir in one process -------------------------------------------------------------------


def test_a_finished_block_becomes_the_target(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("complete")
        assert not (tmp_path / "out").exists()  # invisible until the block ends
    assert (tmp_path / "out" / "a.txt").read_text() == "complete"
    assert folders(tmp_path) == ["out"]


def test_a_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_bytes(b"half")
            raise RuntimeError("died")
    assert folders(tmp_path) == []


def test_returning_early_when_the_target_appeared_keeps_the_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "theirs.txt").write_text("built by another process")
    with atomic_dir(target) as tmp:
        (tmp / "mine.txt").write_text("redundant")
    assert sorted(p.name for p in target.iterdir()) == ["theirs.txt"]
    assert folders(tmp_path) == ["out"]


def test_a_full_disk_is_one_sentence_and_the_partial_folder_is_gone(tmp_path):
    with pytest.raises(OSError) as err:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "shard").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(err.value)
    assert err.value.errno == errno.ENOSPC and "is full" in message and "partial folder was removed" in message
    assert "\n" not in message and len(message) < 300
    assert folders(tmp_path) == []


def test_a_partial_folder_whose_writer_is_alive_is_left_alone(tmp_path):
    live = tmp_path / ".partial-other-1234abcd"
    live.mkdir()
    writer = FileLock(str(tmp_path / ".lock-other"))  # another writer of "other", still working
    writer.acquire()
    try:
        with atomic_dir(tmp_path / "mine"):
            pass
        assert live.is_dir()
    finally:
        writer.release()
    with atomic_dir(tmp_path / "third"):  # the writer is gone now: its folder is stale
        pass
    assert folders(tmp_path) == ["mine", "third"]


@pytest.mark.parametrize("name", ["llama-3.2-1b-bfloat16", "unit", "a.b_c+d-1"])
def test_good_folder_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["../../x", "/abs", "a/b", "a\\b", "..", ".", ".hidden", "", "x" * 129, None, 3,
                                  "nul\0byte", "new\nline"])
def test_bad_folder_names(name):
    with pytest.raises(LabError, match="is not a folder name"):
        check_name(name)


def test_cache_dir_probe_never_looks_like_a_partial_build(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGSMALL_LAB_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" and list((tmp_path / "cache").iterdir()) == []


# --- two processes, and a killed one ------------------------------------------------------------

# Each child builds the embedded model's checkpoint; saving is slowed down so the two overlap, and
# each says whether it wrote the shards itself.
_BUILD = textwrap.dedent("""
    import sys, time
    from transformers import PreTrainedModel
    import bigsmall_lab as bsl

    original = PreTrainedModel.save_pretrained

    def slow_save(self, folder, **kwargs):
        print("SAVING", flush=True)
        time.sleep(float(sys.argv[1]))
        original(self, folder, **kwargs)
        if sys.argv[2] == "hang":
            print("WROTE", flush=True)
            time.sleep(600)  # killed here, shards written, not yet renamed into place

    PreTrainedModel.save_pretrained = slow_save
    path = bsl.checkpoint("bigsmall-tiny", shard_size=sys.argv[3], progress=False)
    print("PATH", path, flush=True)
""")


def _child(cache, sleep_s, mode, shard_size="2MB") -> subprocess.Popen:
    env = {**os.environ, "BIGSMALL_LAB_CACHE": str(cache), "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.Popen([sys.executable, "-c", _BUILD, str(sleep_s), mode, shard_size], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _complete(path) -> bool:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return (path / "config.json").is_file() and all((path / f).is_file() for f in set(index["weight_map"].values()))


@pytest.mark.slow
def test_two_processes_building_one_checkpoint_both_get_the_same_complete_one(tmp_path):
    cache = tmp_path / "cache"
    first = _child(cache, 3.0, "run")
    second = _child(cache, 3.0, "run")
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [o[1][-2000:] for o in outs]
    paths = {line.split(" ", 1)[1] for out, _ in outs for line in out.splitlines() if line.startswith("PATH")}
    assert len(paths) == 1
    path = cache / "checkpoints" / os.path.basename(paths.pop())
    assert _complete(path)
    # One wrote the shards; the other waited for the lock (and said so), then reused the finished build.
    assert sum("SAVING" in out for out, _ in outs) == 1
    assert sum("another process is building" in err for _, err in outs) == 1
    assert folders(cache / "checkpoints") == [path.name]
    from transformers import AutoModelForCausalLM

    import bigsmall_lab as bsl

    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    reference = bsl.build("bigsmall-tiny", dtype="bfloat16", seed=0)  # what checkpoint() writes for that name
    for (name, a), (_, b) in zip(reference.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_a_build_killed_with_sigkill_leaves_nothing_the_next_call_trips_over(tmp_path):
    cache = tmp_path / "cache"
    victim = _child(cache, 0.0, "hang", shard_size="2MB")
    deadline = time.time() + 240
    for line in victim.stdout:  # wait until its shards are on disk, in its partial folder
        if line.startswith("WROTE") or time.time() > deadline:
            break
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    partials = [p for p in (cache / "checkpoints").iterdir() if p.name.startswith(".partial-")]
    assert len(partials) == 1 and any(partials[0].iterdir())  # what a killed build leaves

    # The next call, of another target, cleans it; then the killed target builds normally.
    other = _child(cache, 0.0, "run", shard_size="5MB")
    out, err = other.communicate(timeout=300)
    assert other.returncode == 0, err[-2000:]
    assert not any(p.name.startswith(".partial-") for p in (cache / "checkpoints").iterdir())
    again = _child(cache, 0.0, "run", shard_size="2MB")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    built = [p for p in (cache / "checkpoints").iterdir() if p.is_dir()]
    assert len(built) == 2 and all(_complete(p) for p in built)
