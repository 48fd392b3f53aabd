"""`python -m trainers.evaluate ...`: the `scot-evaluate` command under its former name (see `scot_eval.cli`).

The evaluation moved to the `scot_eval` package. This module and the names it re-exports are kept for one release
so that existing commands and imports keep working; new code imports from `scot_eval`. Results are now
`scot_eval.results.EvaluationResult` objects (`result.metrics`, `result.to_dict()`); `result["metrics"]` still reads.
"""

import sys
from pathlib import Path

from scot_eval.cli import load_model as load_model_and_processor
from scot_eval.cli import main, record_in_model_card
from scot_eval.evaluation import evaluate_benchmark, evaluate_prepared, prepare_benchmark
from scot_eval.protocols import FASHIONIQ_CAPTION_MODES, fashioniq_query_texts
from scot_eval.ranking import METHODS, query_embeddings
from scot_eval.results import EvaluationResult
from scot_eval.tasks import (
    PreparedTask,
    cached_image_embeddings,
    cached_text_embeddings,
    default_cache_dir,
    prepare_task,
)


def _as_result(result: EvaluationResult | dict) -> EvaluationResult:
    return result if isinstance(result, EvaluationResult) else EvaluationResult.from_dict(result)


def format_table(result: EvaluationResult | dict) -> str:
    return _as_result(result).format_table()


def format_counts(result: EvaluationResult | dict) -> str:
    return _as_result(result).format_counts()


def write_outputs(result: EvaluationResult | dict, output_dir) -> list[Path]:
    return _as_result(result).write_outputs(output_dir)


__all__ = [
    "FASHIONIQ_CAPTION_MODES",
    "METHODS",
    "PreparedTask",
    "cached_image_embeddings",
    "cached_text_embeddings",
    "default_cache_dir",
    "evaluate_benchmark",
    "evaluate_prepared",
    "fashioniq_query_texts",
    "format_counts",
    "format_table",
    "load_model_and_processor",
    "main",
    "prepare_benchmark",
    "prepare_task",
    "query_embeddings",
    "record_in_model_card",
    "write_outputs",
]

if __name__ == "__main__":
    sys.exit(main(prog="python -m trainers.evaluate"))
