"""Retrieval metrics for composed image retrieval, as FashionIQ, CIRR and CIRCO papers report them.

Every function takes a score matrix `scores` of shape `[num_queries, gallery_size]` (numpy or torch, any float
dtype, higher = more similar) and integer gallery indices. Results are percentages, like the papers' tables.

Ranking rules, the same everywhere:
- ties are broken by gallery order: of two equal scores the lower gallery index ranks first (what a stable sort
  of the gallery gives), so results never depend on the sort implementation;
- nothing sorts the whole `[Q, G]` matrix: queries are processed in blocks, recall counts how many gallery items
  beat the target, and top-k lists come from `torch.topk` with an exact tie fix-up. A full float64 argsort of a
  100k gallery is what `bench/bench_ranking.py` compares against.
"""

from collections.abc import Sequence

import numpy as np
import torch

# Number of score entries handled per query block (about 64 MB of float32): large enough to be fast, small enough
# that the temporary boolean masks of a 100k gallery stay modest.
_BLOCK_ELEMENTS = 1 << 24


def _as_scores(scores) -> torch.Tensor:
    if isinstance(scores, np.ndarray):
        scores = torch.from_numpy(scores)
    if not isinstance(scores, torch.Tensor):
        raise TypeError(
            f"scores must be a numpy array or torch tensor of shape [queries, gallery], got {type(scores).__name__}."
        )
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError("scores must have shape [queries, gallery] with a "
                         f"non-empty gallery, got {tuple(scores.shape)}.")
    scores = scores.detach()
    if not scores.is_floating_point():
        scores = scores.double()
    elif scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # exact, and numpy has no fast half-precision comparisons
    # one cheap sum first: only a non-finite total needs the full NaN scan
    if not torch.isfinite(scores.sum()) and torch.isnan(scores).any():
        row = int(torch.isnan(scores).any(dim=1).nonzero()[0])
        raise ValueError(f"scores contain NaN (first in query {row}): rankings would be undefined.")
    return scores


def _count_per_row(block: torch.Tensor, compare, values: torch.Tensor) -> torch.Tensor:
    """Per row, how many entries `compare(entry, value of the row)` holds for (`compare` is `np.greater`, ...)."""
    if block.device.type == "cpu":  # numpy counts booleans several times faster than torch does on CPU
        counts = np.count_nonzero(compare(block.numpy(), values.numpy()[:, None]), axis=1)
        return torch.from_numpy(counts.astype(np.int64))
    torch_compare = {np.greater: torch.gt, np.greater_equal: torch.ge, np.equal: torch.eq}[compare]
    return torch_compare(block, values[:, None]).sum(dim=1)


def _as_indices(values, name: str, num_queries: int, gallery_size: int, device,
                allow_none: bool = False) -> torch.Tensor:
    """One gallery index per query as a long tensor; with `allow_none`, -1 too (no such image for that query)."""
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if tensor.ndim != 1 or tensor.shape[0] != num_queries:
        raise ValueError(f"{name} must hold one gallery index per query "
                         f"({num_queries}), got shape {tuple(tensor.shape)}.")
    if tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer gallery indices, got dtype {tensor.dtype}.")
    tensor = tensor.long()
    lowest = -1 if allow_none else 0
    if num_queries and (tensor.min() < lowest or tensor.max() >= gallery_size):
        bad = int(((tensor < lowest) | (tensor >= gallery_size)).nonzero()[0])
        raise ValueError(f"{name}[{bad}] = {int(tensor[bad])} is not a gallery index (gallery size {gallery_size}).")
    return tensor.to(device)


def _index_lists(values, name: str, num_queries: int, gallery_size: int) -> list[list[int]]:
    if len(values) != num_queries:
        raise ValueError(f"{name} must hold one list of gallery indices per query ({num_queries}), got {len(values)}.")
    lists = []
    for position, row in enumerate(values):
        row = [int(index) for index in row]
        for index in row:
            if not 0 <= index < gallery_size:
                raise ValueError(f"{name}[{position}] contains {index}, not a gallery "
                                 f"index (gallery size {gallery_size}).")
        lists.append(list(dict.fromkeys(row)))  # a set, in the given order
    return lists


def _pad(lists: list[list[int]], device) -> torch.Tensor:
    """Rows of different lengths as one `[Q, max_len]` tensor, padded with -1."""
    width = max((len(row) for row in lists), default=0)
    padded = torch.full((len(lists), max(width, 1)), -1, dtype=torch.long)
    for position, row in enumerate(lists):
        padded[position, : len(row)] = torch.tensor(row, dtype=torch.long)
    return padded.to(device)


def _query_blocks(num_queries: int, gallery_size: int, block_size: int | None):
    rows = block_size or max(1, _BLOCK_ELEMENTS // max(gallery_size, 1))
    for start in range(0, num_queries, rows):
        yield start, min(start + rows, num_queries)


def _exclude(block: torch.Tensor, exclude_index: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
    """The block with each query's excluded gallery item scored -inf (a copy; the caller's scores are untouched);
    -1 excludes nothing."""
    if exclude_index is None:
        return block
    block = block.clone()
    excluded = exclude_index[start:stop]
    rows = (excluded >= 0).nonzero().flatten()
    block[rows, excluded[rows]] = float("-inf")
    return block


def _ranks_in_block(block: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of `block[i, targets[i]]` in row i: items scored higher, plus equal ones earlier in the gallery."""
    rows = torch.arange(len(block), device=block.device)
    target_scores = block[rows, targets]
    ranks = _count_per_row(block, np.greater, target_scores).to(block.device)
    tied = _count_per_row(block, np.equal, target_scores).to(block.device) - 1  # minus the target itself
    tied_rows = (tied > 0).nonzero().flatten().tolist()  # rare with float32 embeddings: count the earlier ties
    if tied_rows and block.device.type == "cpu":
        scores_np, targets_np, target_np = block.numpy(), targets.cpu().numpy(), target_scores.numpy()
        for row in tied_rows:
            ranks[row] += int(np.count_nonzero(scores_np[row, : targets_np[row]] == target_np[row]))
    for row in tied_rows if block.device.type != "cpu" else ():
        ranks[row] += int((block[row, : targets[row]] == target_scores[row]).sum())
    return ranks


def target_ranks(scores, target_index, exclude_index=None, block_size: int | None = None) -> torch.Tensor:
    """0-based rank of each query's target in its ranking of the gallery (0 = retrieved first).

    The rank is the number of gallery items scored above the target plus the number scored equal to it that come
    earlier in the gallery; `exclude_index` (one gallery index per query, e.g. CIRR's reference image) is removed
    from the ranking first. Computed in query blocks, without sorting.
    """
    scores = _as_scores(scores)
    num_queries, gallery_size = scores.shape
    target_index = _as_indices(target_index, "target_index", num_queries, gallery_size, scores.device)
    if exclude_index is not None:
        exclude_index = _as_indices(exclude_index, "exclude_index", num_queries, gallery_size, scores.device)
        same = (exclude_index == target_index).nonzero()
        if len(same):
            raise ValueError(f"query {int(same[0])}: the target is the excluded "
                             "(reference) image, so it cannot be ranked.")
    ranks = torch.empty(num_queries, dtype=torch.long, device=scores.device)
    for start, stop in _query_blocks(num_queries, gallery_size, block_size):
        ranks[start:stop] = _ranks_in_block(scores[start:stop], target_index[start:stop])
    if exclude_index is not None:
        # Removing the excluded item moves the target up by one wherever that item was ranked ahead of it.
        rows = torch.arange(num_queries, device=scores.device)
        excluded, target = scores[rows, exclude_index], scores[rows, target_index]
        ranks -= ((excluded > target) | ((excluded == target) & (exclude_index < target_index))).long()
    return ranks.cpu()


def _recall_from_ranks(ranks: torch.Tensor, ks: Sequence[int], prefix: str) -> dict[str, float]:
    if len(ranks) == 0:
        raise ValueError("no queries to evaluate: scores has 0 rows.")
    return {f"{prefix}@{k}": float((ranks < k).double().mean() * 100) for k in _check_ks(ks)}


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}.")
    return [int(k) for k in ks]


def recall_at_k(scores, target_index, ks: Sequence[int] = (10, 50), block_size: int | None = None) -> dict[str, float]:
    """Recall@K in percent: the share of queries whose target is among the first K of the whole gallery.

    FashionIQ's protocol: the reference image stays in the gallery. Returns `{"R@10": ..., "R@50": ...}`.

    Args:
        scores: `[queries, gallery]` similarities, numpy or torch; higher is more similar.
        target_index: `[queries]` gallery index of each query's target.
        ks: the cut-offs K.
    """
    return _recall_from_ranks(target_ranks(scores, target_index, block_size=block_size), ks, "R")


def cirr_recall(
    scores, reference_index, target_index, ks: Sequence[int] = (1, 5, 10, 50), block_size: int | None = None
) -> dict[str, float]:
    """CIRR Recall@K in percent: each query's reference image is removed from its ranking before counting.

    Returns `{"R@1": ..., "R@5": ..., "R@10": ..., "R@50": ...}`.

    Args:
        scores: `[queries, gallery]` similarities.
        reference_index: `[queries]` gallery index of each query's reference image (removed from its ranking).
        target_index: `[queries]` gallery index of each query's target (`target_hard`).
    """
    ranks = target_ranks(scores, target_index, exclude_index=reference_index, block_size=block_size)
    return _recall_from_ranks(ranks, ks, "R")


def _subset_members(scores, reference_index, subset_indices, name="subset_indices"):
    scores = _as_scores(scores)
    num_queries, gallery_size = scores.shape
    # -1: the query's reference is not a gallery image (a test query whose reference image is missing)
    reference_index = _as_indices(reference_index, "reference_index", num_queries, gallery_size, "cpu",
                                  allow_none=True).tolist()
    subsets = _index_lists(subset_indices, name, num_queries, gallery_size)
    # CIRR's img_set.members contains the reference itself; the protocol ranks the other members only.
    members = [[index for index in row if index != reference] for row, reference in zip(subsets, reference_index)]
    return scores, members


def cirr_recall_subset(
    scores, reference_index, target_index, subset_indices, ks: Sequence[int] = (1, 2, 3)
) -> dict[str, float]:
    """CIRR Recall_subset@K in percent: each query ranks only its own image set (`img_set.members`), reference removed.

    Returns `{"Rsubset@1": ..., "Rsubset@2": ..., "Rsubset@3": ...}`.

    Args:
        scores: `[queries, gallery]` similarities.
        reference_index: `[queries]` gallery index of each query's reference image.
        target_index: `[queries]` gallery index of each query's target; it must be a member of the query's subset.
        subset_indices: per query, the gallery indices of its image set (a list of lists; the reference may be in it).
    """
    scores, members = _subset_members(scores, reference_index, subset_indices)
    num_queries, gallery_size = scores.shape
    targets = _as_indices(target_index, "target_index", num_queries, gallery_size, "cpu").tolist()
    for position, (row, target) in enumerate(zip(members, targets)):
        if target not in row:
            raise ValueError(
                f"query {position}: target index {target} is not among its "
                f"subset members other than the reference {row}."
            )
    padded = _pad(members, scores.device)
    valid = padded >= 0
    target_tensor = torch.tensor(targets, dtype=torch.long, device=scores.device)[:, None]
    member_scores = scores.gather(1, padded.clamp(min=0))
    target_scores = scores.gather(1, target_tensor)
    ahead = ((member_scores > target_scores) & valid).sum(dim=1)
    tied_before = ((member_scores == target_scores) & valid & (padded < target_tensor)).sum(dim=1)
    return _recall_from_ranks((ahead + tied_before).cpu(), ks, "Rsubset")


def topk_indices(scores, k: int, exclude_index=None, block_size: int | None = None) -> torch.Tensor:
    """The `k` best gallery indices per query, best first, ties broken by gallery order: `[queries, k]` (long, CPU).

    Equal to the first `k` columns of a stable descending sort of each row, computed with `torch.topk` over query
    blocks. `exclude_index` (one gallery index per query, -1 for none) is left out of every list; `k` is clamped to
    the number of gallery items that can be returned.
    """
    scores = _as_scores(scores)
    num_queries, gallery_size = scores.shape
    if exclude_index is not None:
        exclude_index = _as_indices(exclude_index, "exclude_index", num_queries, gallery_size, scores.device,
                                    allow_none=True)
    k = min(int(k), gallery_size - (exclude_index is not None))
    if k < 1:
        raise ValueError("k must be at least 1 and the gallery must have an item "
                         f"to return (gallery size {gallery_size}).")
    result = torch.empty(num_queries, k, dtype=torch.long)
    for start, stop in _query_blocks(num_queries, gallery_size, block_size):
        block = _exclude(scores[start:stop], exclude_index, start, stop)
        values, indices = torch.topk(block, k, dim=1, sorted=True)
        kth_value = values[:, -1:]
        # topk's order among equal values is unspecified: reorder each row by (score descending, index ascending).
        indices, by_index = indices.sort(dim=1)
        order = torch.sort(values.gather(1, by_index), dim=1, descending=True, stable=True).indices
        indices = indices.gather(1, order)
        # If the k-th score is tied with items left out, topk may have kept the wrong ones among the tied: redo
        # those rows from every item scoring at least the k-th score (listed in gallery order, so a stable sort
        # of their scores breaks the ties by gallery order).
        straddling = (_count_per_row(block, np.greater_equal, kth_value[:, 0]) > k).nonzero().flatten()
        for row in straddling.tolist():
            candidates = (block[row] >= kth_value[row]).nonzero().flatten()
            order = torch.sort(block[row, candidates], descending=True, stable=True).indices[:k]
            indices[row] = candidates[order]
        result[start:stop] = indices.cpu()
    return result


def subset_topk_indices(scores, reference_index, subset_indices, k: int = 3) -> list[list[int]]:
    """Per query, its subset members (reference removed) ranked best first, ties by gallery order, at most `k`.

    What CIRR's `recall_subset` submission lists (k = 3).
    """
    scores, members = _subset_members(scores, reference_index, subset_indices)
    ranked = []
    for row_scores, row in zip(scores, members):
        # Sorting the member indices first makes the stable sort break ties by gallery order.
        row = sorted(row)
        order = torch.sort(row_scores[torch.tensor(row, dtype=torch.long, device=scores.device)], descending=True,
                           stable=True).indices if row else torch.empty(0, dtype=torch.long)
        ranked.append([row[position] for position in order[:k].tolist()])
    return ranked


def circo_map_at_k(
    scores, ground_truth_indices, ks: Sequence[int] = (5, 10, 25, 50), block_size: int | None = None, *,
    num_ground_truths: Sequence[int] | None = None,
) -> dict[str, float]:
    """CIRCO mAP@K in percent, over each query's set of annotated ground truths.

    AP@K = (1 / min(#ground truths, K)) * sum over ranks i <= K of precision@i * [item i is a ground truth].
    The reference image is not removed (CIRCO's evaluation server and SEARLE rank the whole gallery).
    Returns `{"mAP@5": ..., "mAP@10": ..., "mAP@25": ..., "mAP@50": ...}`.

    Args:
        scores: `[queries, gallery]` similarities.
        ground_truth_indices: per query, the gallery indices of its ground truths (duplicates count once).
        num_ground_truths: per query, how many ground truths are annotated, the #ground truths of the denominator
            (default: the length of each list). CIRCO's server divides by all annotated ground truths, so an
            evaluation whose gallery lacks some of them passes the annotated counts: a missing ground truth then
            lowers the AP instead of raising it, and a query with none in the gallery counts as AP 0. Without it,
            every list must be non-empty.
    """
    scores = _as_scores(scores)
    num_queries, gallery_size = scores.shape
    ks = _check_ks(ks)
    ground_truths = _index_lists(ground_truth_indices, "ground_truth_indices", num_queries, gallery_size)
    if num_ground_truths is None:
        empty = [position for position, row in enumerate(ground_truths) if not row]
        if empty:
            raise ValueError(f"ground_truth_indices[{empty[0]}] is empty: every CIRCO "
                             "query needs at least one ground truth.")
        denominators = [len(row) for row in ground_truths]
    else:
        denominators = [int(count) for count in num_ground_truths]
        if len(denominators) != num_queries:
            raise ValueError(f"num_ground_truths must hold one count per query ({num_queries}), "
                             f"got {len(denominators)}.")
        for position, (count, row) in enumerate(zip(denominators, ground_truths)):
            if count < max(len(row), 1):
                raise ValueError(f"num_ground_truths[{position}] = {count}, but the query has {len(row)} ground "
                                 "truth(s) in the gallery: it must count at least those, and at least one.")
    if num_queries == 0:
        raise ValueError("no queries to evaluate: scores has 0 rows.")
    depth = min(max(ks), gallery_size)
    top = topk_indices(scores, depth, block_size=block_size)
    padded = _pad(ground_truths, "cpu")
    is_ground_truth = (top[:, :, None] == padded[:, None, :]).any(dim=2).double()
    positions = torch.arange(1, depth + 1, dtype=torch.float64)
    precision_at_hits = torch.cumsum(is_ground_truth, dim=1) / positions * is_ground_truth
    denominator = torch.tensor(denominators, dtype=torch.float64)
    return {
        f"mAP@{k}": float((precision_at_hits[:, :k].sum(dim=1) / denominator.clamp(max=k)).mean() * 100)
        for k in ks
    }


__all__ = [
    "circo_map_at_k",
    "cirr_recall",
    "cirr_recall_subset",
    "recall_at_k",
    "subset_topk_indices",
    "target_ranks",
    "topk_indices",
]
