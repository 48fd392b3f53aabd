"""Evaluate a SCOT model (or a baseline on its encoder) on FashionIQ, CIRR or CIRCO, as the papers report them.

In two steps, as `ScotTrainer` uses it during training::

    tasks = prepare_benchmark(model, processor, "cirr", data_dir, "val")   # encodes (or loads) the embeddings once
    result = evaluate_prepared(model, tasks, method="scot")               # compose + rank: fast, call it every eval
    result.metrics  # {"R@1": ..., "R@5": ..., "Rsubset@1": ...}

or in one: `evaluate_benchmark(model, processor, "cirr", data_dir, "val", "scot")`. The result is an
`EvaluationResult` (`scot_eval.results`); on a test split it holds the submission files instead of metrics.
"""

from __future__ import annotations

import torch

from scot_core import eval_mode
from scot_core.encoding import model_device_dtype

from .benchmarks import load_benchmark
from .protocols import FASHIONIQ_CAPTION_MODES, get_protocol
from .ranking import check_method, query_embeddings, similarity_scores
from .results import EvaluationResult
from .tasks import PreparedTask, prepare_task


def prepare_benchmark(model, processor, benchmark: str, data_dir, split: str = "val", *,
                      fashioniq_captions: str = "clip4cir", cache_dir=None, batch_size: int = 64, num_workers: int = 0,
                      show_progress: bool = True) -> list[PreparedTask]:
    """Load a benchmark from its official folder and prepare every task of it (FashionIQ: one per category).

    Everything returned depends only on the frozen encoder: prepare once, then call `evaluate_prepared` as often as
    the Combiner changes."""
    if fashioniq_captions not in FASHIONIQ_CAPTION_MODES:
        raise ValueError(
            f"fashioniq_captions must be one of {', '.join(FASHIONIQ_CAPTION_MODES)}, got {fashioniq_captions!r}."
        )
    tasks = load_benchmark(benchmark, data_dir, split)
    with eval_mode(model):
        return [prepare_task(model, processor, task, fashioniq_captions, cache_dir, batch_size, num_workers,
                             show_progress) for task in tasks]


def evaluate_prepared(model, prepared_tasks: list[PreparedTask], method: str = "scot", *,
                      processor=None) -> EvaluationResult:
    """Compose the queries of prepared tasks with `method`, rank their galleries and compute the paper metrics.

    FashionIQ metrics are per category (`dress_R@10`, ...) plus `average_R@10` / `average_R@50`, the mean over
    categories as in the papers' tables; a test split gives submission files instead. The model is in eval mode for
    the call (no Combiner dropout) and restored afterwards. `processor` is needed only by a composer that reads the
    modification's tokens rather than its cached embedding (the pseudo-word composer, which also reads the reference
    images' token states that `prepare_task` encodes for it: `prepared.reference_features`)."""
    if not prepared_tasks:
        raise ValueError("evaluate_prepared needs at least one prepared task.")
    check_method(method)
    first = prepared_tasks[0]
    protocol = get_protocol(first.benchmark)
    device, _ = model_device_dtype(model)
    result = EvaluationResult(benchmark=first.benchmark, split=first.split, method=method,
                              fashioniq_captions=first.fashioniq_captions)
    with eval_mode(model):
        for prepared in prepared_tasks:
            queries = query_embeddings(model, prepared.reference_embeds, prepared.text_embeds, method,
                                       query_texts=prepared.query_texts, processor=processor,
                                       reference_norms=prepared.reference_norms, text_norms=prepared.text_norms,
                                       reference_available=prepared.reference_available,
                                       reference_features=prepared.reference_features,
                                       reference_feature_rows=prepared.reference_feature_rows,
                                       gallery_embeds=prepared.gallery_embeds)
            with torch.inference_mode():
                scores = similarity_scores(queries, prepared.gallery_embeds, device)
            metric_values, submission = protocol.evaluate_task(prepared, scores)
            result.metric_values.extend(metric_values)
            result.submissions.update(submission)
            result.counts[prepared.name] = prepared.counts
    result.metric_values.extend(protocol.summarize(result.metric_values))
    return result


def evaluate_benchmark(model, processor, benchmark: str, data_dir, split: str = "val", method: str = "scot", *,
                       fashioniq_captions: str = "clip4cir", cache_dir=None, batch_size: int = 64,
                       num_workers: int = 0, show_progress: bool = True) -> EvaluationResult:
    """`prepare_benchmark` then `evaluate_prepared`: the paper metrics of `model` on one benchmark split."""
    check_method(method)
    prepared = prepare_benchmark(model, processor, benchmark, data_dir, split, fashioniq_captions=fashioniq_captions,
                                 cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers,
                                 show_progress=show_progress)
    return evaluate_prepared(model, prepared, method, processor=processor)


__all__ = ["evaluate_benchmark", "evaluate_prepared", "prepare_benchmark"]
