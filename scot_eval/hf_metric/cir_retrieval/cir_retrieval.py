"""Composed image retrieval metrics as an `evaluate` module: FashionIQ Recall@K, CIRR Recall@K and Recall_subset@K,
CIRCO mAP@K, computed by the same functions as `scot_eval.metrics` (this file only adapts their inputs).

    import evaluate
    from scot_eval import CIR_RETRIEVAL_METRIC  # the folder holding this file

    cirr = evaluate.load(CIR_RETRIEVAL_METRIC, "cirr")
    cirr.compute(scores=scores, reference_indices=references, target_indices=targets, subset_indices=subsets)

Configurations: `recall` (the default; FashionIQ's protocol, the reference stays in the gallery), `cirr`, `circo`.
Loading reads this local file only: nothing is downloaded.
"""

import datasets
import evaluate
import numpy as np

from scot_eval import metrics

_CITATION = """\
@inproceedings{liu2021cirr,
  title={Image Retrieval on Real-life Images with Pre-trained Vision-and-Language Models},
  author={Liu, Zheyuan and Rodriguez-Opazo, Cristian and Teney, Damien and Gould, Stephen},
  booktitle={ICCV}, year={2021}
}
@inproceedings{baldrati2023searle,
  title={Zero-Shot Composed Image Retrieval with Textual Inversion},
  author={Baldrati, Alberto and Agnolucci, Lorenzo and Bertini, Marco and Del Bimbo, Alberto},
  booktitle={ICCV}, year={2023}
}
"""

_DESCRIPTION = """\
Recall@K and mAP@K in percent for composed image retrieval, from a score matrix (one row of gallery similarities per
query, higher is more similar) and gallery indices. Ties are broken by gallery order. `recall`: the share of queries
whose target is among the first K (FashionIQ). `cirr`: the same with each query's reference image removed from its
ranking, plus Recall_subset@K within the query's image set. `circo`: mAP@K over each query's ground truths, with the
denominator min(#ground truths, K) (#ground truths: `num_ground_truths`, the annotated count, where given).
"""

_KWARGS_DESCRIPTION = """
Args:
    scores: one row of `gallery_size` similarities per query.
    target_indices (`recall`, `cirr`): the gallery index of each query's target.
    reference_indices (`cirr`): the gallery index of each query's reference image, removed from its ranking.
    subset_indices (`cirr`): per query, the gallery indices of its image set (`img_set.members`).
    ground_truth_indices (`circo`): per query, the gallery indices of its ground truths.
    num_ground_truths (`circo`): per query, how many ground truths are annotated (default: the length of each
        list); CIRCO's server divides by all of them, also those missing from the gallery.
    ks: the cut-offs K (default: FashionIQ (10, 50), CIRR (1, 5, 10, 50), CIRCO (5, 10, 25, 50)).
    subset_ks (`cirr`): the cut-offs of Recall_subset (default (1, 2, 3)).
Returns:
    `{"R@10": ..., "R@50": ...}`, CIRR also `"Rsubset@1"`, ..., CIRCO `{"mAP@5": ..., ...}`: percentages.
Examples:
    >>> recall = evaluate.load(CIR_RETRIEVAL_METRIC)
    >>> recall.compute(scores=[[0.9, 0.1], [0.2, 0.8]], target_indices=[0, 0], ks=[1])
    {'R@1': 50.0}
"""

_SCORES = datasets.Sequence(datasets.Value("float64"))  # float64 holds float16 / float32 scores exactly
_INDEX = datasets.Value("int64")
_INDICES = datasets.Sequence(datasets.Value("int64"))
FEATURES = {
    "recall": datasets.Features({"scores": _SCORES, "target_indices": _INDEX}),
    "cirr": datasets.Features({"scores": _SCORES, "reference_indices": _INDEX, "target_indices": _INDEX,
                               "subset_indices": _INDICES}),
    "circo": datasets.Features({"scores": _SCORES, "ground_truth_indices": _INDICES}),
}
DEFAULT_KS = {"recall": (10, 50), "cirr": (1, 5, 10, 50), "circo": (5, 10, 25, 50)}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CirRetrieval(evaluate.Metric):
    def _protocol(self) -> str:
        name = "recall" if self.config_name == "default" else self.config_name
        if name not in FEATURES:
            raise ValueError(f"Unknown configuration {self.config_name!r} of cir_retrieval: choose one of "
                             f"{', '.join(FEATURES)}.")
        return name

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=FEATURES[self._protocol()],
        )

    def _compute(self, scores, target_indices=None, reference_indices=None, subset_indices=None,
                 ground_truth_indices=None, ks=None, subset_ks=(1, 2, 3), num_ground_truths=None):
        protocol = self._protocol()
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2:
            raise ValueError("scores must hold one row of the same gallery size per query.")
        ks = tuple(ks) if ks is not None else DEFAULT_KS[protocol]
        if protocol == "recall":
            return metrics.recall_at_k(scores, target_indices, ks)
        if protocol == "cirr":
            results = metrics.cirr_recall(scores, reference_indices, target_indices, ks)
            results.update(metrics.cirr_recall_subset(scores, reference_indices, target_indices, subset_indices,
                                                      tuple(subset_ks)))
            return results
        return metrics.circo_map_at_k(scores, ground_truth_indices, ks, num_ground_truths=num_ground_truths)
