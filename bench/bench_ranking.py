"""Blocked top-k ranking (trainers.metrics) against a full float64 sort, at gallery 100k (goal: >= 10x, same results).

The baseline is what peers' evaluation code does: sort every row of the `[Q, G]` score matrix in float64 (a stable
sort, so that ties fall in gallery order as in trainers.metrics), then read the target's position and the top-k
lists from the sorted indices. trainers.metrics instead counts, per query block, how many gallery items beat the
target (recall) and takes `torch.topk` per block (top-k lists, CIRCO mAP, submissions). Both run in the same
process on the same scores, interleaved; the script checks that every result is identical and prints the ratios.

    python bench/bench_ranking.py [--queries 1000] [--gallery 100000] [--repeats 3]
"""

import argparse
import statistics
import time

import torch

from scot_eval.metrics import circo_map_at_k, cirr_recall, recall_at_k, topk_indices


def _full_sort(scores: torch.Tensor) -> torch.Tensor:
    """The baseline peers use: every row sorted in float64 (stable, so ties fall in gallery order)."""
    return torch.sort(scores.double(), dim=1, descending=True, stable=True).indices


def fashioniq_full_sort(scores, target, reference, ground_truths):
    target_rank = (_full_sort(scores) == target[:, None]).nonzero()[:, 1]
    return {f"R@{k}": float((target_rank < k).double().mean() * 100) for k in (10, 50)}


def cirr_full_sort(scores, target, reference, ground_truths):
    order = _full_sort(scores)
    target_rank = (order == target[:, None]).nonzero()[:, 1]
    reference_rank = (order == reference[:, None]).nonzero()[:, 1]
    target_rank = target_rank - (reference_rank < target_rank).long()  # the reference removed from the ranking
    return {f"R@{k}": float((target_rank < k).double().mean() * 100) for k in (1, 5, 10, 50)}


def circo_full_sort(scores, target, reference, ground_truths):
    top = _full_sort(scores)[:, :50]
    hits = torch.stack([torch.isin(row, torch.tensor(truth)) for row, truth in zip(top, ground_truths)]).double()
    precision = torch.cumsum(hits, 1) / torch.arange(1, 51) * hits
    denominators = torch.tensor([len(truth) for truth in ground_truths], dtype=torch.float64)
    return {f"mAP@{k}": float((precision[:, :k].sum(1) / denominators.clamp(max=k)).mean() * 100)
            for k in (5, 10, 25, 50)}


# (name, full-sort baseline, blocked trainers.metrics call); each computes what one evaluation step needs
CASES = [
    ("FashionIQ R@10/50", fashioniq_full_sort, lambda s, t, r, g: recall_at_k(s, t)),
    ("CIRR R@1/5/10/50", cirr_full_sort, lambda s, t, r, g: cirr_recall(s, r, t)),
    ("CIRCO mAP@5..50", circo_full_sort, lambda s, t, r, g: circo_map_at_k(s, g)),
    ("top-50 lists", lambda s, t, r, g: _full_sort(s)[:, :50], lambda s, t, r, g: topk_indices(s, 50)),
]


def _same(first, second) -> bool:
    return torch.equal(first, second) if isinstance(first, torch.Tensor) else first == second


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; scores [{args.queries}, {args.gallery}] "
          f"float32; median of {args.repeats} interleaved runs")
    all_identical = True
    for rounded in (False, True):
        data = make_scores(args, rounded)
        print("scores rounded to float16 precision (ties everywhere)" if rounded else "float32 cosine scores")
        for name, baseline_call, blocked_call in CASES:
            baseline_times, blocked_times = [], []
            for _ in range(args.repeats):  # interleaved, so that drifts in machine load hit both
                start = time.perf_counter()
                baseline = baseline_call(*data)
                baseline_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                blocked = blocked_call(*data)
                blocked_times.append(time.perf_counter() - start)
            identical = _same(baseline, blocked)
            all_identical &= identical
            full, fast = statistics.median(baseline_times), statistics.median(blocked_times)
            print(f"  {name:<22} full sort {full:6.3f} s   blocked {fast:6.3f} s   speed-up {full / fast:5.1f}x   "
                  f"identical: {identical}")
    print("goal: speed-up >= 10x with identical results")
    if not all_identical:
        raise SystemExit("blocked ranking disagrees with the full sort")

def make_scores(args, rounded: bool):
    """Cosine scores of random unit vectors with each target planted a little closer to its query than chance;
    `rounded` rounds them to float16 precision so that ties occur everywhere (both sides must break them alike)."""
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=generator), dim=-1)
    gallery = torch.nn.functional.normalize(torch.randn(args.gallery, args.dim, generator=generator), dim=-1)
    target = torch.randint(args.gallery, (args.queries,), generator=generator)
    gallery[target] = torch.nn.functional.normalize(gallery[target] + 0.15 * queries, dim=-1)
    reference = (target + 1 + torch.randint(args.gallery - 1, (args.queries,), generator=generator)) % args.gallery
    scores = queries @ gallery.T
    if rounded:
        scores = scores.half().float()
    ground_truths = [[int(t)] + torch.randint(args.gallery, (3,), generator=generator).tolist() for t in target]
    return scores, target, reference, ground_truths

if __name__ == "__main__":
    main()
