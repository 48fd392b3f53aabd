"""Calibrating the grounding gate (`ScotConfig.grounding_gate_neighbours` / `grounding_gate_threshold`) on the
triplets' validation slice, with the training images as the gallery.

The gate answers a query with the reference image alone where its modification text does not pick out one of the
reference's k nearest gallery images (`modeling_scot.text_grounding`). Its threshold θ comes from a permutation
null: the grounding each validation row gets with the modification text of another, random row — a text about
something else. θ is the (1 − α) quantile of that null, so the gate stays open for a text that picks out a
look-alike better than a fraction 1 − α of unrelated texts do (α 0.5: better than the median unrelated text).

The statistic and α can be chosen on the same slice (`select_model_gate`, docs/ablations.md's seventh round): first
the statistic of `GROUNDING_GATE_STATISTICS` whose own-text groundings are best told from the null (the AUC,
`grounding_auc`), then α by the sixth round's rule: the strictest candidate of `GROUNDING_GATE_ALPHAS` whose
composed → floor image R@1 (over all the training images, the reference left out) is not below the ungated
model's, or no gate at all when every candidate loses.
"""

import torch

from modeling_scot import GalleryStatistics, nearest_gallery_images, text_grounding
from modeling_scot.configuration_scot import GROUNDING_GATE_STATISTICS

PERMUTATIONS = 50
# k when the model's config does not set one (`ScotConfig.grounding_gate_neighbours` 0): the sixth round's
DEFAULT_GROUNDING_GATE_NEIGHBOURS = 10
# The α candidates of the sixth round, from the most lenient (few queries gated) to the strictest
GROUNDING_GATE_ALPHAS = (0.9, 0.75, 0.5, 0.25, 0.1)


def null_groundings(image_embeds: torch.Tensor, text_embeds: torch.Tensor, gallery_embeds: torch.Tensor,
                    neighbours: int, permutations: int = PERMUTATIONS, seed: int = 0,
                    gallery_statistics: GalleryStatistics | None = None,
                    statistic: str = "lookalike") -> tuple[torch.Tensor, torch.Tensor]:
    """`([R], [permutations * R])`: the grounding (`text_grounding` by `statistic`) of each row's own modification
    text among its reference's `neighbours` nearest gallery images, and the groundings of randomly permuted texts
    (the null). All embeddings normalised; rows `[R, d]`, gallery `[G, d]`."""
    if len(image_embeds) != len(text_embeds) or len(image_embeds) < 2:
        raise ValueError(f"The grounding gate's calibration needs at least two rows with one image and one text each, "
                         f"got {len(image_embeds)} images and {len(text_embeds)} texts.")
    statistics = gallery_statistics or GalleryStatistics.from_embeds(gallery_embeds)
    looks = nearest_gallery_images(image_embeds, gallery_embeds, neighbours)
    own = text_grounding(text_embeds, looks, statistics, image_embeds, statistic)
    generator = torch.Generator().manual_seed(seed)
    null = torch.cat([text_grounding(text_embeds[torch.randperm(len(text_embeds), generator=generator)], looks,
                                     statistics, image_embeds, statistic) for _ in range(permutations)])
    return own, null


def grounding_auc(own: torch.Tensor, null: torch.Tensor) -> float:
    """P(own > null) + ½ P(own = null): how well a statistic tells the rows' own texts from the permuted ones (1:
    always, 0.5: no better than chance)."""
    ordered = null.double().sort().values  # counts by binary search: a large slice never forms own × null pairs
    below = torch.searchsorted(ordered, own.double(), right=False)
    at_most = torch.searchsorted(ordered, own.double(), right=True)
    return float((below + 0.5 * (at_most - below)).sum() / (len(own) * len(null)))


def calibrate_grounding_threshold(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                                  gallery_embeds: torch.Tensor, neighbours: int, alpha: float,
                                  permutations: int = PERMUTATIONS, seed: int = 0,
                                  statistic: str = "lookalike") -> dict[str, float]:
    """θ for `ScotConfig.grounding_gate_threshold`: the (1 − `alpha`) quantile of the permutation null
    (`null_groundings`) on validation rows, the share of those rows the gate then answers with the image alone, and
    the statistic's `grounding_auc`: `{"threshold": θ, "gated_fraction": ..., "auc": ...}`."""
    check_alpha(alpha)
    return threshold_from_null(*null_groundings(image_embeds, text_embeds, gallery_embeds, neighbours, permutations,
                                                seed, statistic=statistic), alpha)


def check_alpha(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"grounding_gate_alpha must be in (0, 1), got {alpha}.")
    return alpha


def threshold_from_null(own: torch.Tensor, null: torch.Tensor, alpha: float) -> dict[str, float]:
    """θ = the (1 − `alpha`) quantile of the null groundings, the share of the `own` groundings below it, and the
    statistic's `grounding_auc`."""
    threshold = float(null.quantile(1.0 - check_alpha(alpha)))
    return {"threshold": threshold, "gated_fraction": float((own < threshold).float().mean()),
            "auc": grounding_auc(own, null)}


def validation_embeds(eval_dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised reference image and modification embeddings of a cached validation slice."""
    rows, cache = eval_dataset.cache.row_indices, eval_dataset.cache
    normalize = torch.nn.functional.normalize
    return (normalize(cache.image_embeds[rows["image"]].float(), dim=-1),
            normalize(cache.text_embeds[rows["modification"]].float(), dim=-1))


def calibrate_model_gate(model, eval_dataset, gallery_embeds: torch.Tensor, alpha: float,
                         neighbours: int | None = None, seed: int = 0,
                         statistic: str | None = None) -> dict[str, float]:
    """Calibrate θ on a cached validation slice (`CachedTripletDataset`: its reference image and modification
    embeddings) against `gallery_embeds` (the training images) and write the gate into `model.config`. k is
    `neighbours`, else the config's `grounding_gate_neighbours`, else `DEFAULT_GROUNDING_GATE_NEIGHBOURS`; the
    statistic is `statistic`, else the config's `grounding_gate_statistic`."""
    neighbours = neighbours or model.config.grounding_gate_neighbours or DEFAULT_GROUNDING_GATE_NEIGHBOURS
    statistic = statistic or model.config.grounding_gate_statistic
    images, texts = validation_embeds(eval_dataset)
    calibration = calibrate_grounding_threshold(images, texts, torch.nn.functional.normalize(
        gallery_embeds.float(), dim=-1), neighbours, alpha, seed=seed, statistic=statistic)
    model.config.grounding_gate_neighbours = neighbours
    model.config.grounding_gate_threshold = calibration["threshold"]
    model.config.grounding_gate_statistic = statistic
    return calibration


def floor_recall(model, eval_dataset, gallery_embeds: torch.Tensor, neighbours: int | None = None,
                 threshold: float | None = None, statistic: str | None = None) -> tuple[float, float]:
    """Composed -> floor image R@1 (%) of the validation rows (`CachedTripletDataset` rows with their floor probe)
    over `gallery_embeds` (the training images; copies of the reference left out), gated at `threshold` with k =
    `neighbours` and `statistic` (else the config's; `threshold` None: no gate), and the share of rows gated (%).
    The model's config and mode are restored."""
    from scot_core.encoding import eval_mode, model_device_dtype

    images, texts, floors, gallery = _floor_probe(eval_dataset, gallery_embeds)
    device, dtype = model_device_dtype(model)
    gate = {}  # without the gallery's view get_composed_features gates nothing, whatever the config says
    if threshold is not None:
        neighbours = neighbours or DEFAULT_GROUNDING_GATE_NEIGHBOURS
        gate = {"gallery_neighbour_embeds": nearest_gallery_images(images, gallery, neighbours).to(device, dtype),
                "gallery_statistics": GalleryStatistics.from_embeds(gallery)}
    config = model.config
    saved = config.grounding_gate_neighbours, config.grounding_gate_threshold, config.grounding_gate_statistic
    try:
        if threshold is not None:
            config.grounding_gate_neighbours, config.grounding_gate_threshold = neighbours, threshold
            config.grounding_gate_statistic = statistic or config.grounding_gate_statistic
        with eval_mode(model), torch.no_grad():
            queries, text_weight = model.get_composed_features(
                image_embeds=images.to(device, dtype), text_embeds=texts.to(device, dtype), return_text_weight=True,
                **gate)
    finally:
        config.grounding_gate_neighbours, config.grounding_gate_threshold, config.grounding_gate_statistic = saved
    gated = (text_weight == 0).float().mean() if threshold is not None else torch.tensor(0.0)
    return _floor_hit_rate(queries.float().cpu(), images, floors, gallery), 100 * float(gated)


def reference_floor_recall(eval_dataset, gallery_embeds: torch.Tensor) -> float:
    """`floor_recall` of the image-only query: the reference image embedding itself retrieving the floor image."""
    images, _, floors, gallery = _floor_probe(eval_dataset, gallery_embeds)
    return _floor_hit_rate(images, images, floors, gallery)


def _floor_probe(eval_dataset, gallery_embeds: torch.Tensor):
    """The normalised (reference images, modifications, floor images) of cached rows with their floor probe, and the
    normalised gallery."""
    normalize = torch.nn.functional.normalize
    rows = [eval_dataset[index] for index in range(len(eval_dataset))]
    if not rows or "probe_floor_image_embeds" not in rows[0]:
        raise ValueError("floor_recall needs validation rows with their floor probe (probe_floor_image_embeds): a "
                         "cached validation slice of a run with retrieved-image probes.")
    return tuple(normalize(torch.stack([row[key] for row in rows]).float(), dim=-1)
                 for key in ("image_embeds", "text_embeds", "probe_floor_image_embeds")) + (
        normalize(gallery_embeds.float(), dim=-1),)


def _floor_hit_rate(queries: torch.Tensor, images: torch.Tensor, floors: torch.Tensor, gallery: torch.Tensor) -> float:
    """R@1 (%) of `queries` retrieving each row's floor image among `gallery`, copies of the reference left out."""
    from modeling_scot.modeling_scot import SAME_IMAGE_COSINE

    same = images @ gallery.T >= SAME_IMAGE_COSINE
    answers = (floors @ gallery.T).argmax(dim=1)
    ranked = (queries @ gallery.T).masked_fill(same, float("-inf")).argmax(dim=1)
    return 100 * float((ranked == answers).float().mean())


def select_alpha(ungated_recall: float, recall_by_alpha: dict[float, float]) -> float | None:
    """The sixth round's rule: the strictest α (the smallest: the most queries gated) whose validation R@1 is not
    below the ungated one; None when every α loses."""
    kept = [alpha for alpha, recall in recall_by_alpha.items() if recall >= ungated_recall]
    return min(kept) if kept else None


def select_statistic(auc_by_statistic: dict[str, float]) -> str:
    """The seventh round's rule: the statistic with the highest validation AUC (the first listed on a tie)."""
    return max(auc_by_statistic, key=lambda statistic: auc_by_statistic[statistic])


def select_model_gate(model, eval_dataset, gallery_embeds: torch.Tensor,
                      alphas: tuple[float, ...] = GROUNDING_GATE_ALPHAS, neighbours: int | None = None,
                      seed: int = 0, statistics: tuple[str, ...] = GROUNDING_GATE_STATISTICS) -> dict[str, float]:
    """Choose the gate on the validation slice and write it into `model.config` (or turn it off,
    `grounding_gate_neighbours` 0, when no α qualifies): the statistic of `statistics` with the highest
    `grounding_auc` (`select_statistic`), then α by `select_alpha` on that statistic. Returns the selection as
    numbers, for the metrics: `selected` (1 or 0), `alpha` (0 when none), `threshold`, `gated_fraction`, `auc` (of
    the chosen statistic) and `auc_{statistic}` of each, `statistic_{statistic}` (1 for the chosen one), and the
    floor R@1 of the ungated model and at each α."""
    neighbours = neighbours or model.config.grounding_gate_neighbours or DEFAULT_GROUNDING_GATE_NEIGHBOURS
    images, texts = validation_embeds(eval_dataset)
    gallery = torch.nn.functional.normalize(gallery_embeds.float(), dim=-1)
    statistics_of_gallery = GalleryStatistics.from_embeds(gallery)
    groundings = {statistic: null_groundings(images, texts, gallery, neighbours, seed=seed,
                                             gallery_statistics=statistics_of_gallery, statistic=statistic)
                  for statistic in statistics}  # (own, null) of each statistic, computed once
    aucs = {statistic: grounding_auc(*pair) for statistic, pair in groundings.items()}
    statistic = select_statistic(aucs)
    ungated = floor_recall(model, eval_dataset, gallery_embeds)[0]
    recalls, calibrations = {}, {}
    for alpha in alphas:
        calibrations[alpha] = threshold_from_null(*groundings[statistic], alpha)
        recalls[alpha] = floor_recall(model, eval_dataset, gallery_embeds, neighbours,
                                      calibrations[alpha]["threshold"], statistic)[0]
    alpha = select_alpha(ungated, recalls)
    selection = {"selected": float(alpha is not None), "alpha": alpha or 0.0, "floor_R@1_ungated": ungated,
                 **{f"floor_R@1_alpha_{candidate}": recall for candidate, recall in recalls.items()},
                 **{f"auc_{name}": auc for name, auc in aucs.items()},
                 **{f"statistic_{name}": float(name == statistic) for name in statistics}}
    if alpha is None:
        model.config.grounding_gate_neighbours = 0
        return {**selection, "threshold": 0.0, "gated_fraction": 0.0, "auc": aucs[statistic]}
    model.config.grounding_gate_neighbours = neighbours
    model.config.grounding_gate_threshold = calibrations[alpha]["threshold"]
    model.config.grounding_gate_statistic = statistic
    return {**selection, **calibrations[alpha]}


__all__ = ["DEFAULT_GROUNDING_GATE_NEIGHBOURS", "GROUNDING_GATE_ALPHAS", "GROUNDING_GATE_STATISTICS",
           "calibrate_grounding_threshold", "calibrate_model_gate", "floor_recall", "grounding_auc", "null_groundings",
           "reference_floor_recall", "select_alpha", "select_model_gate", "select_statistic", "threshold_from_null",
           "validation_embeds"]
