"""Widgets and charts of the lab: thin views that draw what the planners in bigsmall_lab compute.

>>> from bigsmall_lab.views import BitLayout, precision_chart
>>> BitLayout(value="1 + 2**-8").rows[2]["value"]  # bfloat16 keeps 7 mantissa bits: 2**-8 is lost
'1'
"""

from bigsmall_lab.views._advisor import (FIT_MODELS, FitWidget, fit_option, fit_run_chart, fit_table,
                                         fit_widget)
from bigsmall_lab.views._bits import DEFAULT_FORMATS, BitLayout, precision_chart
from bigsmall_lab.views._estimates import comparison_table, estimate_stack, weights_bars, weights_table_html
from bigsmall_lab.views._kvcache import (bytes_per_token_chart, cache_runs_chart, cache_runs_table, kv_context_chart,
                                         kv_per_gpu_chart, offload_chart, recompute_chart, residual_chart)
from bigsmall_lab.views._live import LiveMemory
from bigsmall_lab.views._loading import (device_map_chart, loaders_chart, loading_peaks, loading_timeline,
                                         shard_steps_chart)
from bigsmall_lab.views._memory import memory_timeline, peaks_bar
from bigsmall_lab.views._offload import (components_table, groups_table, offload_table, offload_timelines, pinned_table,
                                         plan_bars, speed_table, tradeoff_scatter)
from bigsmall_lab.views._parallel import tp_memory_chart, tp_placement_table, tp_split_figure, tp_speed_chart
from bigsmall_lab.views._placement import PLANNER_PRESETS, PlacementPlanner, placement_chart
from bigsmall_lab.views._quant import (QuantMap, codebook_chart, mapping_figure, outlier_table, scheme_table,
                                       texts_table, timings_chart, variants_chart, variants_table)
from bigsmall_lab.views._weights import formats_table, rounding_table, weights_vs_formats

__all__ = [
    # lessons 01 and 03: estimates, bit layouts, measured memory
    "DEFAULT_FORMATS", "BitLayout", "comparison_table", "estimate_stack", "formats_table", "memory_timeline",
    "peaks_bar", "precision_chart", "rounding_table", "weights_bars", "weights_table_html", "weights_vs_formats",
    # the live memory chart (lessons 02, 05, 08)
    "LiveMemory",
    # lesson 02: Big Model Inference
    "device_map_chart", "loaders_chart", "loading_peaks", "loading_timeline", "shard_steps_chart",
    # lesson 04: quantization
    "QuantMap", "codebook_chart", "mapping_figure", "outlier_table", "scheme_table", "texts_table", "timings_chart",
    "variants_chart", "variants_table",
    # lesson 05: offloading
    "components_table", "groups_table", "offload_table", "offload_timelines", "pinned_table", "plan_bars",
    "speed_table", "tradeoff_scatter",
    # lesson 06: tensor parallelism
    "tp_memory_chart", "tp_placement_table", "tp_split_figure", "tp_speed_chart",
    # lesson 07: device_map
    "PLANNER_PRESETS", "PlacementPlanner", "placement_chart",
    # lesson 08: KV cache
    "bytes_per_token_chart", "cache_runs_chart", "cache_runs_table", "kv_context_chart", "kv_per_gpu_chart",
    "offload_chart", "recompute_chart", "residual_chart",
    # lesson 09: fit it (the advisor)
    "FIT_MODELS", "FitWidget", "fit_option", "fit_run_chart", "fit_table", "fit_widget",
]


def _one_sentence(view):
    """``view`` as the lessons call it: given a plain value (a text, a number, None) where it draws a runner's
    result, one sentence naming the argument and what it takes, not an AttributeError from inside plotly code."""
    import functools
    import inspect

    from bigsmall_lab._errors import LabError, shown

    signature = inspect.signature(view)

    def plain_and_unexpected(parameter: inspect.Parameter, value) -> bool:
        if not isinstance(value, (str, bytes, bool, int, float, type(None))):
            return False
        import re

        outer = re.sub(r"\[.*\]", "", str(parameter.annotation))  # "Mapping[str, float]" takes a Mapping, not a str
        return parameter.annotation is inspect.Parameter.empty or type(value).__name__ not in outer.replace(
            "None", "NoneType")

    @functools.wraps(view)
    def call(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise LabError(f"views.{view.__name__}{signature}: {err}") from None
        try:
            return view(*args, **kwargs)
        except (AttributeError, TypeError):
            for name, value in bound.arguments.items():
                parameter = signature.parameters[name]
                if plain_and_unexpected(parameter, value):
                    wanted = "" if parameter.annotation is inspect.Parameter.empty else f" {parameter.annotation}"
                    raise LabError(f"{name} {shown(value)} is not what views.{view.__name__} draws; pass{wanted}, "
                                   f"as the lab's runner returns it (help(views.{view.__name__}))") from None
            raise

    return call


for _name in __all__:
    _value = globals()[_name]
    if callable(_value) and not isinstance(_value, type):
        globals()[_name] = _one_sentence(_value)
del _name, _value
