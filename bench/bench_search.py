"""Top-50 gallery search (scot_search.index.GalleryIndex, exact "flat" index) against a numpy full sort, and
against a memory-bandwidth bound, at galleries of 10k, 100k and 1M random 256-d unit vectors.

Goals (exact "flat" index, issue 12): never slower than the numpy baseline (ratio >= 1x) at every size, and within
1.5x of the bound (ours <= 1.5 * bound) from 1M images on, for both
- latency: one query at a time, median time per query;
- throughput: a batch of `--batch` queries in one call, queries per second.
(Below 1M, fixed per-call costs and the caches weigh more than the gallery's read; the bound is shown, not held.)

What is measured, all in one process and on the same data:
- data: gaussian vectors, L2-normalised, float32, 256-d, fixed seeds; the queries are drawn the same way, independent
  of the gallery. Ids are `str(row)`.
- baseline (what code without an index does): latency `scores = gallery @ q; np.argsort(-scores)[:50]`; throughput
  `queries @ gallery.T` in blocks of at most `--block_mb` of scores, every row of a block fully sorted with
  `np.argsort`, the rows split over `--threads` Python threads (numpy sorts release the GIL), so that both sides use
  all the threads they are given.
- ours: `GalleryIndex(gallery, ids).search(queries, 50)`.
- the top-50 positions of both are compared slot by slot: "identical", or the number of slots that differ; a slot
  whose two gallery items score within 1e-6 of each other (recomputed in float64) is a tie swap, not a mismatch.
  Any mismatch makes the script exit with an error.
- bound: the time the machine needs at least, from two numbers measured before and again after the runs (the
  better of the two is used, so that load during one measurement does not loosen the bound):
  * memory bandwidth from `np.copyto(dst, src)` on `--copy_mb` arrays, best of 5, counted as read + write =
    2 x size bytes per copy (the assumption: a streaming read runs at the copy's read+write rate; with
    write-allocate caches a copy really moves 3 x size, so this rate is, if anything, a low estimate and the bound
    a loose one). It is measured with one thread (np.copyto) and with `--threads` threads each copying a slice;
    the higher of the two is used.
  * arithmetic rate from a float32 matrix product `[batch, 256] @ [256, 65536]` in numpy, best of 10, all threads.
  An exact search must read the gallery once (N * d * 4 bytes) and do 2 * N * d flops per query, so the bound is
  max(read time, flop time): for one query the read dominates (0.5 flop per byte: bandwidth-bound); for a batch
  the gallery is read once per batch and the flops grow with the batch, so batched search is compute-bound
  whenever batch * 2 * N * d / flop rate > N * d * 4 / bandwidth (the "by" column says which one binds; the
  notes give the achieved GFLOP/s). At 10k the gallery (10 MB) fits in a 32 MB L3 cache and stays there between
  queries, so the DRAM bound is not a hard lower bound there (ours/bound < 1 is possible); the table marks such
  rows. The bound is that of a float32 search: where ours screens a batch in bfloat16 (see below), its product
  runs faster than the float32 matmul, so ours/bound < 1 is possible there too (and the achieved GFLOP/s, counted
  as float32 flops, can exceed the float32 rate). The notes also give the ceiling, baseline / bound: no float32
  search can beat the baseline by more than that (the baseline's own `gallery @ q` already runs close to memory
  speed; only its sort can be saved).
- timing: baseline and ours alternate in whole passes (all latency queries of one, a pause, all of the other,
  `--alternations` times), so that machine load drifts hit both, while the thread pools (numpy's OpenBLAS, torch's
  OpenMP, the baseline's sorting threads) do not spin against each other query by query. One warm-up call each
  before timing.
- ours runs as GalleryIndex.search does it: the scores by numpy's own BLAS (one query: the baseline's matrix-vector
  product, on the same threads; a batch: `queries @ gallery.T`), then a partial selection instead of a sort: for
  one query (from 16k images on) the maxima of groups of 32 scores, and the 50 best among the groups whose maximum
  reaches the 50th best maximum (`scot_search.index.single_top_k`, ~0.2 ms at 1M where `np.argpartition` of all
  the scores took ~1.3), then a sort of the 50. A batch whose scores of the whole gallery exceed
  256 MiB (256 queries from 262k images on) is scored block by block of the gallery (16k rows for 256 queries: the
  product at the matmul's full rate, the gallery read once, each block's scores selected while still in cache):
  each block is screened by the maximum of every group of 32 scores and only the groups that can still enter the
  top 50 are gathered and merged (`scot_search.index.blocked_top_k`); smaller batches take `torch.topk` over all
  their scores at once (faster at 100k). So ours can only lose to the baseline by noise.
  Except where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX; the header says whether): there a batch
  of at least 16 queries on at least 2^18 images (here: 1M) is screened in two passes
  (`GalleryIndex._screened_top_k`): every score by torch's bfloat16 matrix product (oneDNN) of the queries and a
  bfloat16 copy of the gallery (made once, by the first such search: the warm-up call), block by block of the
  gallery, screened by group maxima as above; then, per query, the rows whose bfloat16 score is within twice a
  rigorous bound on the bfloat16 error (~0.03 for unit vectors) of the k-th best are rescored in float32 (numpy)
  and the top 50 of those kept: the float32 top 50 (the comparison below checks it), with the product at 2.5-4x
  the float32 matmul's rate. Single queries stay float32 (torch's bfloat16 matrix-vector product was no faster).
  (faiss's flat search, used before: a single query scanned with one OpenMP thread lost to the baseline on an idle
  2-core machine, 0.6x at 100k, and its batched BLAS path fell to ~1x on a loaded one. A `torch.topk` of each block's
  scores, or of all the scores in blocks of queries, as before, cost a third to a half of the product at 1M images.)
- approximate indexes (`--approximate`): "hnsw" (M 32, efConstruction 200, efSearch 128) and "ivf" (nlist 4*sqrt(N),
  nprobe 16), the GalleryIndex defaults, as extra rows with their recall@50 against the exact top-50 and their
  build time. They are not held to the goals (they read only part of the gallery). Random gaussian vectors have no
  cluster structure, the worst case for both, so their recall here is far below what real image embeddings give.
  By default they are built only up to `--approximate_max_size` 100k: on 2 cores the 100k builds took ~100 s
  (HNSW) and ~5 s (IVF); at 1M, HNSW insertion grows more than 10x (~20 min) and IVF's k-means ~30x (10x the
  training sample, 3x the lists: ~3 min), which would break the ~5 minute budget of a default run.

All thread pools get `--threads` threads (default: all cores the process may use): OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS and MKL_NUM_THREADS are set before numpy and faiss load, then faiss.omp_set_num_threads and
torch.set_num_threads. The top of the output shows what each library reports.

    python bench/bench_search.py [--sizes 10000 100000 1000000] [--quick] [--threads N] [--batch 256]
                                 [--approximate] [--output_json results.json]
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path


def _requested_threads(argv) -> int:
    """`--threads` from the command line, read before numpy and faiss load (their thread pools read it at load)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--threads", type=int, default=None)
    known, _ = parser.parse_known_args(argv)
    return known.threads or len(os.sched_getaffinity(0))


THREADS = _requested_threads(sys.argv[1:])
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = str(THREADS)

# imported only now: their thread pools read the variables above when they load
import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from scot_search.index import GalleryIndex, bfloat16_matmul_is_native  # noqa: E402

K = 50
DIM = 256
TIE_TOLERANCE = 1e-6
PAUSE_S = 0.2  # between phases, so that one library's spinning worker threads have gone idle before the other runs
GOAL_RATIO = 1.0  # the exact index is never slower than the baseline
GOAL_OVER_BOUND = 1.5  # ... and within this factor of the bound, for galleries of at least BOUND_GOAL_FROM images
BOUND_GOAL_FROM = 1_000_000


@dataclass
class Row:
    size: int
    mode: str  # "latency", "throughput (batch B)", diagnostics "latency, ..." / "throughput, ...", "latency hnsw", ...
    index_type: str
    unit: str  # "ms" (latency: lower is better) or "q/s" (throughput: higher is better)
    baseline: float
    ours: float
    ratio: float  # speed-up of ours over the baseline
    queries_per_call: int
    held_to_goals: bool = False  # the exact index's own rows; diagnostics and approximate indexes are not
    mismatches: int | None = None
    tie_swaps: int | None = None
    recall_at_50: float | None = None
    build_s: float | None = None
    samples: int = 0
    # filled in by `add_bounds` once the machine's limits are final
    bound: float | None = None  # same unit as ours
    bound_by: str = ""  # "memory" or "compute"
    ours_over_bound: float | None = None  # time ratio: ours / bound (1 = at the bound)
    ceiling: float | None = None  # baseline / bound: the highest speed-up the bound allows
    gflops: float | None = None  # achieved, counting 2 * N * d flops per query
    fits_in_cache: bool = False
    goal_met: bool | None = None  # None: not held to the goals

    def seconds_per_call(self, value: float) -> float:
        return value / 1e3 if self.unit == "ms" else self.queries_per_call / value


def add_bounds(rows: list[Row], limits: dict) -> None:
    """Bound, ours/bound, ceiling, achieved GFLOP/s and goal of every exact row, from the best measured limits."""
    for row in rows:
        ours_s, baseline_s = row.seconds_per_call(row.ours), row.seconds_per_call(row.baseline)
        flops = 2 * row.size * DIM * row.queries_per_call
        row.gflops = flops / ours_s / 1e9
        if row.index_type != "flat":
            continue
        read_s, flop_s = row.size * DIM * 4 / limits["bandwidth"], flops / limits["flop_rate"]
        bound_s, row.bound_by = (read_s, "memory") if read_s >= flop_s else (flop_s, "compute")
        row.bound = bound_s * 1e3 if row.unit == "ms" else row.queries_per_call / bound_s
        row.ours_over_bound = ours_s / bound_s
        row.ceiling = baseline_s / bound_s
        row.fits_in_cache = 0 < row.size * DIM * 4 <= limits["l3_bytes"]
        if row.held_to_goals:
            row.goal_met = (row.ratio >= GOAL_RATIO and row.mismatches == 0
                            and (row.size < BOUND_GOAL_FROM or row.ours_over_bound <= GOAL_OVER_BOUND))


# -- data and the two implementations ---------------------------------------------------------------------------------

def unit_vectors(count: int, dim: int, seed) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)
    vectors /= np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]
    return vectors


def baseline_single(gallery: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = gallery @ query
    return np.argsort(-scores)[:k]


def baseline_batch(gallery: np.ndarray, queries: np.ndarray, k: int, block_bytes: int, pool, threads: int):
    """`queries @ gallery.T` a block of rows at a time, every row fully sorted; rows split over the thread pool."""
    out = np.empty((len(queries), k), np.int64)
    rows_per_block = max(1, block_bytes // (4 * len(gallery)))
    for start in range(0, len(queries), rows_per_block):
        scores = queries[start : start + rows_per_block] @ gallery.T

        def sort_rows(rows, scores=scores, start=start):
            for row in rows:
                out[start + row] = np.argsort(-scores[row])[:k]

        list(pool.map(sort_rows, np.array_split(np.arange(len(scores)), threads)))
    return out


def compare_top_k(expected: np.ndarray, found: np.ndarray, gallery: np.ndarray, queries: np.ndarray):
    """(mismatched slots, tie swaps): slots whose positions differ, split by whether the two items tie in float64."""
    rows, cols = np.nonzero(expected != found)
    if not len(rows):
        return 0, 0
    query64 = queries[rows].astype(np.float64)
    score_expected = np.einsum("ij,ij->i", gallery[expected[rows, cols]].astype(np.float64), query64)
    score_found = np.einsum("ij,ij->i", gallery[found[rows, cols]].astype(np.float64), query64)
    ties = np.abs(score_expected - score_found) <= TIE_TOLERANCE
    return int((~ties).sum()), int(ties.sum())


def recall(exact: np.ndarray, approximate: np.ndarray) -> float:
    hits = [len(np.intersect1d(e, a[a >= 0])) for e, a in zip(exact, approximate)]
    return float(np.mean(hits)) / exact.shape[1]


# -- machine limits ---------------------------------------------------------------------------------------------------

def copy_bandwidth(size_mb: int, threads: int, repeats: int = 5) -> dict:
    """Best read+write rate (bytes/s) of np.copyto on `size_mb` arrays, with 1 thread and with `threads` threads."""
    src = np.random.default_rng(0).random(size_mb * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    dst.fill(1.0)  # fault the pages in before timing
    best = {}
    src_parts, dst_parts = np.array_split(src, threads), np.array_split(dst, threads)
    with ThreadPoolExecutor(threads) as pool:
        for name, copy in (("1 thread", lambda: np.copyto(dst, src)),
                           (f"{threads} threads", lambda: list(pool.map(np.copyto, dst_parts, src_parts)))):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                copy()
                times.append(time.perf_counter() - start)
            best[name] = 2 * src.nbytes / min(times)
    return best


def matmul_rate(batch: int, repeats: int = 10) -> float:
    """Best float32 flop rate (flop/s) of numpy's `[batch, 256] @ [256, 65536]`, all threads."""
    rng = np.random.default_rng(1)
    left = rng.standard_normal((batch, DIM), dtype=np.float32)
    right = rng.standard_normal((65536, DIM), dtype=np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        left @ right.T
        times.append(time.perf_counter() - start)
    return 2 * batch * DIM * 65536 / min(times)


def l3_cache_bytes() -> int:
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return 0
    multiplier = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * multiplier


def thread_report(threads: int) -> str:
    parts = [f"--threads {threads}", f"faiss.omp_get_max_threads() {faiss.omp_get_max_threads()}",
             f"torch.get_num_threads() {torch.get_num_threads()}"]
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        parts.append(f"numpy BLAS: OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']} (threadpoolctl absent)")
    else:
        for pool in threadpool_info():
            library = Path(pool["filepath"]).parent.name.replace(".libs", "").replace("lib", "") or pool["prefix"]
            parts.append(f"{pool['internal_api']} ({library}) {pool['num_threads']}")
    return "; ".join(parts)


def measure_limits(args) -> dict:
    bandwidths = copy_bandwidth(args.copy_mb, args.threads)
    limits = {"bandwidths": bandwidths, "bandwidth": max(bandwidths.values()), "flop_rate": matmul_rate(args.batch),
              "l3_bytes": l3_cache_bytes()}
    print(f"  copy bandwidth (read+write, best of 5, {args.copy_mb} MiB): "
          + ", ".join(f"{name} {rate / 1e9:.1f} GB/s" for name, rate in bandwidths.items())
          + f"; numpy float32 matmul [{args.batch}, {DIM}] @ [{DIM}, 65536], {args.threads} threads, best of 10: "
          f"{limits['flop_rate'] / 1e9:.0f} GFLOP/s", flush=True)
    return limits


# -- one gallery size -------------------------------------------------------------------------------------------------

def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def time_latency(search, queries, rounds: int):
    """Per-query seconds over `rounds` passes and the positions of the last pass."""
    times, positions = [], [None] * len(queries)
    for _ in range(rounds):
        for i, query in enumerate(queries):
            seconds, positions[i] = timed(search, query)
            times.append(seconds)
    return times, np.stack(positions)


def bench_size(size: int, args, pool) -> list[Row]:
    seconds, gallery = timed(unit_vectors, size, DIM, [args.seed, size])
    latency_queries = unit_vectors(args.latency_queries if size <= 100_000 else
                                   max(10, args.latency_queries * 100_000 // size), DIM, [args.seed, size, 1])
    batch_queries = unit_vectors(args.batch, DIM, [args.seed, size, 2])
    ids = [str(i) for i in range(size)]
    build_seconds, index = timed(GalleryIndex, gallery, ids, index_type="flat")
    print(f"gallery {size:,}: data {seconds:.1f} s, flat index {build_seconds:.1f} s, "
          f"{len(latency_queries)} latency queries x {args.alternations * args.rounds} passes, batch {args.batch}",
          flush=True)
    block_bytes = args.block_mb * 2**20

    def baseline_single_call(query):
        return baseline_single(gallery, query, K)

    def ours_single(query, searched=index):
        return searched.search(query[None], K)[1][0]

    def batch_runs(searched, runs: int):
        times = []
        for _ in range(runs):
            seconds, (_, positions) = timed(searched.search, batch_queries, K)
            times.append(seconds)
        return times, positions

    # warm-up: one call of each
    baseline_single_call(latency_queries[0])
    ours_single(latency_queries[0])
    index.search(batch_queries[:32], K)

    # latency: whole passes over the queries, baseline and ours alternating
    base_times, ours_times = [], []
    for _ in range(args.alternations):
        times, base_positions = time_latency(baseline_single_call, latency_queries, args.rounds)
        base_times += times
        time.sleep(PAUSE_S)
        times, ours_positions = time_latency(ours_single, latency_queries, args.rounds)
        ours_times += times
        time.sleep(PAUSE_S)
    mismatches, ties = compare_top_k(base_positions, ours_positions, gallery, latency_queries)
    base_ms, ours_ms = statistics.median(base_times) * 1e3, statistics.median(ours_times) * 1e3
    rows = [Row(size, "latency", "flat", "ms", base_ms, ours_ms, base_ms / ours_ms, 1, held_to_goals=True,
                mismatches=mismatches, tie_swaps=ties, samples=len(ours_times))]
    exact_latency = ours_positions

    # throughput: whole batches, alternating, as many runs as fit in the time budget (at least one each)
    base_runs, ours_runs, spent = [], [], 0.0
    while len(ours_runs) < args.batch_runs and (not ours_runs or spent < args.batch_budget_s):
        seconds, base_positions = timed(baseline_batch, gallery, batch_queries, K, block_bytes, pool, args.threads)
        base_runs.append(seconds)
        time.sleep(PAUSE_S)
        times, ours_positions = batch_runs(index, 1)
        ours_runs += times
        time.sleep(PAUSE_S)
        spent += seconds + times[0]
    mismatches, ties = compare_top_k(base_positions, ours_positions, gallery, batch_queries)
    base_qps, ours_qps = args.batch / statistics.median(base_runs), args.batch / statistics.median(ours_runs)
    rows.append(Row(size, f"throughput (batch {args.batch})", "flat", "q/s", base_qps, ours_qps, ours_qps / base_qps,
                    args.batch, held_to_goals=True, mismatches=mismatches, tie_swaps=ties, samples=len(ours_runs)))
    exact_batch = ours_positions

    if args.approximate and size <= args.approximate_max_size:
        for index_type in ("hnsw", "ivf"):
            build_seconds, approximate = timed(GalleryIndex, gallery, ids, index_type=index_type)
            print(f"  {index_type} index built in {build_seconds:.1f} s ({approximate.index_options})", flush=True)
            approximate_single = partial(ours_single, searched=approximate)
            approximate_single(latency_queries[0])
            times, positions = time_latency(approximate_single, latency_queries, args.rounds * args.alternations)
            approximate_ms = statistics.median(times) * 1e3
            rows.append(Row(size, f"latency {index_type}", index_type, "ms", base_ms, approximate_ms,
                            base_ms / approximate_ms, 1, recall_at_50=recall(exact_latency, positions),
                            build_s=build_seconds, samples=len(times)))
            times, positions = batch_runs(approximate, len(ours_runs))
            approximate_qps = args.batch / statistics.median(times)
            rows.append(Row(size, f"throughput {index_type}", index_type, "q/s", base_qps, approximate_qps,
                            approximate_qps / base_qps, args.batch, recall_at_50=recall(exact_batch, positions),
                            build_s=build_seconds, samples=len(times)))
            del approximate
            time.sleep(PAUSE_S)
    elif args.approximate:
        print(f"  hnsw/ivf skipped at {size:,} (> --approximate_max_size {args.approximate_max_size:,})")
    return rows


# -- report -----------------------------------------------------------------------------------------------------------

def _value(value, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f} ms" if unit == "ms" else f"{value:,.0f} q/s"


def _notes(row: Row) -> str:
    notes = []
    if row.mismatches is not None:
        if row.mismatches:
            notes.append(f"{row.mismatches} MISMATCHES")
        else:
            notes.append("identical" + (f" ({row.tie_swaps} tie swaps)" if row.tie_swaps else ""))
    if row.recall_at_50 is not None:
        notes.append(f"recall@50 {row.recall_at_50:.3f}, build {row.build_s:.1f} s")
    if row.ceiling is not None:
        notes.append(f"ceiling {row.ceiling:.1f}x")
    if row.index_type == "flat" and row.unit == "q/s":
        notes.append(f"{row.gflops:.0f} GFLOP/s")
    if row.fits_in_cache and row.bound is not None:
        notes.append("gallery fits in L3")
    return ", ".join(notes)


def print_table(rows: list[Row]) -> None:
    header = ("size", "mode", "baseline", "ours", "ratio", "bound", "by", "ours/bound", "goal", "notes")
    lines = [header]
    for row in rows:
        goal = "-" if row.goal_met is None else ("yes" if row.goal_met else "NO")
        lines.append((f"{row.size:,}", row.mode, _value(row.baseline, row.unit), _value(row.ours, row.unit),
                      "-" if row.ratio is None else f"{row.ratio:.1f}x", _value(row.bound, row.unit),
                      row.bound_by or "-", "-" if row.ours_over_bound is None else f"{row.ours_over_bound:.2f}x",
                      goal, _notes(row)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    align_left = {1, 6, 8, 9}
    for number, line in enumerate(lines):
        print("  ".join(cell.ljust(width) if i in align_left else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths))).rstrip())
        if number == 0:
            print("  ".join("-" * width for width in widths))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="gallery sizes")
    parser.add_argument("--quick", action="store_true", help="a small run: gallery 10k only")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="threads for numpy's BLAS, faiss, torch and the baseline's sorts (default: all cores)")
    parser.add_argument("--batch", type=int, default=256, help="queries per call in the throughput measurement")
    parser.add_argument("--latency_queries", type=int, default=50,
                        help="single queries timed at sizes <= 100k (scaled down above, at least 10: 10 at 1M)")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the latency queries per alternation")
    parser.add_argument("--alternations", type=int, default=2, help="baseline/ours alternations of the latency passes")
    parser.add_argument("--batch_runs", type=int, default=3, help="at most this many timed batches per side")
    parser.add_argument("--batch_budget_s", type=float, default=20.0,
                        help="no further batch runs once both sides have spent this long (seconds)")
    parser.add_argument("--block_mb", type=int, default=256, help="the baseline's block of batched scores (MiB)")
    parser.add_argument("--copy_mb", type=int, default=256, help="array size of the copy-bandwidth measurement (MiB)")
    parser.add_argument("--approximate", action="store_true", help="also time the hnsw and ivf indexes (recall@50)")
    parser.add_argument("--approximate_max_size", type=int, default=100_000,
                        help="build hnsw/ivf only up to this gallery size (at 1M on 2 cores: hnsw ~20 min, "
                             "ivf ~3 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None, help="also write the settings and rows to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.sizes = [10_000]
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)

    print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"numpy {np.__version__}, faiss {faiss.__version__}, torch {torch.__version__}, python "
          f"{platform.python_version()}, {len(os.sched_getaffinity(0))} cores available, "
          f"L3 {l3_cache_bytes() // 2**20} MiB")
    print("threads: " + thread_report(args.threads))
    print("bfloat16 screen of batches (native bfloat16 matmul): "
          + ("yes" if bfloat16_matmul_is_native() else "no, float32 only"))
    print("machine limits:")
    limits = measure_limits(args)
    print(f"top-{K}, d = {DIM}; goal (flat rows): ratio >= {GOAL_RATIO:g}x, ours/bound <= {GOAL_OVER_BOUND:g}x from "
          f"{BOUND_GOAL_FROM:,} images, identical top-{K}", flush=True)

    rows = []
    started = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        for size in args.sizes:
            rows += bench_size(size, args, pool)
    elapsed = time.perf_counter() - started
    # measured again at the end: the best of both, so that load during one measurement does not loosen the bound
    print("machine limits measured again after the runs:")
    again = measure_limits(args)
    limits = {"l3_bytes": limits["l3_bytes"], "bandwidths": {name: max(rate, again["bandwidths"][name]) for name, rate
                                                             in limits["bandwidths"].items()},
              "bandwidth": max(limits["bandwidth"], again["bandwidth"]),
              "flop_rate": max(limits["flop_rate"], again["flop_rate"])}
    print(f"bounds use {limits['bandwidth'] / 1e9:.1f} GB/s and {limits['flop_rate'] / 1e9:.0f} GFLOP/s "
          "(the better of the two measurements)")
    add_bounds(rows, limits)
    print(f"\nall sizes in {elapsed:.0f} s; latency = median per single query, throughput = "
          "queries/s of one batch call (median of runs); ratio = speed-up over the baseline; ours/bound = time ratio;"
          "\nceiling = baseline/bound, the largest speed-up the bound leaves")
    print_table(rows)
    held = [row for row in rows if row.goal_met is not None]
    print(f"goals met: {sum(row.goal_met for row in held)} of {len(held)} rows"
          + "".join(f"\n  not met: {row.size:,} {row.mode} (ratio {row.ratio:.1f}x, ours/bound "
                    f"{row.ours_over_bound:.2f}x)" for row in held if not row.goal_met))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps({
            "command": sys.argv, "threads": args.threads, "thread_report": thread_report(args.threads),
            "versions": {"numpy": np.__version__, "faiss": faiss.__version__, "torch": torch.__version__},
            "copy_bandwidth_bytes_per_s": limits["bandwidths"], "matmul_flop_per_s": limits["flop_rate"],
            "l3_bytes": limits["l3_bytes"], "settings": vars(args), "rows": [asdict(row) for row in rows],
        }, indent=2))
        print(f"wrote {args.output_json}")
    if any(row.mismatches for row in rows):
        raise SystemExit("the exact index disagrees with the numpy full sort")


if __name__ == "__main__":
    main()
