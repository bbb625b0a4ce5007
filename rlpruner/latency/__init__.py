"""Latency of the target runtime, measured once and predicted everywhere else.

    runtime = get_runtime("onnxruntime-cpu", threads=1)
    table = cached_table(model, graph, example, runtime, batch=1)   # built once, cached on disk
    table.predict(graph.new_shapes(removals))                        # ms, no timing
    prediction_error(model, graph, table, runtime, example)          # the table's honest error

The search uses a table for latency targets and latency rewards (rlpruner.search), so candidates
are never timed; the final model is.
"""
from .check import PredictionError, aligned_model_costs, choose_round_to, prediction_error, rounding_costs
from .ops import random_removals
from .runtimes import (RUNTIMES, OnnxRuntimeCPU, Ratio, Runtime, Stopwatch, TorchCPU, TorchCUDA, Turns, get_runtime,
                       median_interval)
from .ops import Op, find_ops, uniform_removals
from .table import LatencyTable, build_table, cached_table, default_cache_dir

__all__ = ["RUNTIMES", "Runtime", "TorchCPU", "TorchCUDA", "OnnxRuntimeCPU", "Stopwatch", "Turns", "get_runtime",
           "Ratio", "median_interval",
           "LatencyTable", "Op", "build_table", "cached_table", "default_cache_dir", "find_ops", "uniform_removals",
           "PredictionError", "prediction_error", "random_removals", "choose_round_to", "rounding_costs",
           "aligned_model_costs"]
