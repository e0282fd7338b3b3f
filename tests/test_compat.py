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
