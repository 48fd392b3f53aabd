"""Query composition and scoring: a method turns a query's reference image and modification into one embedding,
ranked by cosine against the gallery's image embeddings.

Methods: `scot` = the model's composed query (`model.get_composed_features`); `image` = the reference image
embedding; `text` = the modification text embedding; `sum` = normalize(normalize(image) + normalize(text)), the two
normalised embeddings weighted equally; `raw_sum` = normalize(image features + text features) of the projected
features before normalisation, CLIP4Cir's `element_wise_sum` (the larger of the two features weighs more). The last
four are the baselines on the same encoder that the papers report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from modeling_scot.modeling_scot import GalleryStatistics, nearest_gallery_images
from scot_core import eval_mode
from scot_core.encoding import model_device_dtype

logger = logging.getLogger(__name__)

METHODS = ("scot", "image", "text", "sum", "raw_sum")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")


def _composed_queries(model, image_embeds: torch.Tensor, text_embeds: torch.Tensor, texts: Sequence[str] | None,
                      processor, batch_size: int, reference_features: dict[str, torch.Tensor] | None = None,
                      feature_rows: torch.Tensor | None = None,
                      gallery_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """`model.get_composed_features` in batches: from the cached text embeddings where the composer accepts them,
    else from the modification's tokens (a composer that reads the text itself); with the reference images' other
    composer inputs (`reference_features[name][feature_rows[i]]` for query i) where the composer reads more than
    the pooled embedding; with the gallery's view the grounding gate needs (each reference's nearest gallery images
    and the gallery's statistics) where the model's config turns the gate on and `gallery_embeds` is given."""
    if not model.composer_accepts_text_embeds and (texts is None or processor is None):
        raise ValueError(f"{type(model).__name__}'s composer reads the modification's tokens: pass the query texts "
                         "and the processor (evaluate_prepared(..., processor=processor)).")
    missing = [name for name in model.composer_image_inputs
               if name != "image_embeds" and name not in (reference_features or {})]
    if missing:
        raise ValueError(f"{type(model).__name__}'s composer also reads {missing} of each reference image: pass "
                         "reference_features (prepare_task computes them for such a model).")
    device, dtype = model_device_dtype(model)
    gate_neighbours = getattr(model.config, "grounding_gate_neighbours", 0) if gallery_embeds is not None else 0
    if gate_neighbours and len(gallery_embeds) <= gate_neighbours:  # too small a gallery to have look-alikes
        logger.warning("The gallery has %d images, not more than the grounding gate's %d neighbours: no query is "
                       "gated.", len(gallery_embeds), gate_neighbours)
        gate_neighbours = 0
    gallery_statistics = GalleryStatistics.from_embeds(gallery_embeds) if gate_neighbours else None
    batches = []
    with eval_mode(model):
        for start in range(0, len(image_embeds), batch_size):
            stop = start + batch_size
            images = image_embeds[start:stop].to(device=device, dtype=dtype)
            rows = feature_rows[start:stop] if feature_rows is not None else slice(start, stop)
            image_side = {name: reference_features[name][rows].to(device=device, dtype=dtype)
                          for name in model.composer_image_inputs if name != "image_embeds"}
            if gate_neighbours:
                image_side["gallery_neighbour_embeds"] = nearest_gallery_images(
                    image_embeds[start:stop], gallery_embeds, gate_neighbours).to(device=device, dtype=dtype)
                image_side["gallery_statistics"] = gallery_statistics
            if model.composer_accepts_text_embeds:
                composed = model.get_composed_features(
                    image_embeds=images, text_embeds=text_embeds[start:stop].to(device=device, dtype=dtype),
                    **image_side)
            else:
                tokens = processor(text=list(texts[start:stop]), return_tensors="pt")
                text_side = {name: tensor.to(device) for name, tensor in tokens.items()
                             if name in ("input_ids", "attention_mask", "token_type_ids")}
                composed = model.get_composed_features(image_embeds=images, **image_side, **text_side)
            batches.append(composed.float().cpu())
    return torch.cat(batches) if batches else torch.zeros(0, image_embeds.shape[-1])


def _rows(values, keep: torch.Tensor):
    """The rows of a tensor or list (or None) where `keep` is True."""
    if values is None or isinstance(values, torch.Tensor):
        return None if values is None else values[keep]
    return [value for value, kept in zip(values, keep.tolist()) if kept]


@torch.inference_mode()
def query_embeddings(model, reference_embeds: torch.Tensor, text_embeds: torch.Tensor, method: str,
                     batch_size: int = 1024, *, query_texts: Sequence[Sequence[str]] | None = None,
                     processor=None, reference_norms: torch.Tensor | None = None,
                     text_norms: torch.Tensor | None = None,
                     reference_available: torch.Tensor | None = None,
                     reference_features: dict[str, torch.Tensor] | None = None,
                     reference_feature_rows: torch.Tensor | None = None,
                     gallery_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """`[Q, D]` float32 query embeddings from `[Q, D]` reference image and `[Q, T, D]` text embeddings (normalised).

    With T > 1 (several phrasings of one query) the T normalised queries are averaged and normalised again.
    `query_texts` (Q lists of T texts) and `processor` are needed only by a composer that reads tokens
    (`model.composer_accepts_text_embeds` False). `raw_sum` needs `reference_norms` (`[Q]`) and `text_norms`
    (`[Q, T]`), the norms of the projected features the embeddings were normalised from. Queries whose
    `reference_available` is False (a test query whose reference image is missing) get the `text` query, whatever
    the method: the best ranking there is without the image. A composer that reads more of the reference image than
    its pooled embedding (`model.composer_image_inputs`: the pseudo-word composer's token states) takes it from
    `reference_features` (`{name: [R, ...]}`), query i's at row `reference_feature_rows[i]` (default: row i).
    `gallery_embeds` (`[G, D]`, normalised), the gallery the queries will rank, is read by the `scot` method only
    where the model's grounding gate is on (`ScotConfig.grounding_gate_neighbours`)."""
    check_method(method)
    if text_embeds.ndim == 2:
        text_embeds = text_embeds[:, None]
    num_queries, num_phrasings, _ = text_embeds.shape
    if method == "raw_sum" and (reference_norms is None or text_norms is None):
        raise ValueError("Method 'raw_sum' adds the projected features before normalisation: pass reference_norms "
                         "and text_norms (prepare_task provides them).")
    if reference_available is not None and not bool(reference_available.all()):
        available = reference_available.to(torch.bool)
        queries = torch.empty(num_queries, text_embeds.shape[-1])
        queries[~available] = query_embeddings(model, reference_embeds[~available], text_embeds[~available], "text")
        if available.any():
            queries[available] = query_embeddings(
                model, reference_embeds[available], text_embeds[available], method, batch_size,
                query_texts=_rows(query_texts, available), processor=processor,
                reference_norms=_rows(reference_norms, available), text_norms=_rows(text_norms, available),
                reference_features=reference_features,
                reference_feature_rows=(torch.arange(num_queries) if reference_feature_rows is None
                                        else reference_feature_rows)[available], gallery_embeds=gallery_embeds)
        return queries
    if method == "image":
        return F.normalize(reference_embeds.float(), dim=-1)
    if method == "text":
        return F.normalize(F.normalize(text_embeds.float(), dim=-1).sum(dim=1), dim=-1)
    images = reference_embeds[:, None].expand(-1, num_phrasings, -1).reshape(num_queries * num_phrasings, -1)
    texts = text_embeds.reshape(num_queries * num_phrasings, -1)
    if method == "sum":
        queries = F.normalize(images.float() + texts.float(), dim=-1)
    elif method == "raw_sum":  # back to the projected features: embedding x its norm
        image_norms = reference_norms.float()[:, None].expand(-1, num_phrasings).reshape(-1, 1)
        text_norms = text_norms.float().reshape(num_queries, -1).expand(-1, num_phrasings).reshape(-1, 1)
        queries = F.normalize(images.float() * image_norms + texts.float() * text_norms, dim=-1)
    else:
        flat_texts = None
        if query_texts:
            flat_texts = [text for phrasings in query_texts for text in phrasings]
            if len(flat_texts) != num_queries * num_phrasings:
                raise ValueError(f"query_texts must hold {num_phrasings} phrasing(s) for each of the {num_queries} "
                                 f"queries, like text_embeds; got {len(flat_texts)} texts.")
        feature_rows = torch.arange(num_queries) if reference_feature_rows is None else reference_feature_rows
        queries = _composed_queries(model, images, texts, flat_texts, processor, batch_size, reference_features,
                                    feature_rows.repeat_interleave(num_phrasings), gallery_embeds)
    return F.normalize(queries.reshape(num_queries, num_phrasings, -1).sum(dim=1), dim=-1)


def similarity_scores(queries: torch.Tensor, gallery: torch.Tensor, device=None) -> torch.Tensor:
    """`[Q, G]` cosine similarities of normalised queries and gallery embeddings, in float32 on `device`."""
    return queries.to(device, torch.float32) @ gallery.to(device, torch.float32).T


__all__ = ["METHODS", "check_method", "query_embeddings", "similarity_scores"]
