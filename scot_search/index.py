"""Gallery index: encode a folder (or a `datasets` dataset) of images once, then answer top-K queries (exactly, or
approximately with faiss).

Layout of an index folder:

    index.json                  written last: model, encoder fingerprint, faiss settings, counts, skipped files
    embeddings.safetensors      `embeds [N, d]` float32, L2-normalised gallery image embeddings (row i = ids row i)
    ids.parquet                 per gallery image: `id` (relative path or dataset id), `path` (absolute, or ""),
                                `version` (what says the image changed: size:mtime of a file, hash of a dataset cell)
                                and `row` (the dataset row of a dataset gallery, else -1)
    index.faiss                 the faiss index for "ivf" / "hnsw" (the exact "flat" index is rebuilt from the
                                embeddings on load: it is the embeddings)
    chunks/                     encoding in progress (safetensors per chunk, `plan.json`); removed once complete
    .scot-index                 written first: the folder is an index, so its files are ours to replace
    .scot-index.lock            held (flock) while a run writes: a second run into the same folder is refused

An index folder is never mixed with anything else: a new or empty folder is marked first; a non-empty folder without
the marker is refused, as is one inside the gallery; only the files listed above are ever replaced or removed.

Encoding writes one safetensors chunk at a time, atomically (unique temporary names), so an interrupted run resumes
at the first missing chunk (as long as the model and the list of images are the same; otherwise it starts over and
says so). Files that cannot be decoded are skipped and counted, never fatal; so are symbolic links to files outside
the gallery folder. Indexing again into a complete index of the same encoder re-encodes only what changed: images
whose id and version (file size and modification time, or a dataset cell's content hash) are unchanged keep their
embeddings; images no longer in the gallery are dropped.

Scores are inner products of unit vectors, i.e. cosine similarities, as in SCOT's retrieval (paper §3).

Exact ("flat") search of a batch of queries screens a bfloat16 copy of the gallery first, where the CPU multiplies
bfloat16 natively (AVX512-BF16 or AMX, through torch's oneDNN: 2.5-4x numpy's float32 matmul rate on 2 cores): the
copy is made on first use (half the size of the float32 embeddings) and every row whose bfloat16 score could still
place it in the top k — by a rigorous bound on the bfloat16 scores' error, `screening_error_bound` — is rescored in
float32 (`screened_candidates`, `GalleryIndex._screened_top_k`). So the result is the float32 search's: the same
rows in the same order, with float32 scores (up to the float32 rounding of matrices of other shapes, as between the
blocked and the plain float32 paths). A query with too many candidates (a gallery of many near-equal rows) takes the
float32 path, as do single queries (a matrix-vector product is bound by reading the gallery: bfloat16 halves the
bytes, but torch's bfloat16 matrix-vector product ran no faster than numpy's float32 one).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from scot_core import (
    atomic_path,
    atomic_save_file,
    atomic_write_json,
    encode_in_chunks,
    encoder_fingerprint,
    image_batch_encoder,
    image_identity,
    read_json,
)

try:
    import fcntl
except ImportError:  # Windows: no flock; a second concurrent run into one folder is not detected there
    fcntl = None

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
INDEX_TYPES = ("flat", "ivf", "hnsw")
# exact search scores the gallery for this many bytes of queries at a time ([queries, N] float32; >= 1 query)
SCORE_BLOCK_BYTES = 256 * 2**20
# a batch of queries whose scores of the whole gallery would exceed SCORE_BLOCK_BYTES scores it in blocks of gallery
# rows of about this many bytes instead ([queries, rows] float32, selected while still in the CPU's cache; the
# gallery is read once per block of queries) ...
SCORE_TILE_BYTES = 16 * 2**20
# ... and screens each block's scores by the maximum of every group of this many (see `blocked_top_k`); up to
# SCORE_TILE_BYTES / (4 * MIN_BLOCK_ROWS) queries share each read of the gallery
SCORE_GROUP = 32
MIN_BLOCK_ROWS = 4096
# a single query's scores are screened by the same group maxima from this many images on (`single_top_k`); below,
# one selection over all the scores was as fast or faster (they crossed at 10-12k images on 2 cores)
SINGLE_GROUPED_MIN_IMAGES = 2**14
# batches of at least SCREEN_MIN_QUERIES queries (k <= SCREEN_MAX_K) on galleries of at least SCREEN_MIN_IMAGES
# images are screened in bfloat16 (`GalleryIndex._screened_top_k`), blocks of gallery rows of about
# SCREEN_TILE_BYTES of [queries, rows] bfloat16 scores at a time. Below 16 queries torch's bfloat16 product was no
# faster than numpy's float32 one; below 2^18 images (at 100k) the screen's costs per query (the first blocks'
# candidates, the rescoring) ate up what the product saved on a 2-core machine
SCREEN_MIN_QUERIES = 16
SCREEN_MIN_IMAGES = 2**18
SCREEN_MAX_K = 1024
SCREEN_TILE_BYTES = 8 * 2**20
# a query with more candidates than this (or 8 k) takes the float32 path: its gallery has too many rows that bfloat16
# cannot tell apart, and rescoring them would cost more than scoring them all in float32
SCREEN_MAX_CANDIDATES = 4096
# unit roundoffs (round to nearest: half the spacing of numbers in [1, 2)) and the factor the error bound is widened
# by (see `screening_error_bound`)
BFLOAT16_UNIT_ROUNDOFF = 2.0**-8
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
SCREEN_SAFETY = 1.25
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
INDEX_MARKER = ".scot-index"
LOCK_FILE = ".scot-index.lock"
# what an index folder holds; only these names are ever replaced or removed
INDEX_FILES = ("index.json", "embeddings.safetensors", "ids.parquet", "index.faiss", "chunks", INDEX_MARKER, LOCK_FILE)
# the files of `chunks/`: plan and chunks, the temporaries of interrupted writes (scot_core.atomic_path's names, and
# the fixed `images-NNNNN.tmp` of earlier versions)
CHUNK_FILE = re.compile(r"(plan\.json|images-\d{5}\.safetensors)"
                        r"|\.(plan\.json|images-\d{5}\.safetensors)\.\d+\..+\.tmp|images-\d{5}\.tmp")


def _require_faiss():
    try:
        import faiss
    except ImportError as error:  # faiss is an extra: the model itself never needs it
        raise ImportError("The gallery index needs faiss: pip install 'scot-cir[search]' (or faiss-cpu).") from error
    return faiss


@dataclass
class GalleryItem:
    """One gallery image: `id` is what results report; `source` is what `open_image` reads (a path or a cell);
    `version` changes when the image does (a re-index re-encodes only those)."""

    id: str
    source: object
    path: str = ""
    version: str = ""
    row: int = -1  # the dataset row, for dataset galleries


def list_image_folder(folder) -> tuple[list[GalleryItem], dict[str, int]]:
    """Image files under `folder` (recursive, sorted, hidden files skipped) and the counts of the files left out:
    `not_an_image_file` (another suffix) and `link_outside_gallery` (a symbolic link to a file outside `folder`: what
    is indexed, and later shown, is only what lies in the gallery)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"Gallery folder {str(folder)!r} does not exist or is not a folder.")
    root = folder.resolve()
    items, skipped = [], {"not_an_image_file": 0, "link_outside_gallery": 0}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            skipped["link_outside_gallery"] += 1
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            stat = resolved.stat()
            items.append(GalleryItem(id=relative.as_posix(), source=str(resolved), path=str(resolved),
                                     version=f"{stat.st_size}:{stat.st_mtime_ns}"))
        else:
            skipped["not_an_image_file"] += 1
    if skipped["link_outside_gallery"]:
        logger.warning("Left out %d link(s) in %s to files outside it.", skipped["link_outside_gallery"], folder)
    return items, skipped


def list_dataset_images(dataset, image_column: str = "image", id_column: str | None = None) -> list[GalleryItem]:
    """Gallery items from a `datasets.Dataset`: undecoded image cells (decoded one batch at a time while encoding)."""
    from datasets import Image as ImageFeature

    missing = [name for name in (image_column, id_column) if name is not None and name not in dataset.column_names]
    if missing:
        raise ValueError(f"The gallery dataset lacks column(s) {missing}; it has {dataset.column_names}. "
                         "Set image_column / id_column.")
    if isinstance(dataset.features[image_column], ImageFeature):
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
    cells = dataset[image_column]
    ids = [str(value) for value in dataset[id_column]] if id_column else [str(row) for row in range(len(dataset))]
    if len(set(ids)) != len(ids):
        raise ValueError(f"Column {id_column!r} has repeated values: gallery ids must be unique.")
    return [GalleryItem(id=item_id, source=cell, version=image_identity(cell), row=row)
            for row, (item_id, cell) in enumerate(zip(ids, cells))]


class GalleryIndex:
    """Gallery image embeddings `[N, d]`, their ids, and a faiss index over them (inner product = cosine)."""

    def __init__(self, embeds: np.ndarray, ids: list[str], paths: list[str] | None = None, index_type: str = "flat",
                 faiss_index=None, metadata: dict | None = None, versions: list[str] | None = None,
                 rows: list[int] | None = None, **index_options):
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}.")
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        if embeds.ndim != 2 or len(embeds) != len(ids):
            raise ValueError(f"embeds must be [N, d] with one row per id; got {embeds.shape} for {len(ids)} ids.")
        self.embeds = embeds
        self.ids = list(ids)
        self.paths = list(paths) if paths is not None else [""] * len(ids)
        self.versions = list(versions) if versions is not None else [""] * len(ids)
        self.rows = list(rows) if rows is not None else [-1] * len(ids)
        self.index_type = index_type
        self.metadata = dict(metadata or {})
        self.index_options = check_index_options(index_type, len(ids), index_options)
        self.faiss_index = faiss_index if faiss_index is not None else self._build_faiss_index()
        if self.index_type == "flat" and len(embeds):
            # the exact index stores the vectors itself: view them rather than keep a second copy (1 GB per
            # million 256-d images)
            self.embeds = _require_faiss().rev_swig_ptr(self.faiss_index.get_xb(), embeds.size).reshape(embeds.shape)
        self._apply_search_options()
        # the bfloat16 copy of the embeddings and their largest norm, made by the first batch that is screened
        self._screening_gallery: tuple[torch.Tensor, float] | None = None
        self._screening_lock = threading.Lock()

    # -- faiss ------------------------------------------------------------------------------------------------------

    def _build_faiss_index(self):
        faiss = _require_faiss()
        dim = self.embeds.shape[1]
        if self.index_type == "flat":
            index = faiss.IndexFlatIP(dim)
        elif self.index_type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.index_options["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.index_options["ef_construction"]
        else:
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, self.index_options["nlist"], faiss.METRIC_INNER_PRODUCT)
            # k-means on a sample: faiss wants ~40-256 points per list; more only costs time
            sample_size = min(len(self.embeds), 256 * self.index_options["nlist"])
            sample = self.embeds[np.random.default_rng(0).choice(len(self.embeds), sample_size, replace=False)]
            index.train(sample)
        if len(self.embeds):
            index.add(self.embeds)
        return index

    def _apply_search_options(self) -> None:
        if self.index_type == "ivf":
            self.faiss_index.nprobe = self.index_options["nprobe"]
        elif self.index_type == "hnsw":
            self.faiss_index.hnsw.efSearch = self.index_options["ef_search"]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def embed_dim(self) -> int:
        return self.embeds.shape[1]

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` gallery rows for each query embedding: `(scores [Q, k'], positions [Q, k'])`, best first, with
        k' = min(k, N). Approximate indexes may find fewer than k' for a query; those slots hold position -1."""
        if isinstance(queries, torch.Tensor):
            queries = queries.detach().to("cpu", torch.float32).numpy()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.embed_dim:
            raise ValueError(f"queries must be [Q, {self.embed_dim}] (the gallery's embed_dim); got {queries.shape}.")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self.index_type != "flat":
            return self.faiss_index.search(queries, k)
        rows = max(1, SCORE_BLOCK_BYTES // (4 * len(self)))
        if self._scored_in_gallery_blocks(len(queries)) or self._screens(len(queries), k):
            rows = SCORE_TILE_BYTES // (4 * MIN_BLOCK_ROWS)  # the blocked product: the gallery read once per `rows`
        blocks = [self._exact_top_k(queries[start:start + rows], k) for start in range(0, len(queries), rows)]
        return np.concatenate([scores for scores, _ in blocks]), np.concatenate([top for _, top in blocks])

    def _scored_in_gallery_blocks(self, count: int) -> bool:
        """Whether `count` queries take `blocked_top_k`: when all their scores would not fit in SCORE_BLOCK_BYTES, so
        that blocks of queries would read the gallery again and again (at 100k images, one `torch.topk` of all the
        scores of 256 queries was faster than the blocks)."""
        return count > 1 and 4 * count * len(self) > SCORE_BLOCK_BYTES

    def _exact_top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-`k` of a block of queries: every score by numpy's BLAS — for one query the matrix-vector product
        `gallery @ q` runs, for several the matrix product `queries @ gallery.T`, on the threads numpy gives them —
        then a partial selection (O(N) per query, not a sort of all N): for one query `single_top_k` (screened by
        the maxima of groups of scores), the threaded `torch.topk` for several, or, when their scores exceed
        `SCORE_BLOCK_BYTES`, the product and the selection block by block of the gallery (`blocked_top_k`, which
        needs no torch.topk of all N). So it is never slower than `gallery @ q` + a full sort, on any machine;
        faiss's flat search lost to that on some (its single-query scan with one thread or all, its batched path on
        a loaded machine: bench/bench_search.py). Equal scores are listed by position (a tie at the k-th score
        keeps any of the tied rows; one query keeps the first ones, as a stable sort does). Batches that
        `_screens` are screened in bfloat16 first (`_screened_top_k`): the same result, 2-3x faster at 1M images
        on 2 cores."""
        if self._screens(len(queries), k):
            return self._screened_top_k(queries, k)
        return self._float32_top_k(queries, k)

    def _float32_top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`_exact_top_k` with every score in float32."""
        if len(queries) == 1:
            top_scores, top = single_top_k(self.embeds @ queries[0], k, SCORE_GROUP, SINGLE_GROUPED_MIN_IMAGES)
            return top_scores[None], top[None]
        if self._scored_in_gallery_blocks(len(queries)):
            block_rows = max(MIN_BLOCK_ROWS, SCORE_TILE_BYTES // (4 * len(queries)))
            top_scores, top = blocked_top_k(queries, self.embeds, k, block_rows, SCORE_GROUP)
        else:
            scores = queries @ self.embeds.T
            top = torch.topk(torch.from_numpy(scores), k, dim=1, sorted=False).indices.numpy()
            top_scores = np.take_along_axis(scores, top, axis=1)
        return _by_score_then_position(top_scores, top)

    def _screens(self, count: int, k: int) -> bool:
        """Whether `count` queries are screened in bfloat16: batches large enough for the bfloat16 matrix product to
        beat numpy's float32 one, on a CPU that multiplies bfloat16 natively."""
        return (count >= SCREEN_MIN_QUERIES and len(self) >= SCREEN_MIN_IMAGES and k <= SCREEN_MAX_K
                and bfloat16_matmul_is_native())

    def _screening_copy(self) -> tuple[torch.Tensor, float]:
        """The gallery in bfloat16 (made once, on first use: 0.5 GB per million 256-d images) and its largest
        float32 row norm (for `screening_error_bound`)."""
        with self._screening_lock:
            if self._screening_gallery is None:
                # float32 squared norms are within a relative gamma of the exact ones (see
                # `screening_error_bound`): widened by 2 gamma, the largest bounds every row's
                gamma = self.embed_dim * FLOAT32_UNIT_ROUNDOFF / (1 - self.embed_dim * FLOAT32_UNIT_ROUNDOFF)
                largest_square = max(float(np.einsum("ij,ij->i", rows, rows).max())
                                     for rows in np.array_split(self.embeds, max(1, len(self) // 65536)))
                largest_norm = math.sqrt(largest_square * (1 + 2 * gamma))
                self._screening_gallery = torch.from_numpy(self.embeds).to(torch.bfloat16), largest_norm
            return self._screening_gallery

    def _screened_top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`_exact_top_k` of a batch in two passes: every score in bfloat16 (`screened_candidates`: each query's
        rows whose bfloat16 score is at least its k-th best bfloat16 score less twice `screening_error_bound`),
        then those candidates' scores in float32, selected by score, equal scores by position.

        Why it is exact: let |bfloat16 score - float32 score| <= eps for every row (`screening_error_bound`). The k
        rows of the bfloat16 top k score at least the bfloat16 k-th best - eps in float32, so the float32 k-th best
        is at least that too; a row of the float32 top k (ties at the k-th score included) scores at least the
        float32 k-th best, so at least the float32 k-th best - eps >= the bfloat16 k-th best - 2 eps in bfloat16:
        it is among the candidates (which are taken against a lower bound on the bfloat16 k-th best: more of them,
        never fewer). The candidates' float32 scores are products of their own (a matrix-vector product per query),
        equal to the float32 path's up to the float32 rounding of other matrix shapes (a few 1e-7 for unit
        vectors): the same rows in the same order unless two rows score that close. Queries with more than
        `max(SCREEN_MAX_CANDIDATES, 8 k)` candidates take the float32 path instead."""
        gallery, largest_norm = self._screening_copy()
        query_norms = np.linalg.norm(queries.astype(np.float64), axis=1)
        margins = 2 * screening_error_bound(query_norms, largest_norm, self.embed_dim)
        if not np.isfinite(margins).all() or largest_norm * query_norms.max() > 1e30:
            return self._float32_top_k(queries, k)  # bfloat16 has float32's range; products this large overflow
        block_rows = max(MIN_BLOCK_ROWS, SCREEN_TILE_BYTES // (2 * len(queries)))
        owners, positions, fallback = screened_candidates(
            torch.from_numpy(queries).to(torch.bfloat16), gallery, k, margins, block_rows, SCORE_GROUP,
            max(SCREEN_MAX_CANDIDATES, 8 * k))
        top_scores = np.empty((len(queries), k), np.float32)
        top = np.empty((len(queries), k), np.int64)
        bounds = np.searchsorted(owners, np.arange(len(queries) + 1))
        for query in np.flatnonzero(~fallback):
            rows = positions[bounds[query]:bounds[query + 1]]
            scores = self.embeds[rows] @ queries[query]
            best = np.lexsort((rows, -scores))[:k]
            top_scores[query], top[query] = scores[best], rows[best]
        if fallback.any():
            top_scores[fallback], top[fallback] = self._float32_top_k(queries[fallback], k)
        return top_scores, top

    # -- persistence ------------------------------------------------------------------------------------------------

    def save(self, folder) -> None:
        """Write the index into `folder`: a new or empty folder, or an index folder (see the module docstring)."""
        folder = Path(folder)
        claim_index_folder(folder)
        with writing_lock(folder):
            self._write_files(folder)

    def _write_files(self, folder: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        faiss = _require_faiss()
        # an index being replaced is incomplete until its new index.json is written
        (folder / "index.json").unlink(missing_ok=True)
        atomic_save_file({"embeds": torch.from_numpy(self.embeds)}, folder / "embeddings.safetensors")
        columns = {"id": self.ids, "path": self.paths, "version": self.versions,
                   "row": pa.array(self.rows, pa.int64())}
        with atomic_path(folder / "ids.parquet") as temporary:
            pq.write_table(pa.table(columns), temporary)
        if self.index_type != "flat":
            with atomic_path(folder / "index.faiss") as temporary:
                faiss.write_index(self.faiss_index, str(temporary))
        else:
            (folder / "index.faiss").unlink(missing_ok=True)  # left by an earlier ivf / hnsw build
        description = {
            **self.metadata,
            "format_version": INDEX_FORMAT_VERSION,
            "index_type": self.index_type,
            "index_options": self.index_options,
            "num_images": len(self),
            "embed_dim": self.embed_dim,
        }
        atomic_write_json(folder / "index.json", description)  # last: its presence means the folder is complete

    @classmethod
    def load(cls, folder, **search_options) -> GalleryIndex:
        """Load a saved index; `nprobe=` (ivf) or `ef_search=` (hnsw) override the saved search settings."""
        folder = Path(folder)
        description, embeds, columns = _read_saved_index(folder)
        index_type = description["index_type"]
        faiss_index = None
        if index_type != "flat":
            faiss_index = _require_faiss().read_index(str(folder / "index.faiss"))
        options = {**description.get("index_options", {}), **search_options}
        metadata = {key: value for key, value in description.items()
                    if key not in ("format_version", "index_type", "index_options", "num_images", "embed_dim")}
        return cls(embeds, columns["id"], columns["path"], index_type=index_type, faiss_index=faiss_index,
                   metadata=metadata, versions=columns.get("version"), rows=columns.get("row"), **options)


def _by_score_then_position(scores: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's (score, position) pairs ordered best score first, equal scores by position."""
    order = np.argsort(positions, axis=1)
    scores, positions = np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1).astype(np.int64)


def _group_max(scores: np.ndarray, group: int) -> np.ndarray:
    """`[Q, W / group]`: the maximum of each group of columns j, j + W/group, j + 2 W/group, ... (W = columns, a
    multiple of `group`, a power of two), by halving: each step is one vectorised `np.maximum` of two contiguous
    halves (numpy's own reductions over the group axis ran 7-20x slower)."""
    maxima = scores.reshape(len(scores), group, -1)
    while maxima.shape[1] > 1:
        half = maxima.shape[1] // 2
        maxima = np.maximum(maxima[:, :half], maxima[:, half:])
    return maxima[:, 0]


def single_top_k(scores: np.ndarray, k: int, group: int, grouped_from: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) `[k]` of the `k` best of one query's `scores` `[N]` (k <= N, no NaN), best first, equal
    scores by position: exactly `np.argsort(-scores, kind="stable")[:k]`, in O(N) and without a selection over all N.

    Why groups: `np.argpartition` of all 1M scores of a query cost ~1.3 ms, a few % of the matrix-vector product;
    the maxima of groups of `group` scores (positions j, j + N/group, ...: one vectorised `max` over contiguous
    rows) cost ~0.07 ms. The k-th best group maximum T is at most the k-th best score (k groups hold a score of at
    least T), so every score of the top k, ties at the k-th score included, lies in a group whose maximum is at
    least T (or in the last `N % group` scores, not grouped): only those scores are selected from. Galleries of
    fewer than `grouped_from` scores, or fewer than k groups, select from all the scores."""
    count = len(scores)
    grouped = count - count % group
    stride = grouped // group  # the number of groups
    if count < grouped_from or stride < k:
        return _top_k_by_score_then_position(scores, np.arange(count), k)
    maxima = scores[:grouped].reshape(group, stride).max(axis=0)
    threshold = np.partition(maxima, stride - k)[stride - k]
    groups = np.flatnonzero(maxima >= threshold)
    # ascending: the groups' first members, their second ones (each + stride), ..., then the ungrouped scores
    candidates = np.concatenate([(groups + stride * np.arange(group)[:, None]).ravel(), np.arange(grouped, count)])
    candidate_scores = scores[candidates]
    kept = candidate_scores >= threshold
    return _top_k_by_score_then_position(candidate_scores[kept], candidates[kept], k)


def _top_k_by_score_then_position(scores: np.ndarray, positions: np.ndarray,
                                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best (score, position) pairs (k <= len; `positions` ascending), best score first, equal scores by
    position, in O(len) and a sort of k: the scores above the k-th best, then the first of those equal to it."""
    kth_best = np.partition(scores, len(scores) - k)[len(scores) - k]
    above = np.flatnonzero(scores > kth_best)
    tied = np.flatnonzero(scores == kth_best)[:k - len(above)]  # >= 1 of them: the k-th best is not above itself
    chosen = np.concatenate([above, tied])
    top_scores, top = scores[chosen], positions[chosen].astype(np.int64)
    order = np.lexsort((top, -top_scores))
    return top_scores[order], top[order]


def blocked_top_k(queries: np.ndarray, gallery: np.ndarray, k: int, block_rows: int,
                  group: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) `[Q, k]`, unordered, of the `k` best gallery rows per query, the gallery scored
    `block_rows` rows at a time (k <= len(gallery); `group` a power of two).

    Why blocks: the product `queries @ block.T` runs at the matmul's full rate (the gallery read once, the scores
    `[Q, block_rows]` small enough to stay in cache), and a block's scores are selected right away. Why groups: a
    `torch.topk` of every block cost a third of the product at 1M images; instead each block's scores are screened
    by the maximum of each group of `group` columns (one pass), and only the groups that can matter are read again.
    A block's best k scores lie in its k groups of highest maximum, and a score not above the k-th best found so far
    cannot enter the top k (an equal one could only tie at the k-th score), so it is enough to gather, per block,
    the `min(k, m)` groups of highest maximum, where m is the most groups any query has above its k-th best so far
    (all the groups of the first block). Everything here is numpy: torch's threads and the BLAS's threads taking
    turns block after block spun against each other on a loaded 2-core machine, and `np.argpartition` is faster
    than `torch.topk` on these small selections. The result holds the same scores as one selection over all the
    scores; only which rows of a tie at the k-th score are kept may differ."""
    count = len(queries)
    best_scores = np.full((count, k), -np.inf, np.float32)
    best_positions = np.zeros((count, k), np.int64)
    for start in range(0, len(gallery), block_rows):
        scores = queries @ gallery[start:start + block_rows].T
        width = scores.shape[1]
        grouped = width - width % group  # the last `width % group` columns (< group) are always candidates
        candidates = [np.broadcast_to(np.arange(grouped, width), (count, width - grouped))]
        if grouped:
            group_max = _group_max(scores[:, :grouped], group)
            kth_best = best_scores.min(axis=1, keepdims=True)  # -inf until k scores were found
            needed = min(k, int((group_max > kth_best).sum(axis=1).max()))
            if needed:
                top_groups = np.argpartition(group_max, group_max.shape[1] - needed, axis=1)[:, -needed:]
                stride = grouped // group
                candidates.append((top_groups[:, :, None] + np.arange(group) * stride).reshape(count, -1))
        candidates = np.concatenate(candidates, axis=1)
        if not candidates.shape[1]:
            continue
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, candidates, axis=1)], axis=1)
        merged_positions = np.concatenate([best_positions, candidates + start], axis=1)
        kept = np.argpartition(merged_scores, merged_scores.shape[1] - k, axis=1)[:, -k:]
        best_scores = np.take_along_axis(merged_scores, kept, axis=1)
        best_positions = np.take_along_axis(merged_positions, kept, axis=1)
    return best_scores, best_positions


@functools.cache
def bfloat16_matmul_is_native() -> bool:
    """Whether torch multiplies bfloat16 matrices in hardware here: oneDNN with AVX512-BF16 or AMX (elsewhere a
    bfloat16 product is emulated and slower than numpy's float32 one)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                    and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))
    except (AttributeError, RuntimeError):  # a torch without these probes
        return False


def screening_error_bound(query_norms: np.ndarray, gallery_norm: float, dim: int) -> np.ndarray:
    """Per query, a bound eps on |bfloat16 score - float32 score| over every gallery row, where the bfloat16 score
    is torch's bfloat16 product (bfloat16 inputs, float32 accumulation, the result rounded to bfloat16) and the
    float32 score any float32 product (`query_norms`: the queries' L2 norms; `gallery_norm`: the largest row's).

    Derivation, for a query q and a row g (float32 numbers, exact reals below; u = 2^-8 the bfloat16 unit roundoff,
    u32 = 2^-24 float32's, gamma = d u32 / (1 - d u32) with d = dim, S = sum_i |q_i g_i| <= |q| |g| by
    Cauchy-Schwarz, so S <= 1 for unit vectors):
    - rounding both to bfloat16 (to nearest): q'_i = q_i (1 + a_i), g'_i = g_i (1 + b_i), |a_i|, |b_i| <= u, so
      |sum_i q'_i g'_i - q.g| <= (2 u + u^2) S;
    - the products of bfloat16 numbers are exact in float32 (8 x 8 significant bits); summing d of them in float32,
      in any order and with any blocking (FMA or not): error <= gamma sum_i |q'_i g'_i| <= gamma (1 + u)^2 S;
    - rounding the float32 sum t to bfloat16: error <= u |t| <= u (1 + u)^2 (1 + gamma) S;
    - the float32 score itself: |float32 score - q.g| <= gamma S (the same summation argument).
    The sum of the four is eps / S (~3 u + 2 gamma: 0.0118 for d = 256). Denormals, which the bfloat16
    instructions flush to zero, add at most 2^-126 per input and per partial sum: 2^-126 d (|q| + |g| + 1) in all.
    The bound is widened by SCREEN_SAFETY (25%) for the roundings it leaves out (of the norms, of the threshold
    `k-th best - 2 eps`, a few float64 ulps) and as a margin for the kernels' arithmetic. It assumes
    round-to-nearest conversions and float32 accumulation, as oneDNN's bfloat16 kernels do (the tests check it on
    random vectors, and on worst-case ones, where the error reaches more than half the bound)."""
    u, u32 = BFLOAT16_UNIT_ROUNDOFF, FLOAT32_UNIT_ROUNDOFF
    gamma = dim * u32 / (1 - dim * u32)
    relative = (2 * u + u**2) + gamma * (1 + u) ** 2 + u * (1 + u) ** 2 * (1 + gamma) + gamma
    denormals = 2.0**-126 * dim * (query_norms + gallery_norm + 1)
    return SCREEN_SAFETY * (relative * query_norms * gallery_norm + denormals)


def screened_candidates(queries: torch.Tensor, gallery: torch.Tensor, k: int, margins: np.ndarray, block_rows: int,
                        group: int, max_candidates: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owners, positions, fallback): every (query, gallery row) whose bfloat16 score (`queries @ gallery.T`, both
    bfloat16) is at least the query's k-th best bfloat16 score less its margin, as flat arrays ordered by query
    (`owners` the query of each, `positions` its row), and `fallback [Q]`, the queries with more than
    `max_candidates` (whose candidates are left out).

    As in `blocked_top_k`, the gallery is scored `block_rows` rows at a time and each block's scores are screened by
    the maximum of every group of `group` columns: the k-th best of the group maxima seen so far is the score of k
    distinct rows, so it is a lower bound on the k-th best score; the threshold, that lower bound less the margin,
    only rises, so a row below it when its block is screened is below the final one. Only the groups whose maximum
    reaches the threshold can raise the lower bound or hold candidates, and only those are read again. Unlike
    `blocked_top_k`, a query may have any number of candidates, so they are kept as flat lists. Only the product is
    torch; the screening is numpy, on the scores' bits as int16 (torch's threads, woken for each small step, spun
    against the product's on a loaded 2-core machine, and torch's bfloat16 maximum ran 6x slower than int16's)."""
    count = len(queries)
    best_maxima = np.full((count, k), -np.inf, np.float32)
    floor = np.full(count, -np.inf)  # a lower bound on each query's k-th best score
    threshold = np.full(count, -np.inf)
    found = np.zeros(count, np.int64)
    fallback = np.zeros(count, bool)
    buffer = torch.empty(count * block_rows, dtype=torch.bfloat16)  # reused: fresh 8 MB buffers fault pages in
    buffer_bits = buffer.view(torch.int16).numpy()
    owners, positions, scores = [], [], []
    for start in range(0, len(gallery), block_rows):
        block = gallery[start:start + block_rows]
        width = len(block)
        torch.mm(queries, block.T, out=buffer[:count * width].view(count, width))
        bits = buffer_bits[:count * width].reshape(count, width)
        grouped = width - width % group
        stride = grouped // group
        # bfloat16 bits as int16 are ordered as the numbers they stand for once the magnitude bits of the negative
        # ones are flipped; while every threshold is above 0 that can be left out: a group's maximum is then wrong
        # only if all its scores are negative (it is one of them: below the threshold and a score all the same)
        ordered = threshold.min() <= 0
        keys = _ordered_bits(bits) if ordered else bits
        # the last `width % group` columns (< group) are each their own group
        maxima = np.concatenate([_group_max(keys[:, :grouped], group), keys[:, grouped:]], axis=1)
        maxima = _bfloat16_to_float32(_ordered_bits(maxima) if ordered else maxima)
        hit_owners, hit_groups = np.nonzero(maxima >= threshold[:, None])  # ordered by query
        hit_maxima = maxima[hit_owners, hit_groups]
        per_query = np.bincount(hit_owners, minlength=count)
        widest = int(per_query.max())
        if widest:  # merge the hit groups' maxima (no other group can raise the k-th best)
            merged = np.full((count, k + widest), -np.inf, np.float32)
            merged[:, :k] = best_maxima
            merged[hit_owners, k + np.arange(len(hit_owners)) - np.repeat(np.cumsum(per_query) - per_query,
                                                                          per_query)] = hit_maxima
            best_maxima = np.partition(merged, widest, axis=1)[:, widest:]
            floor = np.maximum(floor, best_maxima.min(axis=1))
            threshold = np.where(fallback, np.inf, floor - margins)
        hit = hit_maxima >= threshold[hit_owners]
        in_groups, in_tail = hit & (hit_groups < stride), hit & (hit_groups >= stride)
        group_owners = hit_owners[in_groups]
        columns = hit_groups[in_groups, None] + np.arange(group) * stride  # [hits, group]: each hit group's columns
        values = _bfloat16_to_float32(bits.reshape(-1).take(columns + (group_owners * width)[:, None]))
        kept = values >= threshold[group_owners, None]
        block_owners = np.concatenate([np.broadcast_to(group_owners[:, None], kept.shape)[kept],
                                       hit_owners[in_tail]])
        owners.append(block_owners)
        positions.append(np.concatenate([columns[kept], hit_groups[in_tail] - stride + grouped]) + start)
        scores.append(np.concatenate([values[kept], hit_maxima[in_tail]]))
        found += np.bincount(block_owners, minlength=count)
        if (found > max_candidates).any():
            # the k-th best of a query's candidates (distinct rows) may be a higher floor than the group maxima's
            # (when k is not much below the number of groups); then drop the candidates below the threshold, and
            # the queries still over the limit give up
            owners, positions, scores = np.concatenate(owners), np.concatenate(positions), np.concatenate(scores)
            floor = np.maximum(floor, _kth_best_per_owner(owners, scores, k, count))
            threshold = np.where(fallback, np.inf, floor - margins)
            kept = scores >= threshold[owners]
            fallback |= np.bincount(owners[kept], minlength=count) > max_candidates
            kept &= ~fallback[owners]
            threshold[fallback] = np.inf
            owners, positions, scores = [owners[kept]], [positions[kept]], [scores[kept]]
            found = np.bincount(owners[0], minlength=count)
    owners, positions, scores = np.concatenate(owners), np.concatenate(positions), np.concatenate(scores)
    kept = scores >= threshold[owners]  # the final threshold (infinite for the queries that fell back)
    owners, positions = owners[kept], positions[kept]
    order = np.argsort(owners.astype(np.uint16 if count <= 2**16 else np.int64), kind="stable")
    return owners[order], positions[order], fallback


def _kth_best_per_owner(owners: np.ndarray, scores: np.ndarray, k: int, count: int) -> np.ndarray:
    """`[count]`: the k-th best of the scores of each owner (-inf for those with fewer than k)."""
    sorted_scores = scores[np.lexsort((-scores, owners))]
    per_owner = np.bincount(owners, minlength=count)
    kth = np.full(count, -np.inf)
    enough = per_owner >= k
    kth[enough] = sorted_scores[(np.cumsum(per_owner) - per_owner)[enough] + k - 1]
    return kth


def _ordered_bits(bits: np.ndarray) -> np.ndarray:
    """int16 bits of bfloat16 numbers -> int16 keys in the numbers' order (negative ones' magnitude bits flipped);
    its own inverse."""
    return bits ^ ((bits >> 15) & np.int16(0x7FFF))


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 numbers, given as their (u)int16 bits, as float32 (exact: the upper half of a float32)."""
    return (bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _read_saved_index(folder: Path) -> tuple[dict, np.ndarray, dict[str, list]]:
    """`index.json`, the embeddings and the ids.parquet columns of a complete saved index (no faiss index built)."""
    import pyarrow.parquet as pq

    description_file = folder / "index.json"
    if not description_file.is_file():
        interrupted = (folder / "chunks").is_dir()
        hint = " (indexing was interrupted: run `scot-search index` again to resume)" if interrupted else ""
        raise FileNotFoundError(f"{str(folder)!r} is not a complete gallery index: no index.json{hint}.")
    description = read_json(description_file, "gallery index description")
    if description.get("format_version") != INDEX_FORMAT_VERSION:
        raise ValueError(f"{str(folder)!r} has index format {description.get('format_version')}, "
                         f"this version reads {INDEX_FORMAT_VERSION}: rebuild it with `scot-search index`.")
    embeddings_file = folder / "embeddings.safetensors"
    try:
        embeds = load_file(str(embeddings_file))["embeds"].numpy()
    except SafetensorError as error:  # truncated (a full disk, a partial copy) or not a safetensors file at all
        raise ValueError(f"The gallery embeddings {str(embeddings_file)!r} cannot be read ({error}): rebuild the "
                         "index with `scot-search index`.") from None
    table = pq.read_table(folder / "ids.parquet")
    return description, embeds, {name: table.column(name).to_pylist() for name in table.column_names}


class IndexFolderInUseError(OSError):
    """Another process holds the index folder's lock."""


def claim_index_folder(folder: Path) -> None:
    """Make `folder` an index folder, or refuse it before anything is written: a new or empty folder gets the
    `.scot-index` marker first; a non-empty one must carry it already (or be an index from before markers existed:
    only index files, with an index.json or a chunks/plan.json)."""
    if (folder / INDEX_MARKER).is_file():
        return
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"The index folder {str(folder)!r} is a file, not a folder.")
    entries = {path.name for path in folder.iterdir()} if folder.is_dir() else set()
    has_index_state = (folder / "index.json").is_file() or (folder / "chunks" / "plan.json").is_file()
    unmarked_index = entries <= set(INDEX_FILES) and has_index_state
    if entries and not unmarked_index:
        raise ValueError(f"The index folder {str(folder)!r} is not empty and is not a SCOT gallery index (no "
                         f"{INDEX_MARKER} file); nothing was written. Choose a new or empty folder.")
    folder.mkdir(parents=True, exist_ok=True)
    # written in place, not through a temporary file: its existence is what counts, and a second run starting at the
    # same moment must not find a stray temporary file in the folder and take it for someone else's
    (folder / INDEX_MARKER).write_text("A SCOT gallery index (scot-search index): its files are replaced when it is "
                                       "indexed again.\n")


@contextmanager
def writing_lock(folder: Path) -> Iterator[None]:
    """Hold the index folder's lock file for the block: a second run writing the same folder is refused with a clear
    message instead of the two interleaving their files. The lock goes with the open file, so it is released however
    the process ends."""
    if fcntl is None:
        yield
        return
    with open(folder / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexFolderInUseError(f"Another run is writing here: {str(folder)!r} is locked by another "
                                        "`scot-search index` (or web demo) process. Wait for it to finish, or write "
                                        "to another folder.") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_chunks(chunks_dir: Path) -> None:
    """Delete the files of `chunks/` this module writes, then the folder when that empties it; anything else found
    there was not written by us and stays (with a warning)."""
    if not chunks_dir.is_dir() or chunks_dir.is_symlink():
        return
    for path in chunks_dir.iterdir():
        if CHUNK_FILE.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()
    if any(chunks_dir.iterdir()):
        logger.warning("%s holds files that scot-search did not write: left in place.", chunks_dir)
    else:
        chunks_dir.rmdir()


def check_index_options(index_type: str, size: int, given: dict) -> dict:
    """Settings of each index type for a gallery of `size` images, defaults filled in (IVF: nlist ≈ 4·√N lists, 16
    probed; HNSW: M=32); ValueError for settings that do not apply or that faiss would fail on (cheap to call before
    encoding: it needs only the gallery's size)."""
    if index_type == "flat":
        unknown = set(given)
        options = {}
    elif index_type == "ivf":
        nlist = given.get("nlist") or max(1, min(int(4 * math.sqrt(max(size, 1))), max(size // 39, 1)))
        options = {"nlist": int(nlist), "nprobe": int(given.get("nprobe") or min(16, nlist))}
        unknown = set(given) - set(options)
    else:
        options = {"hnsw_m": int(given.get("hnsw_m") or 32),
                   "ef_construction": int(given.get("ef_construction") or 200),
                   "ef_search": int(given.get("ef_search") or 128)}
        unknown = set(given) - set(options)
    unknown = {name for name in unknown if given[name] is not None}
    if unknown:
        raise ValueError(f"Option(s) {sorted(unknown)} do not apply to a {index_type!r} index.")
    not_positive = [f"{name} = {value}" for name, value in options.items() if value < 1]
    if not_positive:
        raise ValueError(f"Index option(s) must be at least 1: {', '.join(not_positive)}.")
    if index_type == "ivf" and options["nlist"] > size:
        # faiss's k-means needs at least one training point per list (and warns below 39)
        raise ValueError(f"nlist = {options['nlist']} (--nlist) is more lists than the gallery has images ({size}): "
                         f"an ivf index needs at least one image per list; use at most {max(size // 39, 1)} (39 "
                         "images per list, as faiss advises), or leave nlist out.")
    return options


def _plan_digest(fingerprint: str, items: list[GalleryItem], chunk_size: int) -> str:
    digest = hashlib.sha256(f"{fingerprint}:{chunk_size}".encode())
    for item in items:
        digest.update(b"\0" + item.id.encode())
    return digest.hexdigest()


def _reusable_embeddings(output_dir: Path, fingerprint: str, items: list[GalleryItem]) -> tuple[dict, int]:
    """From a complete index of the same encoder in `output_dir`: {id: embedding} of the items whose version is
    unchanged, and how many of its images are no longer in the gallery."""
    if not (output_dir / "index.json").is_file():
        return {}, 0
    try:  # only the vectors and ids are needed: no faiss index is loaded or built
        description, embeds, columns = _read_saved_index(output_dir)
    except Exception as error:  # noqa: BLE001 - an unreadable old index is rebuilt, never trusted
        logger.warning("Ignoring the unreadable index in %s (%s): encoding every image.", output_dir, error)
        return {}, 0
    if description.get("encoder_fingerprint") != fingerprint:
        logger.warning("%s was encoded by another encoder: encoding every image.", output_dir)
        return {}, 0
    previous_ids = columns["id"]
    previous_versions = columns.get("version") or [""] * len(previous_ids)
    rows = {item_id: row for row, item_id in enumerate(previous_ids)}
    current = {item.id for item in items}
    reusable = {}
    for item in items:
        row = rows.get(item.id)
        if row is not None and item.version and previous_versions[row] == item.version:
            reusable[item.id] = embeds[row]
    return reusable, sum(item_id not in current for item_id in previous_ids)


def _check_outside_gallery(output_dir: Path, items: list[GalleryItem], source: dict) -> None:
    """Refuse an index folder that is, or lies inside, the folder the gallery is read from (an image folder, a local
    dataset folder), or that holds gallery images: its files would mix with the images."""
    output = output_dir.resolve()
    folders = [Path(folder) for folder in (source.get("folder"), source.get("dataset")) if folder]
    inside = [folder for folder in folders if folder.is_dir() and output.is_relative_to(folder.resolve())]
    if not inside:
        inside = [Path(item.path) for item in items if item.path and Path(item.path).is_relative_to(output)][:1]
    if inside:
        raise ValueError(f"The index folder {str(output_dir)!r} is, or is inside, the gallery ({str(inside[0])!r}): "
                         "its files would mix with the images. Write the index outside the gallery.")


def _start_plan(chunks_dir: Path, plan: dict) -> None:
    """Keep the chunks of an interrupted run of the same plan; otherwise remove them and record the new plan."""
    plan_file = chunks_dir / "plan.json"
    if chunks_dir.is_dir():
        why = "holds chunks of a different model or image list"
        try:
            previous_plan = read_json(plan_file, "encoding plan") if plan_file.is_file() else None
        except ValueError:  # torn by a crash (it used to be written in place): its chunks cannot be trusted
            previous_plan, why = None, f"has an unreadable {plan_file.name}"
        if previous_plan == plan:
            return
        logger.warning("%s %s; encoding from the start.", chunks_dir, why)
        _remove_chunks(chunks_dir)
    chunks_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_file, plan)


def _encode_in_chunks(model, processor, items: list[GalleryItem], chunks_dir: Path, fingerprint: str,
                     batch_size: int, chunk_size: int, show_progress: bool) -> tuple[dict, dict]:
    """({id: embedding}, {id: readable}) of `items`, encoded chunk by chunk into `chunks_dir` (resumable)."""
    _start_plan(chunks_dir, {"digest": _plan_digest(fingerprint, items, chunk_size), "num_images": len(items)})
    chunk_names = encode_in_chunks("images", [item.source for item in items], image_batch_encoder(model, processor),
                                   chunks_dir, batch_size, chunk_size, show_progress)
    chunks = [load_file(str(chunks_dir / name)) for name in chunk_names]
    embeds = torch.cat([chunk["embeds"] for chunk in chunks]).numpy()
    readable = torch.cat([chunk["readable"] for chunk in chunks]).tolist()
    return ({item.id: row for item, row in zip(items, embeds)},
            {item.id: ok for item, ok in zip(items, readable)})


@torch.no_grad()
def build_gallery_index(model, processor, items: list[GalleryItem], output_dir, *, index_type: str = "flat",
                        batch_size: int = 32, chunk_size: int = 1024, show_progress: bool = True,
                        model_name_or_path: str | None = None, source: dict | None = None,
                        skipped_files: dict[str, int] | None = None, **index_options) -> GalleryIndex:
    """Encode `items` with `model.get_image_features` (batched, resumable) and save a `GalleryIndex` in `output_dir`.

    `model_name_or_path` is recorded so that queries can load the same model; the encoder fingerprint is recorded so
    that a query with a different encoder is refused rather than silently wrong. If `output_dir` already holds a
    complete index of the same encoder, unchanged images keep their embeddings and only new or changed ones are
    encoded (`index.metadata["last_build"]` counts reused, encoded and removed images). `skipped_files` are the
    counts `list_image_folder` returns, recorded with the unreadable images under `index.metadata["skipped"]`.

    `output_dir` must be new, empty or an index folder, and outside the gallery (`source`'s folder); while encoding,
    it is locked against a second run.
    """
    if not items:
        raise ValueError("The gallery is empty: no image files (" + ", ".join(IMAGE_SUFFIXES) + ") were found.")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be positive, got {batch_size} and {chunk_size}.")
    check_index_options(index_type, len(items), index_options)  # bad options fail before hours of encoding
    output_dir, source = Path(output_dir), source or {}
    _check_outside_gallery(output_dir, items, source)
    claim_index_folder(output_dir)
    with writing_lock(output_dir):
        fingerprint = encoder_fingerprint(model, processor)
        reusable, removed = _reusable_embeddings(output_dir, fingerprint, items)
        to_encode = [item for item in items if item.id not in reusable]
        encoded, readable = {}, {}
        if to_encode:
            encoded, readable = _encode_in_chunks(model, processor, to_encode, output_dir / "chunks", fingerprint,
                                                  batch_size, chunk_size, show_progress)

        kept = [item for item in items if item.id in reusable or readable[item.id]]
        unreadable = [item.id for item in items if item.id not in reusable and not readable[item.id]]
        if unreadable:
            logger.warning("Skipped %d unreadable image file(s) of %d, e.g. %s", len(unreadable), len(items),
                           ", ".join(unreadable[:3]))
        if not kept:
            raise ValueError(f"None of the {len(items)} gallery images could be read.")
        metadata = {
            "model_name_or_path": model_name_or_path,
            "encoder_fingerprint": fingerprint,
            "source": source,
            "skipped": {"unreadable_image": len(unreadable), "not_an_image_file": 0, "link_outside_gallery": 0,
                        **(skipped_files or {})},
            "unreadable_images": unreadable[:1000],
            "last_build": {"reused": len(reusable), "encoded": len(to_encode), "removed": removed},
        }
        embeds = np.stack([reusable[item.id] if item.id in reusable else encoded[item.id] for item in kept])
        index = GalleryIndex(embeds, [item.id for item in kept], [item.path for item in kept], index_type=index_type,
                             metadata=metadata, versions=[item.version for item in kept],
                             rows=[item.row for item in kept], **index_options)
        index._write_files(output_dir)
        _remove_chunks(output_dir / "chunks")
    return index
