"""Calibrating the grounding gate (`ScotConfig.grounding_gate_neighbours` / `grounding_gate_threshold`) on the
triplets' validation slice, with the training images as the gallery.

The gate answers a query with the reference image alone where its modification text does not pick out one of the
reference's k nearest gallery images (`modeling_scot.text_grounding`). Its threshold θ comes from a permutation
null: the grounding each validation row gets with the modification text of another, random row — a text about
something else. θ is the (1 − α) quantile of that null, so the gate stays open for a text that picks out a
look-alike better than a fraction 1 − α of unrelated texts do (α 0.5: better than the median unrelated text).
"""

import torch

from modeling_scot import GalleryStatistics, nearest_gallery_images, text_grounding

PERMUTATIONS = 50
# k when the model's config does not set one (`ScotConfig.grounding_gate_neighbours` 0): the sixth round's
DEFAULT_GROUNDING_GATE_NEIGHBOURS = 10


def null_groundings(image_embeds: torch.Tensor, text_embeds: torch.Tensor, gallery_embeds: torch.Tensor,
                    neighbours: int, permutations: int = PERMUTATIONS, seed: int = 0,
                    gallery_statistics: GalleryStatistics | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`([R], [permutations * R])`: the grounding of each row's own modification text among its reference's
    `neighbours` nearest gallery images, and the groundings of randomly permuted texts (the null). All embeddings
    normalised; rows `[R, d]`, gallery `[G, d]`."""
    if len(image_embeds) != len(text_embeds) or len(image_embeds) < 2:
        raise ValueError(f"The grounding gate's calibration needs at least two rows with one image and one text each, "
                         f"got {len(image_embeds)} images and {len(text_embeds)} texts.")
    statistics = gallery_statistics or GalleryStatistics.from_embeds(gallery_embeds)
    looks = nearest_gallery_images(image_embeds, gallery_embeds, neighbours)
    own = text_grounding(text_embeds, looks, statistics)
    generator = torch.Generator().manual_seed(seed)
    null = torch.cat([text_grounding(text_embeds[torch.randperm(len(text_embeds), generator=generator)], looks,
                                     statistics) for _ in range(permutations)])
    return own, null


def calibrate_grounding_threshold(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                                  gallery_embeds: torch.Tensor, neighbours: int, alpha: float,
                                  permutations: int = PERMUTATIONS, seed: int = 0) -> dict[str, float]:
    """θ for `ScotConfig.grounding_gate_threshold`: the (1 − `alpha`) quantile of the permutation null
    (`null_groundings`) on validation rows, and the share of those rows the gate then answers with the image
    alone: `{"threshold": θ, "gated_fraction": ...}`."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"grounding_gate_alpha must be in (0, 1), got {alpha}.")
    own, null = null_groundings(image_embeds, text_embeds, gallery_embeds, neighbours, permutations, seed)
    threshold = float(null.quantile(1.0 - alpha))
    return {"threshold": threshold, "gated_fraction": float((own < threshold).float().mean())}


def calibrate_model_gate(model, eval_dataset, gallery_embeds: torch.Tensor, alpha: float,
                         neighbours: int | None = None, seed: int = 0) -> dict[str, float]:
    """Calibrate θ on a cached validation slice (`CachedTripletDataset`: its reference image and modification
    embeddings) against `gallery_embeds` (the training images) and write the gate into `model.config`. k is
    `neighbours`, else the config's `grounding_gate_neighbours`, else `DEFAULT_GROUNDING_GATE_NEIGHBOURS`."""
    neighbours = neighbours or model.config.grounding_gate_neighbours or DEFAULT_GROUNDING_GATE_NEIGHBOURS
    rows, cache = eval_dataset.cache.row_indices, eval_dataset.cache
    normalize = torch.nn.functional.normalize
    images = normalize(cache.image_embeds[rows["image"]].float(), dim=-1)
    texts = normalize(cache.text_embeds[rows["modification"]].float(), dim=-1)
    calibration = calibrate_grounding_threshold(images, texts, normalize(gallery_embeds.float(), dim=-1),
                                                neighbours, alpha, seed=seed)
    model.config.grounding_gate_neighbours = neighbours
    model.config.grounding_gate_threshold = calibration["threshold"]
    return calibration


__all__ = ["DEFAULT_GROUNDING_GATE_NEIGHBOURS", "calibrate_grounding_threshold", "calibrate_model_gate",
           "null_groundings"]
