"""Version differences of the libraries, kept in one small place.

transformers 5 renamed and moved things a learner meets in older posts and in the talk:

==========================  ==========================================  =====================================
what                        transformers >= 5 (taught here)             older name (talk, blog posts)
==========================  ==========================================  =====================================
weights dtype               ``from_pretrained(..., dtype=...)``         ``torch_dtype=...``
default dtype               ``"auto"`` (the checkpoint's dtype)         float32
tensor parallelism          ``distributed_config=DistributedConfig(     ``tp_plan="auto"``
                            tp_plan="auto")``
int8 / 4-bit loading        ``quantization_config=BitsAndBytesConfig``  ``load_in_8bit=True``
offloaded KV cache          ``cache_implementation="offloaded"`` /      ``OffloadedCache()``
                            ``DynamicCache(offloading=True)``
quantized KV cache          ``QuantizedCache(backend="quanto")``        ``QuantoQuantizedCache``,
                                                                        ``QuantizedCacheConfig``
==========================  ==========================================  =====================================
"""

from __future__ import annotations

import warnings

import transformers
from packaging.version import Version

__all__ = ["OLD_NAMES", "TRANSFORMERS_5", "from_pretrained_kwargs", "no_init_weights"]

TRANSFORMERS_5 = Version(transformers.__version__).major >= 5

# Current keyword -> the name older code uses for it.
OLD_NAMES = {
    "dtype": "torch_dtype",
    "quantization_config": "load_in_8bit / load_in_4bit",
    "distributed_config": "tp_plan",
}

try:  # transformers >= 5
    from transformers.initialization import no_init_weights
except ImportError:  # transformers 4.x
    from transformers.modeling_utils import no_init_weights  # type: ignore[no-redef]


def from_pretrained_kwargs(kwargs: dict) -> dict:
    """``kwargs`` for ``from_pretrained`` in the installed version's names.

    Older names are translated with a one-line note instead of a deprecation warning from deep
    inside transformers: ``torch_dtype`` becomes ``dtype``, ``load_in_8bit=True`` becomes a
    ``BitsAndBytesConfig``.

    >>> from_pretrained_kwargs({"torch_dtype": "auto"})  # doctest: +SKIP
    {'dtype': 'auto'}
    """
    kwargs = dict(kwargs)
    if not TRANSFORMERS_5:
        if "dtype" in kwargs:
            kwargs["torch_dtype"] = kwargs.pop("dtype")
        return kwargs
    if "torch_dtype" in kwargs:
        old = kwargs.pop("torch_dtype")
        warnings.warn("torch_dtype is the older name of dtype (transformers >= 5); using dtype", stacklevel=3)
        kwargs.setdefault("dtype", old)
    for flag in ("load_in_8bit", "load_in_4bit"):
        if kwargs.pop(flag, False):
            from transformers import BitsAndBytesConfig

            warnings.warn(f"{flag}=True is the older spelling of quantization_config=BitsAndBytesConfig({flag}=True)",
                          stacklevel=3)
            kwargs.setdefault("quantization_config", BitsAndBytesConfig(**{flag: True}))
    return kwargs
