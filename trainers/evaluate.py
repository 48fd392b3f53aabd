"""Evaluate a SCOT model (or a baseline on its encoder) on FashionIQ, CIRR or CIRCO, as the papers report them.

    python -m trainers.evaluate --model FOLDER --benchmark {fashioniq,cirr,circo} --data_dir DIR \\
        [--split val] [--method {scot,image,text,sum}] [--fashioniq_captions {clip4cir,searle}] [--output_dir DIR]
        [--update_model_card]
    python -m trainers.evaluate check --benchmark cirr --data_dir DIR [--split val]   (or: --check)

`--model` is a saved SCOT folder, or a bare CLIP / BLIP-2 / dual-encoder folder (then `scot` uses an untrained
Combiner; the baselines need no Combiner). Methods, all scored by cosine against the gallery's image embeddings:
`scot` = compose(image, text); `image` = the reference image embedding; `text` = the modification text embedding;
`sum` = normalize(image + text).

The script prints the paper-style table and writes `metrics.json` to `--output_dir`; on a test split (no public
targets) it writes the submission files instead: CIRR `cirr_test1_recall.json` / `cirr_test1_recall_subset.json`,
CIRCO `circo_test_submission.json`. `--update_model_card` also records the numbers (method `scot` only) in the
model-index and Results section of the SCOT folder's README.md. Image and text embeddings depend only on the frozen
encoder, so they are computed once per model and split and cached as safetensors under `--cache_dir`.

In Python (this is what `ScotTrainer` calls during training)::

    tasks = prepare_benchmark(model, processor, "cirr", data_dir, "val")   # encodes (or loads) the embeddings once
    result = evaluate_prepared(model, tasks, method="scot")               # compose + rank: fast, call it every eval
    result["metrics"]  # {"R@1": ..., "R@5": ..., "Rsubset@1": ...}
    evaluate_benchmark(model, processor, "cirr", data_dir, "val", "scot")  # both steps in one call
"""

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python trainers/evaluate.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from trainers.benchmarks import (
    BENCHMARKS,
    FASHIONIQ_CATEGORIES,
    RetrievalTask,
    check_benchmark,
    format_check_report,
    load_benchmark,
)
from trainers.embedding_cache import encoder_fingerprint
from trainers.metrics import (
    circo_map_at_k,
    cirr_recall,
    cirr_recall_subset,
    recall_at_k,
    subset_topk_indices,
    topk_indices,
)

logger = logging.getLogger(__name__)

METHODS = ("scot", "image", "text", "sum")
FASHIONIQ_CAPTION_MODES = ("clip4cir", "searle")
FASHIONIQ_KS, CIRR_KS, CIRR_SUBSET_KS, CIRCO_KS = (10, 50), (1, 5, 10, 50), (1, 2, 3), (5, 10, 25, 50)
SUBMISSION_DEPTH, SUBSET_SUBMISSION_DEPTH = 50, 3
CATEGORY_TITLES = {"dress": "Dress", "shirt": "Shirt", "toptee": "Top/Tee"}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SCOT_CACHE_DIR", Path.home() / ".cache" / "scot")) / "evaluation"


# -- FashionIQ caption protocols -------------------------------------------------------------------------------------


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
    raise ValueError(f"Unknown FashionIQ caption protocol {protocol!r}: choose one of {', '.join(FASHIONIQ_CAPTION_MODES)}.")


# -- cached embeddings -------------------------------------------------------------------------------------------------


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _cache_file(cache_dir: Path, kind: str, key_parts: list) -> Path:
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / f"{kind}-{key}.safetensors"


def _load_cached(path: Path, expected_rows: int):
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        tensors = load_file(path)
    except Exception as error:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
        logger.warning("Ignoring unreadable embedding cache %s (%s); recomputing.", path, error)
        return None
    if tensors.get("embeddings") is None or tensors["embeddings"].shape[0] != expected_rows:
        return None
    return tensors


def _save_cached(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(partial), metadata=metadata)
    os.replace(partial, path)  # atomic: a crash never leaves a half-written cache behind


class _ImageFiles(torch.utils.data.Dataset):
    """Pixel values of image files; an unreadable file yields None (counted and skipped, never fatal)."""

    def __init__(self, paths: list[Path], image_processor):
        self.paths, self.image_processor = paths, image_processor

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, position):
        from modeling_scot.processing_scot import to_rgb

        try:
            image = to_rgb(self.paths[position])
        except ValueError:
            return position, None
        return position, self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]


def _collate(items):
    readable = [(position, pixels) for position, pixels in items if pixels is not None]
    positions = torch.tensor([position for position, _ in readable], dtype=torch.long)
    pixels = torch.stack([pixels for _, pixels in readable]) if readable else None
    return positions, pixels


@torch.inference_mode()
def encode_images(model, processor, paths: list[Path], batch_size: int = 64, num_workers: int = 0,
                  show_progress: bool = True, description: str = "encoding images") -> tuple[torch.Tensor, torch.Tensor]:
    """(`[N, D]` float32 CPU embeddings, `[N]` bool readable mask) for image files; unreadable rows are zero."""
    from tqdm.auto import tqdm

    device, dtype = _model_device_dtype(model)
    embeddings = torch.zeros(len(paths), model.config.embed_dim)
    readable = torch.zeros(len(paths), dtype=torch.bool)
    loader = torch.utils.data.DataLoader(_ImageFiles(paths, processor.image_processor), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_collate)
    for positions, pixels in tqdm(loader, desc=description, unit="batch", disable=not show_progress):
        if pixels is None:
            continue
        embeddings[positions] = model.get_image_features(pixel_values=pixels.to(device=device, dtype=dtype)).float().cpu()
        readable[positions] = True
    return embeddings, readable


@torch.inference_mode()
def encode_texts(model, processor, texts: list[str], batch_size: int = 256, show_progress: bool = True) -> torch.Tensor:
    """`[N, D]` float32 CPU embeddings of modification texts."""
    from tqdm.auto import tqdm

    device, _ = _model_device_dtype(model)
    embeddings = torch.zeros(len(texts), model.config.embed_dim)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="encoding texts", unit="batch", disable=not show_progress or len(starts) < 2):
        tokens = processor(text=texts[start:start + batch_size], return_tensors="pt")
        embeddings[start:start + batch_size] = model.get_text_features(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        ).float().cpu()
    return embeddings


def _model_folder(model) -> str:
    """Where the model came from: its own folder, else (a model just built with from_backbone) the encoder's."""
    config = model.config
    return str(getattr(config, "_name_or_path", "") or getattr(config.encoder_config, "_name_or_path", ""))


def cached_image_embeddings(model, processor, task: RetrievalTask, names: list[str], cache_dir=None,
                            batch_size: int = 64, num_workers: int = 0, show_progress: bool = True):
    """Embeddings of `task`'s images `names` (`[N, D]`, plus the readable mask), from the safetensors cache when
    present. The cache key is the model folder, the encoder fingerprint, the benchmark, split and task, and the
    image list, so a changed model or changed image folder never reuses stale vectors."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = encoder_fingerprint(model, processor)
    image_list = [[name, str(task.image_paths[name])] for name in names]
    images_digest = hashlib.sha256(json.dumps(image_list).encode()).hexdigest()
    # CIRCO's val and test rank the same gallery (COCO unlabeled2017): one cache entry serves both.
    split = "unlabeled2017" if task.benchmark == "circo" else task.split
    path = _cache_file(cache_dir, f"images-{task.benchmark}-{split}-{task.name}",
                       [_model_folder(model), fingerprint, task.benchmark, split, task.name, images_digest])
    cached = _load_cached(path, len(names))
    if cached is not None:
        return cached["embeddings"], cached["readable"].bool()
    embeddings, readable = encode_images(model, processor, [task.image_paths[name] for name in names], batch_size,
                                         num_workers, show_progress, f"{task.benchmark} {task.split} {task.name} images")
    _save_cached(path, {"embeddings": embeddings, "readable": readable.to(torch.uint8)}, {
        "model": _model_folder(model), "encoder_fingerprint": fingerprint, "benchmark": task.benchmark,
        "split": split, "task": task.name, "images": str(len(names)), "images_sha256": images_digest,
    })
    return embeddings, readable


def cached_text_embeddings(model, processor, texts: list[str], cache_dir=None, batch_size: int = 256,
                           show_progress: bool = True) -> torch.Tensor:
    """Embeddings of `texts` (`[N, D]`), from the safetensors cache when the same encoder embedded them before."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = encoder_fingerprint(model, processor)
    texts_digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()
    path = _cache_file(cache_dir, "texts", [_model_folder(model), fingerprint, texts_digest])
    cached = _load_cached(path, len(texts))
    if cached is not None:
        return cached["embeddings"]
    embeddings = encode_texts(model, processor, texts, batch_size, show_progress)
    _save_cached(path, {"embeddings": embeddings}, {
        "model": _model_folder(model), "encoder_fingerprint": fingerprint, "texts": str(len(texts)),
        "texts_sha256": texts_digest,
    })
    return embeddings


# -- preparing a benchmark ---------------------------------------------------------------------------------------------


@dataclass
class PreparedTask:
    """A retrieval task with every embedding the evaluation needs, ready to compose and rank.

    Only queries whose images are usable are kept (`counts` says how many were skipped and why).
    `text_embeds` is `[Q, T, D]`: T = 2 for FashionIQ's SEARLE protocol (both caption orders), else 1.
    Indices point into `gallery_names`; `reference_index` is -1 where the reference is not a gallery image.
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
    counts: dict = field(default_factory=dict)


def prepare_task(model, processor, task: RetrievalTask, fashioniq_captions: str = "clip4cir", cache_dir=None,
                 batch_size: int = 64, num_workers: int = 0, show_progress: bool = True) -> PreparedTask:
    """Encode (or load from the cache) a task's gallery, reference images and query texts; drop unusable images."""
    missing = set(task.missing_images)
    gallery_candidates = [name for name in task.gallery if name not in missing]
    in_gallery = set(gallery_candidates)
    extra_references = list(dict.fromkeys(
        query.reference for query in task.queries if query.reference not in in_gallery and query.reference not in missing
    ))
    pool = gallery_candidates + extra_references
    pool_embeds, readable = cached_image_embeddings(model, processor, task, pool, cache_dir, batch_size, num_workers,
                                                    show_progress)
    pool_position = {name: position for position, name in enumerate(pool) if readable[position]}
    unreadable = [name for position, name in enumerate(pool) if not readable[position]]
    gallery_names = [name for name in gallery_candidates if name in pool_position]
    gallery_index = {name: position for position, name in enumerate(gallery_names)}
    gallery_embeds = pool_embeds[[pool_position[name] for name in gallery_names]]

    kept, skipped = [], {"reference image missing or unreadable": 0,
                         "target image missing, unreadable or not in the gallery": 0,
                         "no ground truth image in the gallery": 0}
    dropped_ground_truths = 0
    for query in task.queries:
        if query.reference not in pool_position:
            skipped["reference image missing or unreadable"] += 1
        elif query.target is not None and query.target not in gallery_index:
            skipped["target image missing, unreadable or not in the gallery"] += 1
        elif query.ground_truth is not None and not any(name in gallery_index for name in query.ground_truth):
            skipped["no ground truth image in the gallery"] += 1
        else:
            kept.append(query)
            if query.ground_truth is not None:
                dropped_ground_truths += sum(name not in gallery_index for name in dict.fromkeys(query.ground_truth))
    for reason, count in skipped.items():
        if count:
            logger.warning("%s %s %s: skipped %d of %d queries (%s).", task.benchmark, task.split, task.name, count,
                           len(task.queries), reason)

    if task.benchmark == "fashioniq":
        query_texts = [fashioniq_query_texts(query.texts, fashioniq_captions) for query in kept]
    else:
        query_texts = [[query.texts[0]] for query in kept]
    unique_texts = list(dict.fromkeys(text for texts in query_texts for text in texts))
    text_position = {text: position for position, text in enumerate(unique_texts)}
    embed_dim = model.config.embed_dim
    if unique_texts:
        unique_embeds = cached_text_embeddings(model, processor, unique_texts, cache_dir, show_progress=show_progress)
        text_embeds = unique_embeds[torch.tensor([[text_position[text] for text in texts] for texts in query_texts])]
    else:
        text_embeds = torch.zeros(0, 1, embed_dim)

    has_targets = bool(kept) and kept[0].target is not None
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
        if task.benchmark == "cirr" else None,
        ground_truth_indices=[[gallery_index[name] for name in query.ground_truth if name in gallery_index]
                              for query in kept] if has_targets and task.benchmark == "circo" else None,
        counts={
            "queries": len(task.queries), "queries_evaluated": len(kept),
            "queries_skipped": len(task.queries) - len(kept), "skipped_by_reason": {k: v for k, v in skipped.items() if v},
            "gallery_images": len(task.gallery), "gallery_images_used": len(gallery_names),
            "missing_images": len(missing), "unreadable_images": len(unreadable),
            **({"ground_truths_not_in_gallery": dropped_ground_truths} if task.benchmark == "circo" else {}),
        },
    )


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
    was_training = model.training
    model.eval()
    try:
        return [prepare_task(model, processor, task, fashioniq_captions, cache_dir, batch_size, num_workers,
                             show_progress) for task in tasks]
    finally:
        model.train(was_training)


# -- composing and ranking ------------------------------------------------------------------------------------------


@torch.inference_mode()
def query_embeddings(model, reference_embeds: torch.Tensor, text_embeds: torch.Tensor, method: str,
                     batch_size: int = 1024) -> torch.Tensor:
    """`[Q, D]` float32 query embeddings from `[Q, D]` reference image and `[Q, T, D]` text embeddings.

    With T > 1 (several phrasings of one query) the T normalised queries are averaged and normalised again."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    if text_embeds.ndim == 2:
        text_embeds = text_embeds[:, None]
    num_queries, num_phrasings, _ = text_embeds.shape
    if method == "image":
        return F.normalize(reference_embeds.float(), dim=-1)
    if method == "text":
        return F.normalize(F.normalize(text_embeds.float(), dim=-1).sum(dim=1), dim=-1)
    images = reference_embeds[:, None].expand(-1, num_phrasings, -1).reshape(num_queries * num_phrasings, -1)
    texts = text_embeds.reshape(num_queries * num_phrasings, -1)
    if method == "sum":
        queries = F.normalize(images.float() + texts.float(), dim=-1)
    else:
        device, _ = _model_device_dtype(model)
        queries = torch.cat([
            model.compose(images[start:start + batch_size].to(device), texts[start:start + batch_size].to(device)).float().cpu()
            for start in range(0, len(images), batch_size)
        ]) if len(images) else torch.zeros(0, images.shape[-1])
    return F.normalize(queries.reshape(num_queries, num_phrasings, -1).sum(dim=1), dim=-1)


def _scores(queries: torch.Tensor, gallery: torch.Tensor, device) -> torch.Tensor:
    return queries.to(device, torch.float32) @ gallery.to(device, torch.float32).T


def _task_results(prepared: PreparedTask, queries: torch.Tensor, device) -> tuple[dict, dict]:
    """(metrics, submission) of one prepared task; submission is filled only where the split has no targets."""
    if not prepared.query_ids:
        raise ValueError(f"{prepared.benchmark} {prepared.split} {prepared.name}: no query could be evaluated "
                         f"({prepared.counts.get('skipped_by_reason')}). Run the `check` command on the data folder.")
    scores = _scores(queries, prepared.gallery_embeds, device)
    metrics, submission = {}, {}
    if prepared.benchmark == "fashioniq":
        if prepared.target_index is None:
            raise ValueError(f"FashionIQ {prepared.split} has no targets to evaluate against: use the val split.")
        metrics = recall_at_k(scores, prepared.target_index, FASHIONIQ_KS)
    elif prepared.benchmark == "cirr":
        if prepared.target_index is not None:
            metrics = cirr_recall(scores, prepared.reference_index, prepared.target_index, CIRR_KS)
            metrics.update(cirr_recall_subset(scores, prepared.reference_index, prepared.target_index,
                                              prepared.subset_indices, CIRR_SUBSET_KS))
        else:
            names = prepared.gallery_names
            top = topk_indices(scores, SUBMISSION_DEPTH, exclude_index=prepared.reference_index)
            subset_top = subset_topk_indices(scores, prepared.reference_index, prepared.subset_indices,
                                             SUBSET_SUBMISSION_DEPTH)
            submission = {
                f"cirr_{prepared.split}_recall.json": {"version": "rc2", "metric": "recall", **{
                    pair_id: [names[index] for index in row] for pair_id, row in zip(prepared.query_ids, top.tolist())}},
                f"cirr_{prepared.split}_recall_subset.json": {"version": "rc2", "metric": "recall_subset", **{
                    pair_id: [names[index] for index in row] for pair_id, row in zip(prepared.query_ids, subset_top)}},
            }
    elif prepared.benchmark == "circo":
        if prepared.ground_truth_indices is not None:
            metrics = circo_map_at_k(scores, prepared.ground_truth_indices, CIRCO_KS)
        else:
            top = topk_indices(scores, SUBMISSION_DEPTH)
            submission = {f"circo_{prepared.split}_submission.json": {
                query_id: [int(prepared.gallery_names[index]) for index in row]
                for query_id, row in zip(prepared.query_ids, top.tolist())}}
    return metrics, submission


def evaluate_prepared(model, prepared_tasks: list[PreparedTask], method: str = "scot") -> dict:
    """Compose the queries of prepared tasks with `method`, rank their galleries and compute the paper metrics.

    Returns `{"benchmark", "split", "method", "metrics": {name: percent}, "counts": {task: {...}},
    "submissions": {file name: JSON object}}` (submissions only on test splits). FashionIQ metrics are per category
    (`dress_R@10`, ...) plus `average_R@10` / `average_R@50`, the mean over categories as in the papers' tables.
    The model is put in eval mode for the call (no Combiner dropout) and restored afterwards."""
    if not prepared_tasks:
        raise ValueError("evaluate_prepared needs at least one prepared task.")
    device, _ = _model_device_dtype(model)
    was_training = model.training
    model.eval()
    try:
        metrics, submissions, counts = {}, {}, {}
        for prepared in prepared_tasks:
            queries = query_embeddings(model, prepared.reference_embeds, prepared.text_embeds, method)
            task_metrics, task_submission = _task_results(prepared, queries, device)
            prefix = f"{prepared.name}_" if prepared.benchmark == "fashioniq" else ""
            metrics.update({f"{prefix}{name}": value for name, value in task_metrics.items()})
            submissions.update(task_submission)
            counts[prepared.name] = prepared.counts
    finally:
        model.train(was_training)
    if prepared_tasks[0].benchmark == "fashioniq" and metrics:
        for k in FASHIONIQ_KS:
            per_category = [metrics[f"{prepared.name}_R@{k}"] for prepared in prepared_tasks]
            metrics[f"average_R@{k}"] = sum(per_category) / len(per_category)
    return {"benchmark": prepared_tasks[0].benchmark, "split": prepared_tasks[0].split, "method": method,
            "metrics": metrics, "counts": counts, "submissions": submissions}


def evaluate_benchmark(model, processor, benchmark: str, data_dir, split: str = "val", method: str = "scot", *,
                       fashioniq_captions: str = "clip4cir", cache_dir=None, batch_size: int = 64,
                       num_workers: int = 0, show_progress: bool = True) -> dict:
    """`prepare_benchmark` then `evaluate_prepared`: the paper metrics of `model` on one benchmark split."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    prepared = prepare_benchmark(model, processor, benchmark, data_dir, split, fashioniq_captions=fashioniq_captions,
                                 cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers,
                                 show_progress=show_progress)
    result = evaluate_prepared(model, prepared, method)
    if benchmark == "fashioniq":
        result["fashioniq_captions"] = fashioniq_captions
    return result


# -- reporting ---------------------------------------------------------------------------------------------------------


def format_table(result: dict) -> str:
    """The metrics laid out like the papers' tables (FashionIQ: Average, Dress, Shirt, Top/Tee; CIRR: Recall@K and
    Recall_subset@K; CIRCO: mAP@K)."""
    metrics, method = result["metrics"], result["method"]
    title = f"{result['benchmark']} {result['split']}, method {method}"
    if result.get("fashioniq_captions"):
        title += f", captions {result['fashioniq_captions']}"
    if not metrics:
        return f"{title}: no public targets; submission files written instead of metrics."
    if result["benchmark"] == "fashioniq":
        groups = [("Average", "average")] + [(CATEGORY_TITLES[name], name) for name in FASHIONIQ_CATEGORIES
                                             if f"{name}_R@10" in metrics]
        header = f"{'':<8}" + "".join(f"{label:^16}" for label, _ in groups)
        subheader = f"{'method':<8}" + "".join(f"{'R@10':>8}{'R@50':>8}" for _ in groups)
        row = f"{method:<8}" + "".join(f"{metrics[f'{key}_R@10']:>8.2f}{metrics[f'{key}_R@50']:>8.2f}"
                                       for _, key in groups)
        lines = [header, subheader, row]
    else:
        names = [f"R@{k}" for k in CIRR_KS] + [f"Rsubset@{k}" for k in CIRR_SUBSET_KS] \
            if result["benchmark"] == "cirr" else [f"mAP@{k}" for k in CIRCO_KS]
        lines = [f"{'method':<8}" + "".join(f"{name:>11}" for name in names),
                 f"{method:<8}" + "".join(f"{metrics[name]:>11.2f}" for name in names)]
    return "\n".join([title, *lines])


def format_counts(result: dict) -> str:
    lines = []
    for name, counts in result["counts"].items():
        line = (f"{name}: {counts['queries_evaluated']}/{counts['queries']} queries evaluated, gallery "
                f"{counts['gallery_images_used']}/{counts['gallery_images']} images")
        if counts["missing_images"] or counts["unreadable_images"]:
            line += f" ({counts['missing_images']} missing, {counts['unreadable_images']} unreadable images skipped)"
        if counts["skipped_by_reason"]:
            line += "; skipped: " + ", ".join(f"{count} {reason}" for reason, count in counts["skipped_by_reason"].items())
        lines.append(line)
    return "\n".join(lines)


def write_outputs(result: dict, output_dir) -> list[Path]:
    """Write `metrics.json` (everything but the submissions) and each submission file; returns the paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = [output_dir / "metrics.json"]
    written[0].write_text(json.dumps({k: v for k, v in result.items() if k != "submissions"}, indent=2) + "\n")
    for file_name, submission in result.get("submissions", {}).items():
        path = output_dir / file_name
        path.write_text(json.dumps(submission) + "\n")
        written.append(path)
    return written


def load_model_and_processor(folder, device: str | None = None):
    """A saved SCOT folder, or a bare encoder folder wrapped with `ScotModel.from_backbone` (untrained Combiner)."""
    import modeling_scot  # noqa: F401 - registers the Auto classes
    from transformers import AutoConfig, AutoProcessor

    from modeling_scot import ScotModel, ScotProcessor

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"--model {folder}: not a folder (expected a saved SCOT model or an encoder folder).")
    if AutoConfig.from_pretrained(folder).model_type == "scot":
        model, processor, trained = ScotModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder), True
    else:
        model, processor, trained = ScotModel.from_backbone(folder), ScotProcessor.from_backbone(folder), False
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor, trained


def _evaluation_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="saved SCOT folder, or a CLIP / BLIP-2 / dual-encoder folder")
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--data_dir", required=True, help="the benchmark's folder in its official layout")
    parser.add_argument("--split", default="val", help="val (default); CIRR test1 / CIRCO test write submissions")
    parser.add_argument("--method", default="scot", choices=METHODS)
    parser.add_argument("--fashioniq_captions", default="clip4cir", choices=FASHIONIQ_CAPTION_MODES,
                        help="clip4cir: 'C1 and c2'; searle: average of both orders")
    parser.add_argument("--output_dir", help="default: outputs/evaluation/{benchmark}-{split}-{method}")
    parser.add_argument("--cache_dir", help=f"embedding cache (default {default_cache_dir()}, or $SCOT_CACHE_DIR)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0, help="image loading processes")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--check", action="store_true", help="only verify the data folder (same as `check`)")
    parser.add_argument("--no_read_images", action="store_true", help="with --check: test existence only, not decoding")
    parser.add_argument("--update_model_card", action="store_true",
                        help="record the result in the README.md model card of --model (a saved SCOT folder)")
    return parser


def _run_check(args) -> int:
    splits = [args.split] if args.split else None
    report = check_benchmark(args.benchmark, args.data_dir, splits, read_images=not args.no_read_images,
                             show_progress=not args.no_progress)
    print(format_check_report(report))
    return 1 if all("error" in counts for counts in report["splits"].values()) else 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["check"]:
        parser = argparse.ArgumentParser(prog="python -m trainers.evaluate check",
                                         description="Verify a benchmark folder: JSON schema, missing and unreadable images.")
        parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
        parser.add_argument("--data_dir", required=True)
        parser.add_argument("--split", help="default: the evaluation splits (val, and test where there is one)")
        parser.add_argument("--no_read_images", action="store_true", help="test existence only, not decoding")
        parser.add_argument("--no_progress", action="store_true")
        return _run_check(parser.parse_args(argv[1:]))
    parser = _evaluation_parser()
    args = parser.parse_args(argv)
    if args.check:
        return _run_check(args)
    if not args.model:
        parser.error("--model is required (unless --check)")

    model, processor, trained = load_model_and_processor(args.model, args.device)
    if args.update_model_card and not trained:
        parser.error(f"--update_model_card: {args.model} is a bare encoder, not a saved SCOT model with a card")
    if args.method == "scot" and not trained:
        logger.warning("%s is a bare encoder: method 'scot' uses an untrained, random Combiner.", args.model)
    result = evaluate_benchmark(
        model, processor, args.benchmark, args.data_dir, args.split, args.method,
        fashioniq_captions=args.fashioniq_captions, cache_dir=args.cache_dir, batch_size=args.batch_size,
        num_workers=args.num_workers, show_progress=not args.no_progress,
    )
    result["model"] = str(args.model)
    output_dir = Path(args.output_dir or Path("outputs") / "evaluation" / f"{args.benchmark}-{result['split']}-{args.method}")
    print(format_table(result))
    print(format_counts(result))
    for path in write_outputs(result, output_dir):
        print(f"wrote {path}")
    if args.update_model_card:
        record_in_model_card(args.model, result)
    return 0


def record_in_model_card(folder, result: dict) -> bool:
    """Record `result` in the model card (README.md) of the saved SCOT model in `folder`; True when it changed.

    Opt-in (`--update_model_card`), never the default: the folder evaluated may be someone else's download, and an
    evaluation should not edit its input unasked. Only the model's own numbers are recorded, as the model-index the
    Hub shows: method `scot` on a split with public targets. A baseline (`image`, `text`, `sum`) measures the encoder,
    and a test split gives submission files, not metrics; both leave the card alone."""
    from hub_cards import update_model_card

    if result["method"] != "scot" or not result["metrics"]:
        reason = "a baseline measures the encoder, not this model" if result["method"] != "scot" else \
            "a test split has no metrics (submission files only)"
        logger.warning("Model card of %s not updated: %s.", folder, reason)
        return False
    update_model_card(folder, result)
    print(f"updated {Path(folder) / 'README.md'}")
    return True


if __name__ == "__main__":
    sys.exit(main())
