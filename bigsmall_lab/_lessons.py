"""The map of the lab: each lesson, what it plans with, what it runs, what it draws, what it asks, what it proves.

One :class:`Lesson` per notebook of ``lessons/``, in the order of the talk. Module names are those under
``bigsmall_lab`` (``"estimates"`` is ``bigsmall_lab.estimates``); views are functions and widgets of
:mod:`bigsmall_lab.views`; exercises are ``check_*`` functions of :mod:`bigsmall_lab.exercises`; the claims are
the talk's, read from :data:`bigsmall_lab._talk.CLAIMS` by lesson. ``tests/test_lesson_map.py`` reads every
lesson's code cells and fails when a lesson calls something its entry does not name, or its entry names
something it never reaches (a module counts as reached when the lesson calls it or a module it calls imports
it: lesson 08 calls ``kvcache``, which plans with ``kv_plan``); ``tools/lesson_map.py`` writes the README's map from :func:`map_markdown`.

>>> lesson("08_kv_cache").planners, lesson("08_kv_cache").runners
(('estimates', 'kv_plan'), ('kvcache', 'quality'))

Everything here is names (strings): this module sits in the base layer and imports nothing it maps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import LabError
from ._talk import CLAIMS, TalkClaim

__all__ = ["LESSON_MAP", "SHARED", "SHARED_EXERCISES", "Lesson", "lesson", "map_markdown"]


@dataclass(frozen=True)
class Lesson:
    """One lesson: its notebook ``lessons/<stem>.ipynb``, its title, and the pieces of the package it calls."""

    stem: str
    title: str
    planners: tuple[str, ...]  # pure modules: numbers in, numbers out (what to expect)
    runners: tuple[str, ...]  # modules that load, run and measure (what happens)
    views: tuple[str, ...]  # functions and widgets of bigsmall_lab.views
    exercises: tuple[str, ...]  # check_* functions of bigsmall_lab.exercises

    @property
    def modules(self) -> tuple[str, ...]:
        return self.planners + self.runners

    @property
    def claims(self) -> tuple[TalkClaim, ...]:
        """The talk's claims this lesson reproduces (a cell that computes or measures each)."""
        return tuple(c for c in CLAIMS if c.lesson == self.stem)


# Modules every lesson may lean on without them being its subject: the attached machine, the preflight
# check, the lab's models and configs, and the packages of views and exercises (whose members are mapped
# per lesson below), the command line.
SHARED = {
    "hardware": "what is attached: the banner, has_cuda/needs_cuda, the table of GPUs",
    "check": "the preflight report each lesson prints first",
    "zoo": "the lab's models, presets and configs: load_model, checkpoint, config_dict, count_parameters",
    "views": "the package of charts and widgets (each lesson's are listed with it)",
    "exercises": "the package of predict-then-check questions (each lesson's are listed with it)",
    "cli": "the bigsmall-lab command (estimate, presets, fit, check) for a terminal",
    "placement_rule": "placement.plan's device map in plain Python over a stored module tree: how bigsmall-lab fit "
                      "places a preset without torch (a test checks it equals placement.plan)",
}
# Exercise machinery that is a check_* function of no one lesson: a learner's number against any value.
SHARED_EXERCISES = ("check_value",)

_L = Lesson
LESSON_MAP: tuple[Lesson, ...] = (
    _L("01_memory_maths", "Memory maths", planners=("estimates",), runners=("measure",),
       views=("comparison_table", "estimate_stack", "memory_timeline", "weights_bars", "weights_table_html"),
       exercises=("check_kv_cache_bytes", "check_kv_equals_weights", "check_largest_batch", "check_peak_prediction",
                  "check_weights_bytes")),
    _L("02_big_model_inference", "Big Model Inference", planners=("estimates", "placement"),
       runners=("loading", "measure"),
       views=("LiveMemory", "loaders_chart", "loading_peaks", "loading_timeline", "placement_chart",
              "shard_steps_chart"),
       exercises=("check_disk_layers", "check_largest_shard", "check_meta_bytes", "check_naive_peak",
                  "check_shard_loop_peak")),
    _L("03_dtypes", "dtypes", planners=("bits", "estimates", "quant"), runners=("measure", "quality", "quantized"),
       views=("BitLayout", "formats_table", "peaks_bar", "precision_chart", "rounding_table", "weights_vs_formats"),
       exercises=("check_fp8_rmse_ratio", "check_gap", "check_load_peak_ratio", "check_stored")),
    _L("04a_quantization_maps", "Quantization maps", planners=("bnb_formats", "quant"), runners=("gguf_file",),
       views=("QuantMap", "codebook_chart", "scheme_table"),
       exercises=("check_4bit_bytes", "check_blocksize_bytes", "check_scale", "check_zero_point")),
    _L("04b_bitsandbytes", "bitsandbytes on a real model", planners=("bnb_formats", "estimates", "quant"),
       runners=("quality", "quantized"),
       views=("outlier_table", "texts_table", "timings_chart", "variants_chart", "variants_table",
              "weights_table_html"),
       exercises=("check_skip_bytes",)),
    _L("05_offloading", "Offloading (Diffusers)", planners=("offload_plan",), runners=("measure", "offload"),
       views=("LiveMemory", "components_table", "groups_table", "offload_table", "offload_timelines", "pinned_table",
              "plan_bars", "speed_table", "tradeoff_scatter"),
       exercises=("check_cpu_offload_saving", "check_disk_peak", "check_flux_transformer_bytes", "check_group_count",
                  "check_model_offload_bytes")),
    _L("06_tensor_parallelism", "Tensor parallelism", planners=("tp_plan",), runners=("parallel",),
       views=("tp_memory_chart", "tp_placement_table", "tp_speed_chart", "tp_split_figure"),
       exercises=("check_allreduces", "check_rank_bytes", "check_smallest_nproc")),
    _L("07_device_map", "device_map strategies", planners=("placement",), runners=("loading",),
       views=("PlacementPlanner", "device_map_chart", "placement_chart"),
       exercises=("check_bytes_on_gpu", "check_fewest_gpus", "check_layers_on_cpu", "check_layers_on_gpu0")),
    _L("08_kv_cache", "KV cache", planners=("estimates", "kv_plan"), runners=("kvcache", "quality"),
       views=("LiveMemory", "bytes_per_token_chart", "cache_runs_chart", "cache_runs_table", "kv_context_chart",
              "kv_per_gpu_chart", "offload_chart", "recompute_chart", "residual_chart"),
       exercises=("check_blog_kv_heads", "check_cache_bytes", "check_kv_cache_gib", "check_kv_per_gpu",
                  "check_recomputed_positions")),
    # Lesson 09 composes the others: the advisor plans every way to run a model on a machine, fit_run runs one.
    _L("09_fit_it", "Fit it", planners=("advisor",), runners=("fit_run",),
       views=("fit_option", "fit_run_chart", "fit_table", "fit_widget"),
       exercises=("check_fewest_fitting_gpus", "check_fit_run_peak", "check_option_gpu_bytes", "check_top_option")),
)


def lesson(stem: str) -> Lesson:
    """The map entry of the lesson whose notebook is ``lessons/<stem>.ipynb``."""
    for entry in LESSON_MAP:
        if entry.stem == stem:
            return entry
    raise LabError.bad("stem", stem, "one of: " + ", ".join(e.stem for e in LESSON_MAP), verb="is not a lesson")


def _names(names: tuple[str, ...], wrap: str = "`") -> str:
    return ", ".join(f"{wrap}{n}{wrap}" for n in names) or "-"


def map_markdown() -> str:
    """The README's table of the lab, one row per lesson, then the shared modules (``tools/lesson_map.py``)."""
    rows = ["| lesson | planners | runners | views | exercises | talk claims |", "|---|---|---|---|---|---|"]
    for entry in LESSON_MAP:
        rows.append(f"| [{entry.stem}](lessons/{entry.stem}.ipynb) {entry.title} | {_names(entry.planners)} | "
                    f"{_names(entry.runners)} | {_names(entry.views)} | {_names(entry.exercises)} | "
                    f"{len(entry.claims)} |")
    shared = "\n".join(f"- `{name}`: {what}" for name, what in SHARED.items())
    return (f"{chr(10).join(rows)}\n\nShared by every lesson:\n\n{shared}\n\n"
            f"Written by `python tools/lesson_map.py` from `bigsmall_lab/_lessons.py` (`tests/test_lesson_map.py` "
            f"checks it against each lesson's code cells and fails when this table is stale).\n")
