"""Frozen-encoder embedding cache: encode every distinct image and text of a triplet dataset once.

SCOT trains only the Combiner, so the encoder's outputs never change during training. Re-encoding every image every
step (the research code's habit) spends nearly all the compute on work already done; here each distinct image and
each distinct string is encoded once, stored as safetensors, and training reads vectors.

Layout of one cache entry (`{cache_dir}/{key}/`), where `key` hashes the encoder's weights, the processor and the
dataset's fingerprint and column names:

    images-00000.safetensors ...   `embeds [n, d]` and `readable [n]` for a chunk of distinct images, plus, for a
                                   composer that reads more of the image (`model.composer_image_inputs`: the
                                   pseudo-word composer's `image_token_embeds`), those features in fp16
    texts-00000.safetensors ...    `embeds [n, d]` for a chunk of distinct strings
    rows.safetensors               per kept row: index of its image / modification / modified caption / caption
    manifest.json                  written last: counts, skipped rows by reason, embed_dim; its presence = complete

A row is skipped, and counted by reason, when its image cell is empty ("missing_image"), one of its three texts is
empty ("empty_text") or its image cannot be decoded ("unreadable_image"); a row with several counts once, under the
first of these that applies.

Chunks are written atomically and skipped when present, so an interrupted encoding resumes where it stopped.

Size of the extra image features: the demo backbone's 2 x 2 x 256 ConvNeXt map is 2 KB per image in fp16; CLIP
ViT-L/14's 257 x 1024 token states are 0.5 MB per image (50 GB for 100k distinct images): the whole cache is loaded
into memory, so at that scale train on a subset or without the cache.
"""

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from modeling_scot.modeling_scot import SAME_IMAGE_COSINE  # a gallery image this close is the reference (a copy)
from scot_core import (
    atomic_save_file,
    atomic_write_json,
    composer_image_batch_encoder,
    encode_in_chunks,
    encoder_fingerprint,
    eval_mode,
    image_batch_encoder,
    image_identity,
    read_json,
    text_batch_encoder,
)

logger = logging.getLogger(__name__)

# 2: images decoded by `scot_core.load_image` (EXIF orientation, 16-bit and float modes), so entries written by the
# version-1 decoder are not reused
CACHE_FORMAT_VERSION = 2

# why a triplet row is not trained on, in the order they are checked (the cheap checks first)
SKIP_REASONS = ("missing_image", "empty_text", "unreadable_image")


def describe_skipped(skipped: dict[str, int]) -> str:
    """"2 missing_image, 1 empty_text": the non-zero counts of skipped rows by reason, for messages."""
    return ", ".join(f"{count} {reason}" for reason, count in skipped.items() if count)


def has_text(value) -> bool:
    """A text cell a triplet can use: a string with something besides whitespace."""
    return isinstance(value, str) and bool(value.strip())


def undecoded_images(dataset, column: str):
    """`dataset` with its Image column `column` not decoded (cells as `{"bytes", "path"}`), so that images are
    compared without decoding and decoded only by `scot_core.load_image`; other datasets as they are."""
    from datasets import Image as ImageFeature

    if isinstance(dataset.features.get(column), ImageFeature) and dataset.features[column].decode:
        return dataset.cast_column(column, ImageFeature(decode=False))
    return dataset


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


def cache_key(model, processor, dataset, columns: TripletColumns) -> str:
    """Where a dataset's embeddings live: changes with the encoder, the processor, the data and the columns."""
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_FORMAT_VERSION}".encode())
    digest.update(encoder_fingerprint(model, processor).encode())
    digest.update(str(getattr(dataset, "_fingerprint", None) or len(dataset)).encode())
    digest.update(json.dumps(asdict(columns)).encode())
    extra_features = extra_image_features(model)
    if extra_features:  # a Combiner's key stays what it was; a composer reading more of the image gets its own entry
        digest.update(json.dumps(extra_features).encode())
    return digest.hexdigest()[:20]


def extra_image_features(model) -> list[str]:
    """What the model's composer reads of a reference image besides its pooled embedding (`composer_image_inputs`):
    cached with the images. Empty for the Combiner."""
    return [name for name in getattr(model, "composer_image_inputs", ("image_embeds",)) if name != "image_embeds"]


class EmbeddingCache:
    """Cached embeddings of a triplet dataset: one vector per distinct image and string, and per kept row the indices
    of its image, modification, modified caption and caption. `image_features` holds, per distinct image, what the
    composer reads besides the pooled embedding (`{"image_token_embeds": [images, ...]}` fp16 for the pseudo-word
    composer; empty for the Combiner)."""

    def __init__(self, folder: Path, image_embeds, text_embeds, row_indices: dict[str, torch.Tensor], manifest: dict,
                 image_features: dict[str, torch.Tensor] | None = None):
        self.folder = folder
        self.image_embeds = image_embeds
        self.image_features = image_features or {}
        self.text_embeds = text_embeds
        self.row_indices = row_indices
        self.manifest = manifest

    def __len__(self) -> int:
        return len(self.row_indices["image"])

    @property
    def skipped(self) -> dict[str, int]:
        """Rows not kept, by reason (`SKIP_REASONS`)."""
        return {reason: self.manifest["skipped"].get(reason, 0) for reason in SKIP_REASONS}

    def as_dataset(self, target: str = "text", target_gallery: "EmbeddingCache | None" = None,
                   with_probes: bool = False, reference_weight: float = 0.0) -> "CachedTripletDataset":
        return CachedTripletDataset(self, target, target_gallery, with_probes, reference_weight)

    @classmethod
    def load(cls, folder: Path) -> "EmbeddingCache":
        manifest = read_json(folder / "manifest.json", "embedding cache manifest")

        def embeds(chunks: list[str], key: str = "embeds") -> torch.Tensor:
            parts = [load_file(str(folder / name))[key] for name in chunks]
            if parts:
                return torch.cat(parts)
            return torch.zeros(0, manifest["embed_dim"])  # no chunks: a dataset whose every row was skipped

        image_features = {name: embeds(manifest["image_chunks"], name)
                          for name in manifest.get("image_features", []) if manifest["image_chunks"]}
        return cls(folder, embeds(manifest["image_chunks"]), embeds(manifest["text_chunks"]),
                   load_file(str(folder / "rows.safetensors")), manifest, image_features)

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


def _distinct_texts(dataset, columns: TripletColumns) -> tuple[list[str], dict[str, list[int]], list[bool]]:
    """The distinct (stripped) strings of the three text columns, each row's index into them per column (-1 for an
    empty text), and whether each row has all three texts."""
    text_index: dict[str, int] = {}
    row_text_indices: dict[str, list[int]] = {name: [] for name in columns.text_columns}
    row_has_text = [True] * len(dataset)
    for name in dict.fromkeys(columns.text_columns):  # a column named twice (stage 1's caption) is read once
        for row, text in enumerate(dataset[name]):
            if not has_text(text):
                row_has_text[row] = False
                row_text_indices[name].append(-1)
                continue
            row_text_indices[name].append(text_index.setdefault(text.strip(), len(text_index)))
    return list(text_index), row_text_indices, row_has_text


def _distinct_images(dataset, columns: TripletColumns) -> tuple[list, list[int]]:
    """The distinct image cells, read undecoded so that identical bytes (or paths) are recognised without decoding,
    and each row's index into them (-1 for a missing image: a null cell)."""
    image_index: dict[str, int] = {}
    distinct_images = []
    row_image_indices = []
    for value in undecoded_images(dataset, columns.image)[columns.image]:
        identity = image_identity(value)
        if identity is None:
            row_image_indices.append(-1)
            continue
        if identity not in image_index:
            image_index[identity] = len(distinct_images)
            distinct_images.append(value)
        row_image_indices.append(image_index[identity])
    return distinct_images, row_image_indices


def _build(model, processor, dataset, columns, folder, batch_size, chunk_size, show_progress) -> EmbeddingCache:
    texts, row_text_indices, row_has_text = _distinct_texts(dataset, columns)
    distinct_images, row_image_indices = _distinct_images(dataset, columns)

    extra_features = extra_image_features(model)
    encode_image_batch = (composer_image_batch_encoder if extra_features else image_batch_encoder)(model, processor)
    with eval_mode(model):
        image_chunks = encode_in_chunks("images", distinct_images, encode_image_batch, folder, batch_size, chunk_size,
                                        show_progress)
        text_chunks = encode_in_chunks("texts", texts, text_batch_encoder(model, processor), folder, batch_size,
                                       chunk_size, show_progress)

    # a row is kept when it has an image, its three texts are non-empty and its image could be decoded
    image_of_row = torch.tensor(row_image_indices, dtype=torch.long)
    has_image = image_of_row >= 0
    has_texts = torch.tensor(row_has_text, dtype=torch.bool)
    decoded = torch.zeros(len(dataset), dtype=torch.bool)
    if image_chunks:
        readable = torch.cat([load_file(str(folder / name))["readable"] for name in image_chunks])
        decoded[has_image] = readable[image_of_row[has_image]]
    skipped = {"missing_image": int((~has_image).sum()), "empty_text": int((has_image & ~has_texts).sum()),
               "unreadable_image": int((has_image & has_texts & ~decoded).sum())}
    keep = has_image & has_texts & decoded
    rows = {"image": image_of_row[keep], "dataset_row": torch.arange(len(dataset))[keep]}
    for name, column in (("modification", columns.modification), ("modified_caption", columns.modified_caption),
                         ("caption", columns.caption)):
        rows[name] = torch.tensor(row_text_indices[column], dtype=torch.long)[keep]
    atomic_save_file(rows, folder / "rows.safetensors")
    atomic_write_json(folder / "manifest.json", {  # written last: its presence marks the entry complete
        "format_version": CACHE_FORMAT_VERSION,
        "embed_dim": model.config.embed_dim,
        "columns": asdict(columns),
        "num_dataset_rows": len(dataset),
        "num_rows": int(keep.sum()),
        "num_distinct_images": len(distinct_images),
        "num_distinct_texts": len(texts),
        "image_features": extra_features,
        "skipped": skipped,
        "image_chunks": image_chunks,
        "text_chunks": text_chunks,
    })
    if any(skipped.values()):
        logger.warning("Embedding cache: skipped %s of %d rows (%s)", sum(skipped.values()), len(dataset),
                       describe_skipped(skipped))
    return EmbeddingCache.load(folder)


# What a composed query is trained towards: the modified caption's text embedding (SCOT); the same moved across the
# modality gap (text embedding - mean text + mean image, renormalised: where an image described by it would lie, to
# first order; Liang et al. 2022, "Mind the Gap"); or the training image nearest to it (the paper's Table 3
# comparison, "retrieved image supervision").
TARGETS = ("text", "text_gap", "retrieved_image")
# The floor probe of the validation (`ScotTrainer`): the training image retrieved by the modified caption and the
# reference with equal weight (fixed, whatever a run's own retrieval_reference_weight), so that runs compare on it
FLOOR_PROBE_REFERENCE_WEIGHT = 1.0


def _standardised(scores: torch.Tensor) -> torch.Tensor:
    """Each row's scores as z-scores over the gallery, so that text-image and image-image cosines (whose spreads
    differ several-fold) can be added."""
    return (scores - scores.mean(dim=1, keepdim=True)) / scores.std(dim=1, keepdim=True).clamp_min(1e-6)


def retrieved_image_targets(modified_caption_embeds: torch.Tensor, reference_embeds: torch.Tensor,
                            gallery_embeds: torch.Tensor, reference_weight: float = 0.0,
                            block_size: int = 4096) -> torch.Tensor:
    """`[R]` indices into `gallery_embeds` `[G, d]`: for each row, the gallery image nearest (cosine) to its modified
    caption's text embedding, leaving out the row's reference image and its copies. All inputs L2-normalised.

    With `reference_weight` w > 0 (ours, not the paper's), the image chosen is instead the one that best matches both
    the modified caption and the reference: the highest z(cos(T_u, g)) + w·z(cos(V, g)), each cosine standardised
    over the gallery. A change the encoder does not see leaves cos(T_u, ·) flat among lookalikes, and the reference's
    nearest neighbour wins: the target then says "stay at the image" instead of pointing at an unrelated picture that
    merely matches the caption's words. w = 0 is the plain nearest image (z-scoring keeps each row's order)."""
    if len(gallery_embeds) < 2:
        raise ValueError("Retrieved-image targets need a gallery of at least two training images.")
    if reference_weight < 0:
        raise ValueError(f"reference_weight must be >= 0, got {reference_weight}.")
    targets = torch.empty(len(modified_caption_embeds), dtype=torch.long)
    gallery = gallery_embeds.float()
    for start in range(0, len(modified_caption_embeds), block_size):
        stop = start + block_size
        scores = modified_caption_embeds[start:stop].float() @ gallery.T
        image_scores = reference_embeds[start:stop].float() @ gallery.T
        if reference_weight > 0:
            scores = _standardised(scores) + reference_weight * _standardised(image_scores)
        targets[start:stop] = scores.masked_fill(image_scores > SAME_IMAGE_COSINE, float("-inf")).argmax(dim=1)
    return targets


def modality_gap(cache: EmbeddingCache) -> torch.Tensor:
    """`[d]`: the mean image embedding minus the mean text embedding of a cache (its distinct images and texts)."""
    return cache.image_embeds.float().mean(dim=0) - cache.text_embeds.float().mean(dim=0)


class CachedTripletDataset(torch.utils.data.Dataset):
    """Rows of an `EmbeddingCache` as the keyword arguments `ScotModel.forward` takes.

    With `target="retrieved_image"`, `modified_caption_embeds` holds instead the embedding of the image of
    `target_gallery` (default: this cache's own images; for a held-out slice, pass the training cache) nearest to
    the modified caption, excluding the reference (`retrieved_image_targets`). With `target="text_gap"`, it holds
    the modified caption's embedding moved by the gap between the mean image and the mean text embedding of
    `target_gallery`'s cache (`modality_gap`).

    With `with_probes`, each row also carries the two target-independent probes `ScotTrainer`'s evaluation ranks:
    `probe_caption_embeds` (the modified caption's text embedding) and `probe_image_embeds` (the retrieved image,
    as above), and `retrieved_image_embeds`, what `ScotTrainingArguments.retrieved_image_weight > 0` trains towards:
    the same image, or with `reference_weight` > 0 the one retrieved by caption and reference together
    (`retrieved_image_targets`; also what `target="retrieved_image"` then holds). The probes never change with
    `reference_weight`, so that runs with different targets are compared on the same probes. A third probe,
    `probe_floor_image_embeds`, is the image retrieved by caption and reference with equal weight
    (`FLOOR_PROBE_REFERENCE_WEIGHT`): where the encoder does not see the change it is the reference's lookalike, and
    the evaluation compares the composed query with the reference image alone on it (the image floor)."""

    def __init__(self, cache: EmbeddingCache, target: str = "text", target_gallery: EmbeddingCache | None = None,
                 with_probes: bool = False, reference_weight: float = 0.0):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}.")
        self.cache = cache
        self.target_embeds = None
        self.probe_embeds = self.retrieved_embeds = self.floor_probe_embeds = None
        rows, gallery = cache.row_indices, target_gallery or cache
        modified, references = cache.text_embeds[rows["modified_caption"]], cache.image_embeds[rows["image"]]
        if target == "retrieved_image" or with_probes:
            chosen = retrieved_image_targets(modified, references, gallery.image_embeds)
            self.probe_embeds = self.retrieved_embeds = gallery.image_embeds[chosen]
            if reference_weight > 0:
                chosen = retrieved_image_targets(modified, references, gallery.image_embeds, reference_weight)
                self.retrieved_embeds = gallery.image_embeds[chosen]
        if with_probes and reference_weight == FLOOR_PROBE_REFERENCE_WEIGHT:
            self.floor_probe_embeds = self.retrieved_embeds  # the same retrieval: not run twice
        elif with_probes:
            chosen = retrieved_image_targets(modified, references, gallery.image_embeds, FLOOR_PROBE_REFERENCE_WEIGHT)
            self.floor_probe_embeds = gallery.image_embeds[chosen]
        if target == "retrieved_image":
            self.target_embeds = self.retrieved_embeds
        elif target == "text_gap":
            self.target_embeds = torch.nn.functional.normalize(modified + modality_gap(gallery), dim=-1)
        self.with_probes = with_probes

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rows, texts = self.cache.row_indices, self.cache.text_embeds
        modified_caption = texts[rows["modified_caption"][index]]
        item = {
            "image_embeds": self.cache.image_embeds[rows["image"][index]],
            "text_embeds": texts[rows["modification"][index]],
            "modified_caption_embeds": modified_caption if self.target_embeds is None else self.target_embeds[index],
            "caption_embeds": texts[rows["caption"][index]],
        }
        if self.with_probes:
            item["probe_caption_embeds"] = modified_caption
            item["probe_image_embeds"] = self.probe_embeds[index]
            item["retrieved_image_embeds"] = self.retrieved_embeds[index]
            item["probe_floor_image_embeds"] = self.floor_probe_embeds[index]
        return item
