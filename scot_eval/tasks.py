"""Prepared tasks: a benchmark task's gallery, reference images and query texts embedded once by the frozen encoder
(or read back from the safetensors cache), with the indices the metrics need.

Image and text embeddings depend only on the frozen encoder, so they are computed once per model and split and
cached under `cache_dir` (default `$SCOT_CACHE_DIR/evaluation`, else `~/.cache/scot/evaluation`): one file per
task's image list (`images-{benchmark}-{split}-{task}-{key}.safetensors`) and one per text list (`texts-{key}...`),
the key a digest of the model folder, the encoder fingerprint and the items, so a changed encoder or image folder
never reuses stale vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from scot_core import atomic_save_file, encode_images, encode_texts, encoder_fingerprint

from .benchmarks import RetrievalTask
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


def _load_cached(path: Path, expected_rows: int) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as error:  # a damaged cache file is recomputed, never trusted
        logger.warning("Ignoring unreadable embedding cache %s (%s); recomputing.", path, error)
        return None
    if tensors.get("embeddings") is None or tensors["embeddings"].shape[0] != expected_rows:
        return None
    return tensors


def _model_folder(model) -> str:
    """Where the model came from: its own folder, else (a model just built with from_backbone) the encoder's."""
    config = model.config
    return str(getattr(config, "_name_or_path", "") or getattr(config.encoder_config, "_name_or_path", ""))


def cached_image_embeddings(model, processor, task: RetrievalTask, names: list[str], cache_dir=None,
                            batch_size: int = 64, num_workers: int = 0,
                            show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of `task`'s images `names` (`[N, D]`, plus the `[N]` readable mask), from the cache when present.
    The cache key is the model folder, the encoder fingerprint, the benchmark, split and task, and the image list."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = encoder_fingerprint(model, processor)
    images_digest = _digest([[name, str(task.image_paths[name])] for name in names])
    split = get_protocol(task.benchmark).gallery_cache_split(task.split)
    path = _cache_file(cache_dir, f"images-{task.benchmark}-{split}-{task.name}",
                       [_model_folder(model), fingerprint, task.benchmark, split, task.name, images_digest])
    cached = _load_cached(path, len(names))
    if cached is not None:
        return cached["embeddings"], cached["readable"].bool()
    embeddings, readable = encode_images(model, processor, [task.image_paths[name] for name in names], batch_size,
                                         num_workers, show_progress,
                                         f"{task.benchmark} {task.split} {task.name} images")
    atomic_save_file({"embeddings": embeddings, "readable": readable.to(torch.uint8)}, path, {
        "model": _model_folder(model), "encoder_fingerprint": fingerprint, "benchmark": task.benchmark,
        "split": split, "task": task.name, "images": str(len(names)), "images_sha256": images_digest,
    })
    return embeddings, readable


def cached_text_embeddings(model, processor, texts: list[str], cache_dir=None, batch_size: int = 256,
                           show_progress: bool = True) -> torch.Tensor:
    """Embeddings of `texts` (`[N, D]`), from the cache when the same encoder embedded them before."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = encoder_fingerprint(model, processor)
    texts_digest = _digest(texts)
    path = _cache_file(cache_dir, "texts", [_model_folder(model), fingerprint, texts_digest])
    cached = _load_cached(path, len(texts))
    if cached is not None:
        return cached["embeddings"]
    embeddings = encode_texts(model, processor, texts, batch_size, show_progress)
    atomic_save_file({"embeddings": embeddings}, path, {
        "model": _model_folder(model), "encoder_fingerprint": fingerprint, "texts": str(len(texts)),
        "texts_sha256": texts_digest,
    })
    return embeddings


# -- preparing a task -------------------------------------------------------------------------------------------------


@dataclass
class PreparedTask:
    """A retrieval task with every embedding the evaluation needs, ready to compose and rank.

    Only queries whose images are usable are kept (`counts` says how many were skipped and why).
    `query_texts` holds each query's phrasing(s) and `text_embeds` (`[Q, T, D]`) their embeddings: T = 2 for
    FashionIQ's SEARLE protocol (both caption orders), else 1. The texts are kept for composers that read the
    modification's tokens rather than its embedding. Indices point into `gallery_names`; `reference_index` is -1
    where the reference is not a gallery image.
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

    def __post_init__(self):
        if self.counts is None:  # a task built by hand: nothing was skipped
            self.counts = TaskCounts(len(self.query_ids), len(self.query_ids), len(self.gallery_names),
                                     len(self.gallery_names), 0, 0)

    @property
    def has_targets(self) -> bool:
        """Whether the split has public targets (metrics), or only rankings to submit."""
        return self.target_index is not None


_SKIP_REASONS = ("reference image missing or unreadable", "target image missing, unreadable or not in the gallery",
                 "no ground truth image in the gallery")


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
    pool_embeds, readable = cached_image_embeddings(model, processor, task, pool, cache_dir, batch_size, num_workers,
                                                    show_progress)
    pool_position = {name: position for position, name in enumerate(pool) if readable[position]}
    unreadable = [name for position, name in enumerate(pool) if not readable[position]]
    gallery_names = [name for name in gallery_candidates if name in pool_position]
    gallery_index = {name: position for position, name in enumerate(gallery_names)}
    gallery_embeds = pool_embeds[[pool_position[name] for name in gallery_names]]

    kept, skipped = [], dict.fromkeys(_SKIP_REASONS, 0)
    dropped_ground_truths = 0
    for query in task.queries:
        if query.reference not in pool_position:
            skipped[_SKIP_REASONS[0]] += 1
        elif query.target is not None and query.target not in gallery_index:
            skipped[_SKIP_REASONS[1]] += 1
        elif query.ground_truth is not None and not any(name in gallery_index for name in query.ground_truth):
            skipped[_SKIP_REASONS[2]] += 1
        else:
            kept.append(query)
            if query.ground_truth is not None:
                dropped_ground_truths += sum(name not in gallery_index for name in dict.fromkeys(query.ground_truth))
    for reason, count in skipped.items():
        if count:
            logger.warning("%s %s %s: skipped %d of %d queries (%s).", task.benchmark, task.split, task.name, count,
                           len(task.queries), reason)

    query_texts = [protocol.query_texts(query, fashioniq_captions) for query in kept]
    unique_texts = list(dict.fromkeys(text for texts in query_texts for text in texts))
    text_position = {text: position for position, text in enumerate(unique_texts)}
    embed_dim = model.config.embed_dim
    if unique_texts:
        unique_embeds = cached_text_embeddings(model, processor, unique_texts, cache_dir, show_progress=show_progress)
        text_embeds = unique_embeds[torch.tensor([[text_position[text] for text in texts] for texts in query_texts])]
    else:
        text_embeds = torch.zeros(0, 1, embed_dim)

    has_targets = bool(kept) and kept[0].target is not None
    has_subsets = bool(kept) and kept[0].subset is not None
    has_ground_truths = has_targets and kept[0].ground_truth is not None
    return PreparedTask(
        benchmark=task.benchmark, split=task.split, name=task.name,
        gallery_names=gallery_names, gallery_embeds=gallery_embeds,
        query_ids=[query.query_id for query in kept],
        reference_embeds=pool_embeds[[pool_position[query.reference] for query in kept]].reshape(len(kept), embed_dim),
        text_embeds=text_embeds,
        reference_index=torch.tensor([gallery_index.get(query.reference, -1) for query in kept], dtype=torch.long),
        target_index=torch.tensor([gallery_index[query.target] for query in kept], dtype=torch.long)
        if has_targets else None,
        subset_indices=[[gallery_index[name] for name in query.subset if name in gallery_index] for query in kept]
        if has_subsets else None,
        ground_truth_indices=[[gallery_index[name] for name in query.ground_truth if name in gallery_index]
                              for query in kept] if has_ground_truths else None,
        counts=TaskCounts(
            queries=len(task.queries), queries_evaluated=len(kept),
            gallery_images=len(task.gallery), gallery_images_used=len(gallery_names),
            missing_images=len(missing), unreadable_images=len(unreadable),
            skipped_by_reason={reason: count for reason, count in skipped.items() if count},
            ground_truths_not_in_gallery=dropped_ground_truths if protocol.counts_ground_truths else None,
        ),
        query_texts=query_texts,
        fashioniq_captions=fashioniq_captions if protocol.caption_modes else None,
    )


__all__ = ["PreparedTask", "cached_image_embeddings", "cached_text_embeddings", "default_cache_dir", "prepare_task"]
