"""The evaluation package: FashionIQ, CIRR and CIRCO read from their official layouts (`benchmarks`), the paper
metrics (`metrics`), the queries' phrasing and the embedded tasks (`tasks`), one protocol object per benchmark
(`protocols`), query composition and scoring (`ranking`), the typed result and its reports (`results`), the two-step
evaluation the trainer calls (`evaluation`) and the `scot-evaluate` command (`cli`).

    from scot_eval import evaluate_benchmark
    result = evaluate_benchmark(model, processor, "cirr", "data/cirr_dataset", "val", "scot")
    print(result.format_table())

The names below are imported on first use, so that `scot_eval.results` (pure Python) can be read without torch.
"""

import importlib
from pathlib import Path

# The `evaluate`-library module over `scot_eval.metrics`: `evaluate.load(CIR_RETRIEVAL_METRIC, "cirr")`
CIR_RETRIEVAL_METRIC = str(Path(__file__).resolve().parent / "hf_metric" / "cir_retrieval")

_EXPORTS = {
    "BENCHMARKS": "benchmarks",
    "RetrievalTask": "benchmarks",
    "check_benchmark": "benchmarks",
    "load_benchmark": "benchmarks",
    "EvaluationResult": "results",
    "MetricValue": "results",
    "TaskCounts": "results",
    "PROTOCOLS": "protocols",
    "get_protocol": "protocols",
    "METHODS": "ranking",
    "query_embeddings": "ranking",
    "PreparedTask": "tasks",
    "evaluate_benchmark": "evaluation",
    "evaluate_prepared": "evaluation",
    "prepare_benchmark": "evaluation",
}

__all__ = sorted(["CIR_RETRIEVAL_METRIC", *_EXPORTS])


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'scot_eval' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
