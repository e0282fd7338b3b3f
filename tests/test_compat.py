"""The one module that knows version differences: older names become current ones, with a note."""

from __future__ import annotations

import warnings

import pytest
from transformers import BitsAndBytesConfig

from bigsmall_lab import _compat


def test_current_names_pass_through_untouched():
    kwargs = {"dtype": "auto", "device_map": "auto"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _compat.from_pretrained_kwargs(kwargs) == kwargs


def test_torch_dtype_becomes_dtype_and_dtype_wins():
    with pytest.warns(UserWarning, match="torch_dtype is the older name of dtype"):
        assert _compat.from_pretrained_kwargs({"torch_dtype": "auto"}) == {"dtype": "auto"}
    with pytest.warns(UserWarning):
        assert _compat.from_pretrained_kwargs({"torch_dtype": "float32", "dtype": "auto"}) == {"dtype": "auto"}


def test_load_in_8bit_becomes_a_bitsandbytes_config():
    with pytest.warns(UserWarning, match=r"older spelling of quantization_config=BitsAndBytesConfig\(load_in_8bit"):
        kwargs = _compat.from_pretrained_kwargs({"load_in_8bit": True})
    assert isinstance(kwargs["quantization_config"], BitsAndBytesConfig)
    assert kwargs["quantization_config"].load_in_8bit and "load_in_8bit" not in kwargs


def test_no_init_weights_really_skips_initialisation():
    # The one name that moved module between transformers 4 and 5: whichever import won, it must work.
    import torch

    weights = torch.zeros(16)
    with _compat.no_init_weights():
        torch.nn.init.normal_(weights)  # what a layer's reset_parameters calls
    assert torch.equal(weights, torch.zeros(16))
    torch.nn.init.normal_(weights)
    assert not torch.equal(weights, torch.zeros(16))


def test_diffusers_dtype_keyword_is_the_one_its_from_pretrained_accepts():
    import inspect

    import diffusers
    from packaging.version import Version

    from bigsmall_lab._compat import diffusers_dtype_kwarg

    name = diffusers_dtype_kwarg()
    # 0.42 renamed torch_dtype to dtype; the keyword must be one from_pretrained reads without a warning.
    expected = "dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype"
    assert name == expected
    source = inspect.getsource(diffusers.DiffusionPipeline.from_pretrained)
    assert f'"{name}"' in source or f"'{name}'" in source or f"{name}=" in source


def test_the_recorded_quantized_cache_facts_are_the_librarys():
    # data/transformers_facts.json (tools/presets_data.py) stands in for the library only while its version is
    # installed: then it must say what transformers says
    import json

    recorded = json.loads(_compat._TRANSFORMERS_FACTS.read_text())
    live = _compat.transformers_facts()
    if recorded["transformers"] != live["transformers"]:
        assert _compat._recorded_facts() is None  # another version: the library is asked instead
        pytest.skip(f"recorded for transformers {recorded['transformers']}, installed {live['transformers']}")
    assert {k: v for k, v in recorded.items() if k != "source"} == live, "run `python tools/presets_data.py`"
    assert _compat.quantized_cache_backends() == tuple(live["quantized_cache_backends"])
    assert _compat.quantized_cache_default("q_group_size") == live["quantized_cache_defaults"]["q_group_size"]


def test_a_record_of_another_transformers_is_not_read(tmp_path, monkeypatch):
    import json

    fake = tmp_path / "transformers_facts.json"
    fake.write_text(json.dumps({"transformers": "0.0.1", "quantized_cache_backends": ["made-up"],
                                "quantized_cache_defaults": {"q_group_size": 3}}))
    monkeypatch.setattr(_compat, "_TRANSFORMERS_FACTS", fake)
    _compat._recorded_facts.cache_clear()
    try:
        assert "made-up" not in _compat.quantized_cache_backends()
        assert _compat.quantized_cache_default("q_group_size") != 3
    finally:
        _compat._recorded_facts.cache_clear()
