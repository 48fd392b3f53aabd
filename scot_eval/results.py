"""What an evaluation returns: `EvaluationResult`, a typed record of the paper metrics, the per-task counts and the
submission files, with its formatters (the paper-style table, the counts, `metrics.json`).

Pure Python on purpose: `hub_cards` and anything else that only reads results import this module without torch.
The dict form (`to_dict` / `from_dict`) is the `metrics.json` this package has always written:
`{"benchmark", "split", "method", "metrics": {"R@1": 31.2, "dress_R@10": ...}, "counts": {task: {...}}}`
(+ `"fashioniq_captions"`, `"model"` where known).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# The paper metrics, by the short name the tables print (`R@10`, `Rsubset@1`, `mAP@5`), and the id of each in a
# model-index (sentence-transformers cards' style: "recall@10").
METRIC_KINDS = {"R": "recall", "Rsubset": "recall_subset", "mAP": "map"}
# The group of FashionIQ's mean over its categories; the categories themselves are groups named after the task.
AVERAGE = "average"
# Table labels of the groups (a group without one is shown capitalised)
GROUP_TITLES = {AVERAGE: "Average", "dress": "Dress", "shirt": "Shirt", "toptee": "Top/Tee"}
# How many query ids the printed counts list (metrics.json holds them all)
_LISTED_QUERIES = 10


@dataclass(frozen=True)
class MetricValue:
    """One paper metric in percent: `kind@k` (e.g. `R@10`), for a `group` where the benchmark has several (a
    FashionIQ category, or `"average"` for their mean), else for the whole benchmark."""

    kind: str
    k: int
    value: float
    group: str | None = None

    def __post_init__(self):
        if self.kind not in METRIC_KINDS:
            raise ValueError(f"Unknown metric kind {self.kind!r}: expected one of {', '.join(METRIC_KINDS)}.")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"A metric's cut-off k must be a positive integer, got {self.k!r}.")

    @property
    def name(self) -> str:
        """The table's column name: `R@10`."""
        return f"{self.kind}@{self.k}"

    @property
    def key(self) -> str:
        """The key in `metrics.json`'s `metrics`: `R@10`, or `dress_R@10` within a group."""
        return f"{self.group}_{self.name}" if self.group else self.name

    @property
    def metric_id(self) -> str:
        """The model-index metric type: `recall@10`, `recall_subset@1`, `map@5`."""
        return f"{METRIC_KINDS[self.kind]}@{self.k}"

    @classmethod
    def from_key(cls, key: str, value: float) -> MetricValue:
        """The inverse of `key`, for results read back from their dict form (`metrics.json`, a trainer's log)."""
        group, _, name = key.rpartition("_")
        kind, _, k = name.partition("@")
        if kind not in METRIC_KINDS or not k.isdigit() or int(k) < 1:
            raise ValueError(f"{key!r} is not a metric of this package: expected a name like 'R@10', 'Rsubset@1', "
                             "'mAP@5' or, for a FashionIQ category, 'dress_R@10'.")
        return cls(kind, int(k), float(value), group or None)


@dataclass
class TaskCounts:
    """How much of one retrieval task could be evaluated: images missing or unreadable are skipped, and so are the
    queries that need them (`skipped_by_reason`), except on a split ranked for a submission, which lists every
    query: there a query whose reference image is unusable is ranked by its text alone (`text_only_queries`)."""

    queries: int
    queries_evaluated: int
    gallery_images: int
    gallery_images_used: int
    missing_images: int
    unreadable_images: int
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    # CIRCO only: annotated ground truths whose image is not in the gallery (they still count in the mAP
    # denominator, as on CIRCO's server, so a missing one lowers the mAP)
    ground_truths_not_in_gallery: int | None = None
    # Ids of the queries ranked by their modification text alone because their reference image is missing or
    # unreadable (a test split's submission must hold every query)
    text_only_queries: list[str] = field(default_factory=list)

    @property
    def queries_skipped(self) -> int:
        return self.queries - self.queries_evaluated

    def to_dict(self) -> dict:
        counts = {
            "queries": self.queries, "queries_evaluated": self.queries_evaluated,
            "queries_skipped": self.queries_skipped, "skipped_by_reason": dict(self.skipped_by_reason),
            "gallery_images": self.gallery_images, "gallery_images_used": self.gallery_images_used,
            "missing_images": self.missing_images, "unreadable_images": self.unreadable_images,
        }
        if self.ground_truths_not_in_gallery is not None:
            counts["ground_truths_not_in_gallery"] = self.ground_truths_not_in_gallery
        if self.text_only_queries:
            counts["text_only_queries"] = list(self.text_only_queries)
        return counts

    @classmethod
    def from_dict(cls, counts: dict) -> TaskCounts:
        return cls(
            queries=counts["queries"], queries_evaluated=counts["queries_evaluated"],
            gallery_images=counts["gallery_images"], gallery_images_used=counts["gallery_images_used"],
            missing_images=counts["missing_images"], unreadable_images=counts["unreadable_images"],
            skipped_by_reason=dict(counts.get("skipped_by_reason") or {}),
            ground_truths_not_in_gallery=counts.get("ground_truths_not_in_gallery"),
            text_only_queries=list(counts.get("text_only_queries") or []),
        )

    def describe(self, name: str) -> str:
        """One line: `cirr: 6/6 queries evaluated, gallery 12/12 images`, then what was skipped."""
        line = (f"{name}: {self.queries_evaluated}/{self.queries} queries evaluated, gallery "
                f"{self.gallery_images_used}/{self.gallery_images} images")
        if self.missing_images or self.unreadable_images:
            line += f" ({self.missing_images} missing, {self.unreadable_images} unreadable images skipped)"
        if self.skipped_by_reason:
            line += "; skipped: " + ", ".join(f"{count} {reason}" for reason, count in self.skipped_by_reason.items())
        if self.ground_truths_not_in_gallery:
            line += (f"; {self.ground_truths_not_in_gallery} ground truths not in the gallery (still counted in the "
                     "mAP denominator, as CIRCO's server does)")
        if self.text_only_queries:
            shown = ", ".join(self.text_only_queries[:_LISTED_QUERIES])
            more = len(self.text_only_queries) - _LISTED_QUERIES
            line += (f"; {len(self.text_only_queries)} queries ranked by their text alone (reference image missing "
                     f"or unreadable): {shown}" + (f" and {more} more (metrics.json lists all)" if more > 0 else ""))
        return line


@dataclass
class EvaluationResult:
    """The paper metrics of one method on one benchmark split.

    `metric_values` is empty on a split without public targets (CIRR test1, CIRCO test): `submissions` then maps
    each submission file name to its JSON object. `counts` maps each task (a FashionIQ category, or the benchmark)
    to what could be evaluated of it. `fashioniq_captions` is the FashionIQ caption protocol (None elsewhere).
    """

    benchmark: str
    split: str | None
    method: str
    metric_values: list[MetricValue] = field(default_factory=list)
    counts: dict[str, TaskCounts] = field(default_factory=dict)
    submissions: dict[str, dict] = field(default_factory=dict)
    fashioniq_captions: str | None = None
    model: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """`{key: percent}` in the order measured, as in `metrics.json` (`R@1`, ..., or `dress_R@10`, ...)."""
        return {metric.key: metric.value for metric in self.metric_values}

    def metric(self, kind: str, k: int, group: str | None = None) -> float:
        """One value by its fields: `result.metric("R", 10, group="average")`."""
        for metric in self.metric_values:
            if (metric.kind, metric.k, metric.group) == (kind, k, group):
                return metric.value
        raise KeyError(f"{self.benchmark} {self.split} has no metric {kind}@{k}" + (f" for {group}" if group else ""))

    # -- dict / JSON form --------------------------------------------------------------------------------------------

    def to_dict(self, include_submissions: bool = False) -> dict:
        """The `metrics.json` object (JSON-compatible); with `include_submissions`, also `"submissions"`."""
        data = {"benchmark": self.benchmark, "split": self.split, "method": self.method, "metrics": self.metrics,
                "counts": {name: counts.to_dict() for name, counts in self.counts.items()}}
        if include_submissions:
            data["submissions"] = self.submissions
        if self.fashioniq_captions is not None:
            data["fashioniq_captions"] = self.fashioniq_captions
        if self.model is not None:
            data["model"] = self.model
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EvaluationResult:
        """A result from its dict form (`to_dict`, `metrics.json`, or a dict built by hand with at least `benchmark`
        and `metrics`); `method` defaults to `scot`. Keys this class does not know (a card's labels) are ignored."""
        if not isinstance(data, dict) or "benchmark" not in data:
            raise ValueError(f"An evaluation result needs at least a 'benchmark' and its 'metrics', got {data!r}.")
        return cls(
            benchmark=data["benchmark"], split=data.get("split"), method=data.get("method", "scot"),
            metric_values=[MetricValue.from_key(key, value) for key, value in (data.get("metrics") or {}).items()],
            counts={name: TaskCounts.from_dict(counts) for name, counts in (data.get("counts") or {}).items()},
            submissions=dict(data.get("submissions") or {}), fashioniq_captions=data.get("fashioniq_captions"),
            model=data.get("model"),
        )

    @classmethod
    def read(cls, path: str | Path) -> EvaluationResult:
        """A result from a `metrics.json` file (submission files are not read back)."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, KeyError) as error:
            raise ValueError(f"{path} is not an evaluation result (metrics.json) of this package: {error}") from None

    def __getitem__(self, key: str):
        # Dict-style reading (`result["metrics"]`) for callers written when results were plain dicts; kept for one
        # release. New code reads the fields.
        return self.to_dict(include_submissions=True)[key]

    # -- reports -----------------------------------------------------------------------------------------------------

    def title(self) -> str:
        title = f"{self.benchmark} {self.split}, method {self.method}"
        return title + (f", captions {self.fashioniq_captions}" if self.fashioniq_captions else "")

    def format_table(self) -> str:
        """The metrics laid out like the papers' tables: one row for the method, a column per metric; grouped
        metrics (FashionIQ) under a heading per group, the average first."""
        if not self.metric_values:
            return f"{self.title()}: no public targets; submission files written instead of metrics."
        groups = list(dict.fromkeys(metric.group for metric in self.metric_values))
        if groups == [None]:
            names = [metric.name for metric in self.metric_values]
            lines = [f"{'method':<8}" + "".join(f"{name:>11}" for name in names),
                     f"{self.method:<8}" + "".join(f"{metric.value:>11.2f}" for metric in self.metric_values)]
            return "\n".join([self.title(), *lines])
        groups.sort(key=lambda group: group != AVERAGE)  # stable: the average first, then the measured order
        by_group = {group: [metric for metric in self.metric_values if metric.group == group] for group in groups}
        header = f"{'':<8}" + "".join(f"{_group_title(group):^{8 * len(by_group[group])}}" for group in groups)
        subheader = f"{'method':<8}" + "".join(f"{metric.name:>8}" for group in groups for metric in by_group[group])
        row = f"{self.method:<8}" + "".join(f"{metric.value:>8.2f}" for group in groups for metric in by_group[group])
        return "\n".join([self.title(), header, subheader, row])

    def format_counts(self) -> str:
        return "\n".join(counts.describe(name) for name, counts in self.counts.items())

    def write_outputs(self, output_dir: str | Path) -> list[Path]:
        """Write `metrics.json` (everything but the submissions) and each submission file; returns the paths."""
        from scot_core import atomic_write_json

        output_dir = Path(output_dir)
        written = [output_dir / "metrics.json"]
        atomic_write_json(written[0], self.to_dict())
        for file_name, submission in self.submissions.items():
            written.append(output_dir / file_name)
            atomic_write_json(written[-1], submission, indent=None)
        return written


def _group_title(group: str) -> str:
    return GROUP_TITLES.get(group, group.capitalize())


def mean_over_groups(values: Iterable[MetricValue], group: str = AVERAGE) -> list[MetricValue]:
    """Per metric name, the mean of its values over the groups (FashionIQ's average over categories)."""
    per_name: dict[tuple[str, int], list[float]] = {}
    for metric in values:
        per_name.setdefault((metric.kind, metric.k), []).append(metric.value)
    return [MetricValue(kind, k, sum(numbers) / len(numbers), group) for (kind, k), numbers in per_name.items()]


__all__ = ["AVERAGE", "METRIC_KINDS", "EvaluationResult", "MetricValue", "TaskCounts", "mean_over_groups"]
