"""Predict-then-check exercises of the lessons: the learner writes a number, a check says why.

The machinery is in ``_core`` (:class:`Exercise`, :class:`Slip`, :class:`Verdict`); each lesson's
questions live in their own module (``_lesson01`` ...) and are re-exported here as ``check_*``
functions, so a lesson cell reads ``bsl.exercises.check_weights_bytes(my_answer, ...)``.
Every expected value is computed by the lab's planners, never typed in.
"""

from ._core import Exercise, Slip, Verdict, ask, byte_unit_slips
from ._lesson01 import (check_kv_cache_bytes, check_kv_equals_weights, check_largest_batch, check_peak_prediction,
                        check_value, check_weights_bytes)
from ._lesson02 import (check_disk_layers, check_largest_shard, check_meta_bytes, check_naive_peak,
                        check_shard_loop_peak)
from ._lesson03 import check_fp8_rmse_ratio, check_gap, check_load_peak_ratio, check_stored
from ._lesson04 import check_4bit_bytes, check_blocksize_bytes, check_scale, check_skip_bytes, check_zero_point
from ._lesson05 import (DISK_PEAK_TOLERANCE, check_cpu_offload_saving, check_disk_peak, check_flux_transformer_bytes,
                        check_group_count, check_model_offload_bytes)
from ._lesson06 import check_allreduces, check_rank_bytes, check_smallest_nproc
from ._lesson07 import check_bytes_on_gpu, check_fewest_gpus, check_layers_on_cpu, check_layers_on_gpu0
from ._lesson08 import (check_blog_kv_heads, check_cache_bytes, check_kv_cache_gib, check_kv_per_gpu,
                        check_recomputed_positions)
from ._lesson09 import (check_fewest_fitting_gpus, check_fit_run_peak, check_option_gpu_bytes, check_top_option,
                        options_to_pick)

__all__ = [
    "Exercise", "Slip", "Verdict", "ask", "byte_unit_slips", "check_value",
    # lesson 01
    "check_kv_cache_bytes", "check_kv_equals_weights", "check_largest_batch", "check_peak_prediction",
    "check_weights_bytes",
    # lesson 02
    "check_disk_layers", "check_largest_shard", "check_meta_bytes", "check_naive_peak", "check_shard_loop_peak",
    # lesson 03
    "check_fp8_rmse_ratio", "check_gap", "check_load_peak_ratio", "check_stored",
    # lessons 04a, 04b
    "check_4bit_bytes", "check_blocksize_bytes", "check_scale", "check_skip_bytes", "check_zero_point",
    # lesson 05
    "DISK_PEAK_TOLERANCE", "check_cpu_offload_saving", "check_disk_peak", "check_flux_transformer_bytes",
    "check_group_count",
    "check_model_offload_bytes",
    # lesson 06
    "check_allreduces", "check_rank_bytes", "check_smallest_nproc",
    # lesson 07
    "check_bytes_on_gpu", "check_fewest_gpus", "check_layers_on_cpu", "check_layers_on_gpu0",
    # lesson 08
    "check_blog_kv_heads", "check_cache_bytes", "check_kv_cache_gib", "check_kv_per_gpu", "check_recomputed_positions",
    # lesson 09
    "check_fewest_fitting_gpus", "check_fit_run_peak", "check_option_gpu_bytes", "check_top_option", "options_to_pick",
]
