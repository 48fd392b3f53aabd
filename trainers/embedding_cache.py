"""Frozen-encoder embedding cache: encode every distinct image and text of a triplet dataset once.

SCOT trains only the Combiner, so the encoder's outputs never change during training. Re-encoding every image every
step (the research code's habit) spends nearly all the compute on work already done; here each distinct image and
each distinct string is encoded once, stored as safetensors, and training reads vectors.

Layout of one cache entry (`{cache_dir}/{key}/`), where `key` hashes the encoder's weights, the processor and the
dataset's fingerprint and column names:

    images-00000.safetensors ...   `embeds [n, d]` and `readable [n]` for a chunk of distinct images
    texts-00000.safetensors ...    `embeds [n, d]` for a chunk of distinct strings
    rows.safetensors               per kept row: index of its image / modification / modified caption / caption
    manifest.json                  written last: counts, skipped rows by reason, embed_dim; its presence = complete

Chunks are written atomically and skipped when present, so an interrupted encoding resumes where it stopped.
"""

import hashlib
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


@dataclass
class TripletColumns:
    """Names of the triplet dataset's columns."""

    image: str = "image"
    caption: str = "caption"
    modification: str = "modification"
    modified_caption: str = "modified_caption"

    @property
    def text_columns(self) -> tuple[str, str, str]:
        return (self.modification, self.modified_caption, self.caption)

    def check(self, dataset) -> None:
        """Raise a clear error when the dataset lacks one of the columns."""
        expected = [self.image, *self.text_columns]
        missing = [name for name in expected if name not in dataset.column_names]
        if missing:
            raise ValueError(
                f"The triplet dataset lacks column(s) {missing}: expected {expected}, found {dataset.column_names}. "
                "Rename them or set image_column / caption_column / modification_column / modified_caption_column."
            )


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(temporary))
    os.replace(temporary, path)


def encoder_fingerprint(model, processor) -> str:
    """A digest of everything the image and text embeddings depend on: the encoder's weights (their bytes), its
    pooling settings, the image processor's settings and the tokenizer. The Combiner is not part of it, so the
    fingerprint (and the cached gallery) stays valid while the Combiner trains. Memoised on the model until an
    encoder tensor changes."""
    tensors = list(model.encoder.state_dict().values())
    signature = tuple((id(tensor), tensor._version) for tensor in tensors)
    memo = getattr(model, "_scot_encoder_fingerprint", None)
    if memo is not None and memo[0] == signature:
        return memo[1]
    digest = hashlib.sha256()
    config = model.config
    digest.update(json.dumps([config.encoder_config.model_type, getattr(config, "blip2_query_pooling", None),
                              getattr(config, "text_pooling", None)]).encode())
    for name, tensor in model.encoder.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    digest.update(processor.image_processor.to_json_string().encode())
    tokenizer = processor.tokenizer
    digest.update(f"{type(tokenizer).__name__}:{len(tokenizer)}:{tokenizer.model_max_length}".encode())
    fingerprint = digest.hexdigest()
    model._scot_encoder_fingerprint = (signature, fingerprint)
    return fingerprint


def cache_key(model, processor, dataset, columns: TripletColumns) -> str:
    """Where a dataset's embeddings live: changes with the encoder, the processor, the data and the columns."""
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_FORMAT_VERSION}".encode())
    digest.update(encoder_fingerprint(model, processor).encode())
    digest.update(str(getattr(dataset, "_fingerprint", None) or len(dataset)).encode())
    digest.update(json.dumps(asdict(columns)).encode())
    return digest.hexdigest()[:20]


def image_identity(value) -> str:
    """A stable key for one image cell (datasets `Image(decode=False)` dict, path string or PIL image)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return "bytes:" + hashlib.sha1(value["bytes"]).hexdigest()
        return "path:" + str(value.get("path"))
    if isinstance(value, (str, os.PathLike)):
        return "path:" + str(value)
    if hasattr(value, "tobytes"):
        return "pil:" + hashlib.sha1(value.tobytes()).hexdigest()
    raise ValueError(f"Cannot read an image from a value of type {type(value).__name__}: expected an Image feature, "
                     "a path or a PIL image.")


def open_image(value):
    """Decode one image cell to PIL, or return None if it cannot be read (counted, never fatal)."""
    from PIL import Image

    try:
        if isinstance(value, dict):
            source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        elif isinstance(value, Image.Image):
            return value
        else:
            source = value
        with Image.open(source) as opened:
            opened.load()
            return opened.copy()
    except Exception:  # any decoding failure is a skipped row, reported at the end
        return None


class EmbeddingCache:
    """Cached embeddings of a triplet dataset: one vector per distinct image and string, and per kept row the indices
    of its image, modification, modified caption and caption."""

    def __init__(self, folder: Path, image_embeds, text_embeds, row_indices: dict[str, torch.Tensor], manifest: dict):
        self.folder = folder
        self.image_embeds = image_embeds
        self.text_embeds = text_embeds
        self.row_indices = row_indices
        self.manifest = manifest

    def __len__(self) -> int:
        return len(self.row_indices["image"])

    @property
    def skipped(self) -> dict[str, int]:
        return self.manifest["skipped"]

    def as_dataset(self) -> "CachedTripletDataset":
        return CachedTripletDataset(self)

    @classmethod
    def load(cls, folder: Path) -> "EmbeddingCache":
        manifest = json.loads((folder / "manifest.json").read_text())
        image_embeds = torch.cat([load_file(str(folder / name))["embeds"] for name in manifest["image_chunks"]])
        text_embeds = torch.cat([load_file(str(folder / name))["embeds"] for name in manifest["text_chunks"]])
        return cls(folder, image_embeds, text_embeds, load_file(str(folder / "rows.safetensors")), manifest)

    @classmethod
    def build_or_load(
        cls,
        model,
        processor,
        dataset,
        columns: TripletColumns | None = None,
        cache_dir: str | os.PathLike = "~/.cache/scot/embeddings",
        batch_size: int = 64,
        chunk_size: int = 4096,
        show_progress: bool = True,
    ) -> "EmbeddingCache":
        """Load the cache entry for (encoder, processor, dataset, columns), encoding whatever is missing first."""
        columns = columns or TripletColumns()
        columns.check(dataset)
        folder = Path(cache_dir).expanduser() / cache_key(model, processor, dataset, columns)
        if (folder / "manifest.json").exists():
            logger.info("Using cached embeddings from %s", folder)
            return cls.load(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return _build(model, processor, dataset, columns, folder, batch_size, chunk_size, show_progress)


def image_batch_encoder(model, processor):
    """`encode_batch` for `encode_in_chunks` over image cells: `embeds [n, d]` (zeros where unreadable) and
    `readable [n]`; an image that cannot be decoded is marked, never fatal."""
    device = next(model.parameters()).device
    embed_dim = model.config.embed_dim

    def encode_images(values):
        images = [open_image(value) for value in values]
        readable = torch.tensor([image is not None for image in images])
        embeds = torch.zeros(len(values), embed_dim)
        if readable.any():
            pixel_values = processor(images=[image for image in images if image is not None], return_tensors="pt")
            embeds[readable] = model.get_image_features(pixel_values["pixel_values"].to(device)).float().cpu()
        return {"embeds": embeds, "readable": readable}

    return encode_images


def encode_in_chunks(kind, items, encode_batch, folder: Path, batch_size, chunk_size, show_progress):
    """Encode `items` in chunks of `chunk_size`, each saved as `{kind}-{k:05d}.safetensors`; existing chunks are kept."""
    names = []
    progress = tqdm(total=len(items), desc=f"encoding {kind}", unit=kind, disable=not show_progress)
    for chunk_number, start in enumerate(range(0, len(items), chunk_size)):
        name = f"{kind}-{chunk_number:05d}.safetensors"
        names.append(name)
        chunk = items[start : start + chunk_size]
        if (folder / name).exists():  # done before an interruption
            progress.update(len(chunk))
            continue
        outputs = {}
        for batch_start in range(0, len(chunk), batch_size):
            for key, value in encode_batch(chunk[batch_start : batch_start + batch_size]).items():
                outputs.setdefault(key, []).append(value)
            progress.update(min(batch_size, len(chunk) - batch_start))
        atomic_save_file({key: torch.cat(values) for key, values in outputs.items()}, folder / name)
    progress.close()
    return names


@torch.no_grad()
def _build(model, processor, dataset, columns, folder, batch_size, chunk_size, show_progress) -> EmbeddingCache:
    from datasets import Image as ImageFeature

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    embed_dim = model.config.embed_dim
    skipped = {"empty_text": 0, "unreadable_image": 0}

    # Distinct strings over the three text columns; a row with an empty one is skipped.
    text_index: dict[str, int] = {}
    row_text_indices = {name: [] for name in columns.text_columns}
    row_has_text = [True] * len(dataset)
    for name in columns.text_columns:
        for row, text in enumerate(dataset[name]):
            text = text.strip() if isinstance(text, str) else ""
            if not text:
                row_has_text[row] = False
                row_text_indices[name].append(-1)
                continue
            row_text_indices[name].append(text_index.setdefault(text, len(text_index)))
    skipped["empty_text"] = row_has_text.count(False)

    # Distinct images, read undecoded so that identical bytes (or paths) are recognised without decoding.
    if isinstance(dataset.features.get(columns.image), ImageFeature):
        raw_images = dataset.cast_column(columns.image, ImageFeature(decode=False))[columns.image]
    else:
        raw_images = dataset[columns.image]
    image_index: dict[str, int] = {}
    distinct_images = []
    row_image_indices = []
    for value in raw_images:
        identity = image_identity(value)
        if identity not in image_index:
            image_index[identity] = len(distinct_images)
            distinct_images.append(value)
        row_image_indices.append(image_index[identity])

    encode_images = image_batch_encoder(model, processor)

    def encode_texts(texts):
        tokens = processor(text=list(texts), return_tensors="pt").to(device)
        return {"embeds": model.get_text_features(**tokens).float().cpu()}

    image_chunks = encode_in_chunks("images", distinct_images, encode_images, folder, batch_size, chunk_size, show_progress)
    texts = list(text_index)
    text_chunks = encode_in_chunks("texts", texts, encode_texts, folder, batch_size, chunk_size, show_progress)

    readable = torch.cat([load_file(str(folder / name))["readable"] for name in image_chunks]) if image_chunks else None
    keep = torch.tensor(row_has_text, dtype=torch.bool)
    if readable is not None:
        image_ok = readable[torch.tensor(row_image_indices, dtype=torch.long)]
        skipped["unreadable_image"] = int((keep & ~image_ok).sum())
        keep &= image_ok
    rows = {
        "image": torch.tensor(row_image_indices, dtype=torch.long)[keep],
        "modification": torch.tensor(row_text_indices[columns.modification], dtype=torch.long)[keep],
        "modified_caption": torch.tensor(row_text_indices[columns.modified_caption], dtype=torch.long)[keep],
        "caption": torch.tensor(row_text_indices[columns.caption], dtype=torch.long)[keep],
        "dataset_row": torch.arange(len(dataset))[keep],
    }
    atomic_save_file(rows, folder / "rows.safetensors")
    manifest = {
        "format_version": CACHE_FORMAT_VERSION,
        "embed_dim": embed_dim,
        "columns": asdict(columns),
        "num_dataset_rows": len(dataset),
        "num_rows": int(keep.sum()),
        "num_distinct_images": len(distinct_images),
        "num_distinct_texts": len(texts),
        "skipped": skipped,
        "image_chunks": image_chunks,
        "text_chunks": text_chunks,
    }
    temporary = folder / "manifest.json.tmp"
    temporary.write_text(json.dumps(manifest, indent=2))
    os.replace(temporary, folder / "manifest.json")
    if any(skipped.values()):
        logger.warning("Embedding cache: skipped %s of %d rows (%s)", sum(skipped.values()), len(dataset),
                       ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in skipped.items() if count))
    model.train(was_training)
    return EmbeddingCache.load(folder)


class CachedTripletDataset(torch.utils.data.Dataset):
    """Rows of an `EmbeddingCache` as the keyword arguments `ScotModel.forward` takes."""

    def __init__(self, cache: EmbeddingCache):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rows, texts = self.cache.row_indices, self.cache.text_embeds
        return {
            "image_embeds": self.cache.image_embeds[rows["image"][index]],
            "text_embeds": texts[rows["modification"][index]],
            "modified_caption_embeds": texts[rows["modified_caption"][index]],
            "caption_embeds": texts[rows["caption"][index]],
        }
