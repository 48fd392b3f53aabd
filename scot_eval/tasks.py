"""Prepared tasks: a benchmark task's gallery, reference images and query texts embedded once by the frozen encoder
(or read back from the safetensors cache), with the indices the metrics need.

Image and text embeddings depend only on the frozen encoder, so they are computed once per model and split and
cached under `cache_dir` (default `$SCOT_CACHE_DIR/evaluation`, else `~/.cache/scot/evaluation`): one file per
task's image list (`images-{benchmark}-{split}-{task}-{key}.safetensors`) and one per text list (`texts-{key}...`),
the key a digest of the model folder, the encoder fingerprint and the items, so a changed encoder or image folder
never reuses stale vectors. Each file holds the L2-normalised embeddings and the norms of the projected features
they were normalised from (what the `raw_sum` baseline adds, CLIP4Cir's `element_wise_sum`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from scot_core import (
    atomic_save_file,
    encode_composer_image_features,
    encode_images,
    encode_texts,
    encoder_fingerprint,
)

from .benchmarks import SKIP_REASONS, RetrievalTask, is_submission_split, skip_reason
from .protocols import get_protocol
from .results import TaskCounts

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SCOT_CACHE_DIR", Path.home() / ".cache" / "scot")) / "evaluation"


# -- cached embeddings ------------------------------------------------------------------------------------------------


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _cache_file(cache_dir: Path, kind: str, key_parts: list) -> Path:
    return cache_dir / f"{kind}-{_digest(key_parts)[:24]}.safetensors"


def _load_cached(path: Path, expected_rows: int, keys: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as error:  # a damaged cache file is recomputed, never trusted
        logger.warning("Ignoring unreadable embedding cache %s (%s); recomputing.", path, error)
        return None
    # a file written before a tensor was added to the cache (e.g. "norms") is recomputed once
    if any(tensors.get(key) is None or tensors[key].shape[0] != expected_rows for key in keys):
        return None
    return tensors


def _normalized_with_norms(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised rows, their norms) of projected features; a zero row (an unreadable image) stays zero."""
    return F.normalize(features, dim=-1), features.norm(dim=-1)


def _model_folder(model) -> str:
    """Where the model came from: its own folder, else (a model just built with from_backbone) the encoder's."""
    config = model.config
    return str(getattr(config, "_name_or_path", "") or getattr(config.encoder_config, "_name_or_path", ""))


def cached_image_embeddings(model, processor, task: RetrievalTask, names: list[str], cache_dir=None,
                            batch_size: int = 64, num_workers: int = 0, show_progress: bool = True,
                            return_norms: bool = False) -> tuple[torch.Tensor, ...]:
    """Normalised embeddings of `task`'s images `names` (`[N, D]`, plus the `[N]` readable mask, and with
    `return_norms` the `[N]` norms of their projected features), from the cache when present. The cache key is the
    model folder, the encoder fingerprint, the benchmark, split and task, and the image list."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = encoder_fingerprint(model, processor)
    images_digest = _digest([[name, str(task.image_paths[name])] for name in names])
    split = get_protocol(task.benchmark).gallery_cache_split(task.split)
    path = _cache_file(cache_dir, f"images-{task.benchmark}-{split}-{task.name}",
                       [_model_folder(model), fingerprint, task.benchmark, split, task.name, images_digest])
    cached = _load_cached(path, len(names), ("embeddings", "readable", "norms"))
    if cached is not None:
        embeddings, readable, norms = cached["embeddings"], cached["readable"].bool(), cached["norms"]
    else:
        features, readable = encode_images(model, processor, [task.image_paths[name] for name in names], batch_size,
                                           num_workers, show_progress,
                                           f"{task.benchmark} {task.split} {task.name} images", normalize=False)
        embeddings, norms = _normalized_with_norms(features)
        atomic_save_file({"embeddings": embeddings, "readable": readable.to(torch.uint8), "norms": norms}, path, {
            "model": _model_folder(model), "encoder_fingerprint": fingerprint, "benchmark": task.benchmark,
            "split": split, "task": task.name, "images": str(len(names)), "images_sha256": images_digest,
        })
    return (embeddings, readable, norms) if return_norms else (embeddings, readable)


def cached_text_embeddings(model, processor, texts: list[str], cache_dir=None, batch_size: int = 256,
                           show_progress: bool = True,
                           return_norms: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Normalised embeddings of `texts` (`[N, D]`; with `return_norms`, also the `[N]` norms of their projected
    features), from the cache when the same encoder embedded them before."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = encoder_fingerprint(model, processor)
    texts_digest = _digest(texts)
    path = _cache_file(cache_dir, "texts", [_model_folder(model), fingerprint, texts_digest])
    cached = _load_cached(path, len(texts), ("embeddings", "norms"))
    if cached is not None:
        embeddings, norms = cached["embeddings"], cached["norms"]
    else:
        embeddings, norms = _normalized_with_norms(
            encode_texts(model, processor, texts, batch_size, show_progress, normalize=False))
        atomic_save_file({"embeddings": embeddings, "norms": norms}, path, {
            "model": _model_folder(model), "encoder_fingerprint": fingerprint, "texts": str(len(texts)),
            "texts_sha256": texts_digest,
        })
    return (embeddings, norms) if return_norms else embeddings


# -- preparing a task -------------------------------------------------------------------------------------------------


@dataclass
class PreparedTask:
    """A retrieval task with every embedding the evaluation needs, ready to compose and rank.

    Only queries whose images are usable are kept (`counts` says how many were skipped and why), except on a split
    ranked for a submission (no public targets), which must list every query: a query there whose reference image
    is missing or unreadable is kept with a zero reference embedding, `reference_available` False, and is ranked by
    its text alone (`counts.text_only_queries`).
    `query_texts` holds each query's phrasing(s) and `text_embeds` (`[Q, T, D]`) their embeddings: T = 2 for
    FashionIQ's SEARLE protocol (both caption orders), else 1. The texts are kept for composers that read the
    modification's tokens rather than its embedding. `reference_norms` (`[Q]`) and `text_norms` (`[Q, T]`) are the
    norms of the projected features the embeddings were normalised from (the `raw_sum` baseline needs them).
    Indices point into `gallery_names`; `reference_index` (and CIRCO's `target_index`) is -1 where that image is not
    in the gallery. `ground_truth_counts` (CIRCO) is each query's number of annotated ground truths, the mAP
    denominator, whether or not their images are in the gallery.
    """

    benchmark: str
    split: str
    name: str
    gallery_names: list[str]
    gallery_embeds: torch.Tensor
    query_ids: list[str]
    reference_embeds: torch.Tensor
    text_embeds: torch.Tensor
    reference_index: torch.Tensor
    target_index: torch.Tensor | None = None
    subset_indices: list[list[int]] | None = None
    ground_truth_indices: list[list[int]] | None = None
    counts: TaskCounts | None = None
    query_texts: list[list[str]] = field(default_factory=list)
    fashioniq_captions: str | None = None
    ground_truth_counts: list[int] | None = None
    reference_norms: torch.Tensor | None = None
    text_norms: torch.Tensor | None = None
    reference_available: torch.Tensor | None = None  # None: every reference image is available
    # what the composer reads of a reference image besides its pooled embedding (`model.composer_image_inputs`; the
    # pseudo-word composer's token states): {name: [R, ...]} over the distinct references, query i's at row
    # `reference_feature_rows[i]` (-1: no usable reference); None for the Combiner
    reference_features: dict[str, torch.Tensor] | None = None
    reference_feature_rows: torch.Tensor | None = None

    def __post_init__(self):
        if self.counts is None:  # a task built by hand: nothing was skipped
            self.counts = TaskCounts(len(self.query_ids), len(self.query_ids), len(self.gallery_names),
                                     len(self.gallery_names), 0, 0)

    @property
    def has_targets(self) -> bool:
        """Whether the split has public targets (metrics), or only rankings to submit."""
        return self.target_index is not None


def prepare_task(model, processor, task: RetrievalTask, fashioniq_captions: str = "clip4cir", cache_dir=None,
                 batch_size: int = 64, num_workers: int = 0, show_progress: bool = True) -> PreparedTask:
    """Encode (or load from the cache) a task's gallery, reference images and query texts; drop unusable images."""
    protocol = get_protocol(task.benchmark)
    missing = set(task.missing_images)
    gallery_candidates = [name for name in task.gallery if name not in missing]
    in_gallery = set(gallery_candidates)
    extra_references = list(dict.fromkeys(
        query.reference for query in task.queries
        if query.reference not in in_gallery and query.reference not in missing))
    pool = gallery_candidates + extra_references
    pool_embeds, readable, pool_norms = cached_image_embeddings(model, processor, task, pool, cache_dir, batch_size,
                                                                num_workers, show_progress, return_norms=True)
    pool_position = {name: position for position, name in enumerate(pool) if readable[position]}
    unreadable = [name for position, name in enumerate(pool) if not readable[position]]
    gallery_names = [name for name in gallery_candidates if name in pool_position]
    gallery_index = {name: position for position, name in enumerate(gallery_names)}
    gallery_embeds = pool_embeds[[pool_position[name] for name in gallery_names]]

    # A split without public targets is ranked for a submission, which must list every query: a query whose
    # reference image is unusable is kept there and ranked by its text alone.
    submission_split = is_submission_split(task)
    kept, text_only, skipped = [], [], dict.fromkeys(SKIP_REASONS, 0)
    for query in task.queries:
        reason = skip_reason(query, query.reference in pool_position, query.target in gallery_index, submission_split)
        if reason is not None:
            skipped[reason] += 1
            continue
        kept.append(query)
        if query.reference not in pool_position:
            text_only.append(query.query_id)
    for reason, count in skipped.items():
        if count:
            logger.warning("%s %s %s: skipped %d of %d queries (%s).", task.benchmark, task.split, task.name, count,
                           len(task.queries), reason)
    if text_only:
        logger.warning("%s %s %s: %d queries have no usable reference image and are ranked by their text alone: %s",
                       task.benchmark, task.split, task.name, len(text_only), ", ".join(text_only))

    embed_dim = model.config.embed_dim
    available = [position for position, query in enumerate(kept) if query.reference in pool_position]
    reference_embeds, reference_norms = torch.zeros(len(kept), embed_dim), torch.zeros(len(kept))
    if available:
        rows = [pool_position[kept[position].reference] for position in available]
        reference_embeds[available], reference_norms[available] = pool_embeds[rows], pool_norms[rows]

    usable = set(available)
    reference_features, reference_feature_rows = composer_reference_features(
        model, processor, task, [query.reference if row in usable else None for row, query in enumerate(kept)],
        batch_size, num_workers, show_progress)

    query_texts = [protocol.query_texts(query, fashioniq_captions) for query in kept]
    unique_texts = list(dict.fromkeys(text for texts in query_texts for text in texts))
    text_position = {text: position for position, text in enumerate(unique_texts)}
    if unique_texts:
        unique_embeds, unique_norms = cached_text_embeddings(model, processor, unique_texts, cache_dir,
                                                             show_progress=show_progress, return_norms=True)
        rows = torch.tensor([[text_position[text] for text in texts] for texts in query_texts])
        text_embeds, text_norms = unique_embeds[rows], unique_norms[rows]
    else:
        text_embeds, text_norms = torch.zeros(0, 1, embed_dim), torch.zeros(0, 1)

    has_targets = bool(kept) and kept[0].target is not None
    has_subsets = bool(kept) and kept[0].subset is not None
    has_ground_truths = has_targets and kept[0].ground_truth is not None
    ground_truths_not_in_gallery = sum(name not in gallery_index for query in kept
                                       for name in dict.fromkeys(query.ground_truth or ()))
    return PreparedTask(
        benchmark=task.benchmark, split=task.split, name=task.name,
        gallery_names=gallery_names, gallery_embeds=gallery_embeds,
        query_ids=[query.query_id for query in kept],
        reference_embeds=reference_embeds, text_embeds=text_embeds,
        reference_index=torch.tensor([gallery_index.get(query.reference, -1) for query in kept], dtype=torch.long),
        target_index=torch.tensor([gallery_index.get(query.target, -1) for query in kept], dtype=torch.long)
        if has_targets else None,
        subset_indices=[[gallery_index[name] for name in query.subset if name in gallery_index] for query in kept]
        if has_subsets else None,
        ground_truth_indices=[[gallery_index[name] for name in query.ground_truth if name in gallery_index]
                              for query in kept] if has_ground_truths else None,
        # the server's denominator: every annotated ground truth, in the gallery or not
        ground_truth_counts=[len(query.ground_truth) for query in kept] if has_ground_truths else None,
        counts=TaskCounts(
            queries=len(task.queries), queries_evaluated=len(kept),
            gallery_images=len(task.gallery), gallery_images_used=len(gallery_names),
            missing_images=len(missing), unreadable_images=len(unreadable),
            skipped_by_reason={reason: count for reason, count in skipped.items() if count},
            ground_truths_not_in_gallery=ground_truths_not_in_gallery if protocol.counts_ground_truths else None,
            text_only_queries=text_only,
        ),
        query_texts=query_texts,
        fashioniq_captions=fashioniq_captions if protocol.caption_modes else None,
        reference_norms=reference_norms, text_norms=text_norms,
        reference_available=torch.tensor([query.reference in pool_position for query in kept]) if text_only else None,
        reference_features=reference_features, reference_feature_rows=reference_feature_rows,
    )


def composer_reference_features(model, processor, task: RetrievalTask, references: list[str | None],
                                batch_size: int = 64, num_workers: int = 0,
                                show_progress: bool = True) -> tuple[dict[str, torch.Tensor] | None,
                                                                     torch.Tensor | None]:
    """(`{name: [R, ...]}`, `[Q]` rows) of what the model's composer reads of each query's reference image besides
    the pooled embedding (`model.composer_image_inputs`), encoded once per distinct reference (`references[i]` is
    query i's, None when it has no usable image: row -1); (None, None) for a composer that reads only the pooled
    embedding. Not cached on disk: only the references are encoded (not the gallery), and token states are large."""
    extra = [name for name in model.composer_image_inputs if name != "image_embeds"]
    if not extra:
        return None, None
    distinct = list(dict.fromkeys(name for name in references if name is not None))
    row_of = {name: row for row, name in enumerate(distinct)}
    features, _ = encode_composer_image_features(model, processor, [task.image_paths[name] for name in distinct],
                                                 batch_size, num_workers, show_progress,
                                                 f"{task.benchmark} {task.split} {task.name} reference image tokens")
    rows = torch.tensor([row_of.get(name, -1) if name is not None else -1 for name in references], dtype=torch.long)
    return {name: features[name] for name in extra}, rows


__all__ = ["PreparedTask", "cached_image_embeddings", "cached_text_embeddings", "composer_reference_features",
           "default_cache_dir", "prepare_task"]
