"""Gallery index: encode a folder (or a `datasets` dataset) of images once, then answer top-K queries with faiss.

Layout of an index folder:

    index.json                  written last: model, encoder fingerprint, faiss settings, counts, skipped files
    embeddings.safetensors      `embeds [N, d]` float32, L2-normalised gallery image embeddings (row i = ids row i)
    ids.parquet                 per gallery image: `id` (relative path or dataset id), `path` (absolute, or ""),
                                `version` (what says the image changed: size:mtime of a file, hash of a dataset cell)
                                and `row` (the dataset row of a dataset gallery, else -1)
    index.faiss                 the faiss index for "ivf" / "hnsw" (the exact "flat" index is rebuilt from the
                                embeddings on load: it is the embeddings)
    chunks/                     encoding in progress (safetensors per chunk, `plan.json`); removed once complete

Encoding writes one safetensors chunk at a time, atomically, so an interrupted run resumes at the first missing chunk
(as long as the model and the list of images are the same; otherwise it starts over and says so). Files that cannot
be decoded are skipped and counted, never fatal. Indexing again into a complete index of the same encoder re-encodes
only what changed: images whose id and version (file size and modification time, or a dataset cell's content hash)
are unchanged keep their embeddings; images no longer in the gallery are dropped.

Scores are inner products of unit vectors, i.e. cosine similarities, as in SCOT's retrieval (paper §3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from trainers.embedding_cache import (
    atomic_save_file,
    encode_in_chunks,
    encoder_fingerprint,
    image_batch_encoder,
    image_identity,
)

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
INDEX_TYPES = ("flat", "ivf", "hnsw")
# below this many queries, exact search scans the gallery once per query (one thread); from it on, by matrix product
SMALL_BATCH = 20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


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


def list_image_folder(folder) -> tuple[list[GalleryItem], int]:
    """Image files under `folder` (recursive, sorted, hidden files skipped) and the number of other files ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"Gallery folder {str(folder)!r} does not exist or is not a folder.")
    items, ignored = [], 0
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            stat = path.stat()
            items.append(GalleryItem(id=relative.as_posix(), source=str(path.resolve()), path=str(path.resolve()),
                                     version=f"{stat.st_size}:{stat.st_mtime_ns}"))
        else:
            ignored += 1
    return items, ignored


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
        faiss = _require_faiss()
        # Two faiss defaults cost a lot on exact search (bench/bench_search.py, 2-core CPU): the matrix-product path is
        # only taken from queries·d ≥ 128000 (500 queries at d=256), yet it is 4-10× faster from ~20 queries; and one
        # query is scanned 2-6× faster by one OpenMP thread than by all of them. Results are identical either way.
        faiss.cvar.distance_compute_blas_threshold = SMALL_BATCH * self.embed_dim
        if len(queries) >= SMALL_BATCH:
            return self.faiss_index.search(queries, k)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.faiss_index.search(queries, k)
        finally:
            faiss.omp_set_num_threads(threads)

    # -- persistence ------------------------------------------------------------------------------------------------

    def save(self, folder) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        faiss = _require_faiss()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # an index being replaced is incomplete until its new index.json is written
        (folder / "index.json").unlink(missing_ok=True)
        atomic_save_file({"embeds": torch.from_numpy(self.embeds)}, folder / "embeddings.safetensors")
        columns = {"id": self.ids, "path": self.paths, "version": self.versions, "row": pa.array(self.rows, pa.int64())}
        pq.write_table(pa.table(columns), folder / "ids.parquet.tmp")
        os.replace(folder / "ids.parquet.tmp", folder / "ids.parquet")
        if self.index_type != "flat":
            faiss.write_index(self.faiss_index, str(folder / "index.faiss.tmp"))
            os.replace(folder / "index.faiss.tmp", folder / "index.faiss")
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
        temporary = folder / "index.json.tmp"
        temporary.write_text(json.dumps(description, indent=2))
        os.replace(temporary, folder / "index.json")  # last: its presence means the folder is complete

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


def _read_saved_index(folder: Path) -> tuple[dict, np.ndarray, dict[str, list]]:
    """`index.json`, the embeddings and the ids.parquet columns of a complete saved index (no faiss index built)."""
    import pyarrow.parquet as pq

    description_file = folder / "index.json"
    if not description_file.is_file():
        interrupted = (folder / "chunks").is_dir()
        hint = " (indexing was interrupted: run `scot-search index` again to resume)" if interrupted else ""
        raise FileNotFoundError(f"{str(folder)!r} is not a complete gallery index: no index.json{hint}.")
    description = json.loads(description_file.read_text())
    if description.get("format_version") != INDEX_FORMAT_VERSION:
        raise ValueError(f"{str(folder)!r} has index format {description.get('format_version')}, "
                         f"this version reads {INDEX_FORMAT_VERSION}: rebuild it with `scot-search index`.")
    embeds = load_file(str(folder / "embeddings.safetensors"))["embeds"].numpy()
    table = pq.read_table(folder / "ids.parquet")
    return description, embeds, {name: table.column(name).to_pylist() for name in table.column_names}


def check_index_options(index_type: str, size: int, given: dict) -> dict:
    """Settings of each index type, defaults filled in (IVF: nlist ≈ 4·√N lists, 16 probed; HNSW: M=32)."""
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


@torch.no_grad()
def build_gallery_index(model, processor, items: list[GalleryItem], output_dir, *, index_type: str = "flat",
                        batch_size: int = 32, chunk_size: int = 1024, show_progress: bool = True,
                        model_name_or_path: str | None = None, source: dict | None = None, ignored_files: int = 0,
                        **index_options) -> GalleryIndex:
    """Encode `items` with `model.get_image_features` (batched, resumable) and save a `GalleryIndex` in `output_dir`.

    `model_name_or_path` is recorded so that queries can load the same model; the encoder fingerprint is recorded so
    that a query with a different encoder is refused rather than silently wrong. If `output_dir` already holds a
    complete index of the same encoder, unchanged images keep their embeddings and only new or changed ones are
    encoded (`index.metadata["last_build"]` counts reused, encoded and removed images).
    """
    if not items:
        raise ValueError("The gallery is empty: no image files (" + ", ".join(IMAGE_SUFFIXES) + ") were found.")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be positive, got {batch_size} and {chunk_size}.")
    check_index_options(index_type, len(items), index_options)  # bad options fail before hours of encoding
    output_dir = Path(output_dir)
    chunks_dir = output_dir / "chunks"
    fingerprint = encoder_fingerprint(model, processor)
    reusable, removed = _reusable_embeddings(output_dir, fingerprint, items)
    to_encode = [item for item in items if item.id not in reusable]

    encoded, encoded_readable = {}, {}
    if to_encode:
        plan = {"digest": _plan_digest(fingerprint, to_encode, chunk_size), "num_images": len(to_encode)}
        plan_file = chunks_dir / "plan.json"
        if chunks_dir.is_dir():
            previous_plan = json.loads(plan_file.read_text()) if plan_file.is_file() else None
            if previous_plan != plan:
                logger.warning("%s holds chunks of a different model or image list; encoding from the start.",
                               chunks_dir)
                shutil.rmtree(chunks_dir)
        chunks_dir.mkdir(parents=True, exist_ok=True)
        plan_file.write_text(json.dumps(plan))

        was_training = model.training
        model.eval()
        chunk_names = encode_in_chunks("images", [item.source for item in to_encode],
                                       image_batch_encoder(model, processor), chunks_dir, batch_size, chunk_size,
                                       show_progress)
        model.train(was_training)
        chunks = [load_file(str(chunks_dir / name)) for name in chunk_names]
        embeds = torch.cat([chunk["embeds"] for chunk in chunks]).numpy()
        readable = torch.cat([chunk["readable"] for chunk in chunks]).tolist()
        encoded = {item.id: row for item, row in zip(to_encode, embeds)}
        encoded_readable = {item.id: ok for item, ok in zip(to_encode, readable)}

    kept = [item for item in items if item.id in reusable or encoded_readable[item.id]]
    unreadable = [item.id for item in items if item.id not in reusable and not encoded_readable[item.id]]
    if unreadable:
        logger.warning("Skipped %d unreadable image file(s) of %d, e.g. %s", len(unreadable), len(items),
                       ", ".join(unreadable[:3]))
    if not kept:
        raise ValueError(f"None of the {len(items)} gallery images could be read.")
    metadata = {
        "model_name_or_path": model_name_or_path,
        "encoder_fingerprint": fingerprint,
        "source": source or {},
        "skipped": {"unreadable_image": len(unreadable), "not_an_image_file": ignored_files},
        "unreadable_images": unreadable[:1000],
        "last_build": {"reused": len(reusable), "encoded": len(to_encode), "removed": removed},
    }
    embeds = np.stack([reusable[item.id] if item.id in reusable else encoded[item.id] for item in kept])
    index = GalleryIndex(embeds, [item.id for item in kept], [item.path for item in kept], index_type=index_type,
                         metadata=metadata, versions=[item.version for item in kept], rows=[item.row for item in kept],
                         **index_options)
    index.save(output_dir)
    if chunks_dir.is_dir():
        shutil.rmtree(chunks_dir)
    return index
