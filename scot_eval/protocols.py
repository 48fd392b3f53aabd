"""One protocol object per benchmark: how its queries are phrased, which metrics it reports and how they are
computed, and what it submits where the split has no public targets. Everything benchmark-specific in the evaluation
lives here, so that preparing, ranking and reporting never ask which benchmark they are running.

- FashionIQ: the two relative captions joined (CLIP4Cir's "C1 and c2", or SEARLE's both orders); R@10 and R@50 over
  each category's gallery, the reference kept; the mean over categories. No test server, so no submission.
- CIRR: the reference removed from each ranking before R@1/5/10/50; Rsubset@1/2/3 within the query's image set;
  test1 gives the two submission files (`recall`, top 50; `recall_subset`, top 3).
- CIRCO: mAP@5/10/25/50 over each query's annotated ground truths, dividing by all of them as the server does (a
  ground truth missing from the gallery lowers the mAP); test gives the submission file (top 50 ids).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

import torch

from .benchmarks import CIRQuery
from .metrics import circo_map_at_k, cirr_recall, cirr_recall_subset, recall_at_k, subset_topk_indices, topk_indices
from .results import MetricValue, mean_over_groups

if TYPE_CHECKING:
    from .tasks import PreparedTask

FASHIONIQ_CAPTION_MODES = ("clip4cir", "searle")


def fashioniq_query_texts(captions, protocol: str = "clip4cir") -> list[str]:
    """The text(s) a FashionIQ query is encoded with, from its two relative captions.

    - `"clip4cir"` (CLIP4Cir, Baldrati et al.; what most tables use): one text,
      `f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"`. Python's `capitalize` also lowercases the rest
      of the first caption, exactly as CLIP4Cir's validation does.
    - `"searle"` (SEARLE, Baldrati et al. 2023): both orders, `"{c1} and {c2}"` and `"{c2} and {c1}"` (each caption
      stripped of ".?, ", no capitalisation); the two queries are embedded separately and the evaluation averages
      the two normalised query embeddings and normalises again.
    """
    first, second = (caption.strip(".?, ") for caption in captions)
    if protocol == "clip4cir":
        return [f"{first.capitalize()} and {second}"]
    if protocol == "searle":
        return [f"{first} and {second}", f"{second} and {first}"]
    raise ValueError(f"Unknown FashionIQ caption protocol {protocol!r}: choose one of "
                     f"{', '.join(FASHIONIQ_CAPTION_MODES)}.")


def _metric_values(measured: dict[str, float], group: str | None = None) -> list[MetricValue]:
    """The metric functions' `{"R@10": value}` dicts as typed values."""
    return [replace(MetricValue.from_key(name, value), group=group) for name, value in measured.items()]


class BenchmarkProtocol:
    """The evaluation protocol of one benchmark. Subclasses set the class attributes and implement `metrics` and,
    where the benchmark has a test server, `submission`."""

    name: ClassVar[str]
    # Caption protocols the benchmark's queries can be phrased with (FashionIQ only)
    caption_modes: ClassVar[tuple[str, ...]] = ()
    # Whether queries have sets of ground truths whose images may be missing from the gallery (counted)
    counts_ground_truths: ClassVar[bool] = False

    def query_texts(self, query: CIRQuery, caption_mode: str | None = None) -> list[str]:
        """The phrasing(s) of a query's modification; several are embedded separately and their queries averaged."""
        return [query.texts[0]]

    def gallery_cache_split(self, split: str) -> str:
        """The split name the gallery embeddings are cached under (CIRCO's splits share one gallery)."""
        return split

    def evaluate_task(self, prepared: PreparedTask, scores: torch.Tensor) -> tuple[list[MetricValue], dict]:
        """(metrics, submission files) of one prepared task from its `[queries, gallery]` scores: the metrics where
        the split has public targets, else the submission."""
        if not prepared.query_ids:
            raise ValueError(f"{prepared.benchmark} {prepared.split} {prepared.name}: no query could be evaluated "
                             f"({prepared.counts.skipped_by_reason}). Run the `check` command on the data folder.")
        if prepared.has_targets:
            return self.metrics(prepared, scores), {}
        return [], self.submission(prepared, scores)

    def metrics(self, prepared: PreparedTask, scores: torch.Tensor) -> list[MetricValue]:
        raise NotImplementedError

    def submission(self, prepared: PreparedTask, scores: torch.Tensor) -> dict[str, dict]:
        raise ValueError(f"{self.name} {prepared.split} has no targets to evaluate against and no submission "
                         "format: use the val split.")

    def summarize(self, values: list[MetricValue]) -> list[MetricValue]:
        """Metrics over all tasks, appended after theirs (FashionIQ: the mean over categories)."""
        return []


class FashionIQProtocol(BenchmarkProtocol):
    name = "fashioniq"
    caption_modes = FASHIONIQ_CAPTION_MODES
    ks = (10, 50)

    def query_texts(self, query: CIRQuery, caption_mode: str | None = None) -> list[str]:
        return fashioniq_query_texts(query.texts, caption_mode or "clip4cir")

    def metrics(self, prepared: PreparedTask, scores: torch.Tensor) -> list[MetricValue]:
        # one gallery per category: its metrics are that category's, the tables' columns
        return _metric_values(recall_at_k(scores, prepared.target_index, self.ks), group=prepared.name)

    def summarize(self, values: list[MetricValue]) -> list[MetricValue]:
        return mean_over_groups(values) if values else []


class CIRRProtocol(BenchmarkProtocol):
    name = "cirr"
    ks, subset_ks = (1, 5, 10, 50), (1, 2, 3)
    submission_depth, subset_submission_depth = 50, 3

    def metrics(self, prepared: PreparedTask, scores: torch.Tensor) -> list[MetricValue]:
        measured = cirr_recall(scores, prepared.reference_index, prepared.target_index, self.ks)
        measured.update(cirr_recall_subset(scores, prepared.reference_index, prepared.target_index,
                                           prepared.subset_indices, self.subset_ks))
        return _metric_values(measured)

    def submission(self, prepared: PreparedTask, scores: torch.Tensor) -> dict[str, dict]:
        names = prepared.gallery_names
        top = topk_indices(scores, self.submission_depth, exclude_index=prepared.reference_index).tolist()
        subset_top = subset_topk_indices(scores, prepared.reference_index, prepared.subset_indices,
                                         self.subset_submission_depth)
        header = {"version": "rc2"}
        return {
            f"cirr_{prepared.split}_recall.json": {**header, "metric": "recall", **{
                pair_id: [names[index] for index in row] for pair_id, row in zip(prepared.query_ids, top)}},
            f"cirr_{prepared.split}_recall_subset.json": {**header, "metric": "recall_subset", **{
                pair_id: [names[index] for index in row] for pair_id, row in zip(prepared.query_ids, subset_top)}},
        }


class CIRCOProtocol(BenchmarkProtocol):
    name = "circo"
    counts_ground_truths = True
    ks = (5, 10, 25, 50)
    submission_depth = 50

    def gallery_cache_split(self, split: str) -> str:
        return "unlabeled2017"  # val and test rank the same gallery (COCO unlabeled2017): one cache entry serves both

    def metrics(self, prepared: PreparedTask, scores: torch.Tensor) -> list[MetricValue]:
        return _metric_values(circo_map_at_k(scores, prepared.ground_truth_indices, self.ks,
                                             num_ground_truths=prepared.ground_truth_counts))

    def submission(self, prepared: PreparedTask, scores: torch.Tensor) -> dict[str, dict]:
        top = topk_indices(scores, self.submission_depth).tolist()
        return {f"circo_{prepared.split}_submission.json": {
            query_id: [int(prepared.gallery_names[index]) for index in row]
            for query_id, row in zip(prepared.query_ids, top)}}


PROTOCOLS: dict[str, BenchmarkProtocol] = {
    protocol.name: protocol for protocol in (FashionIQProtocol(), CIRRProtocol(), CIRCOProtocol())
}


def get_protocol(benchmark: str) -> BenchmarkProtocol:
    if benchmark not in PROTOCOLS:
        raise ValueError(f"Unknown benchmark {benchmark!r}: choose one of {', '.join(PROTOCOLS)}.")
    return PROTOCOLS[benchmark]


__all__ = [
    "FASHIONIQ_CAPTION_MODES",
    "PROTOCOLS",
    "BenchmarkProtocol",
    "CIRCOProtocol",
    "CIRRProtocol",
    "FashionIQProtocol",
    "fashioniq_query_texts",
    "get_protocol",
]
