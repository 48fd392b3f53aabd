"""Batched encoding with a frozen SCOT encoder: images and texts to L2-normalised embeddings, with progress, in
chunks that survive an interruption, under a fingerprint that says which encoder produced them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_scot.processing_scot import DEFAULT_MAX_PIXELS, ImageLoadError, load_image

from .io import atomic_save_file

logger = logging.getLogger(__name__)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Switch `model` to eval mode for the block and restore its mode afterwards, even when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def encoder_fingerprint(model, processor) -> str:
    """A digest of everything the image and text embeddings depend on: the encoder's weights (their bytes), its
    pooling settings, the image processor's settings and the tokenizer. The Combiner is not part of it, so the
    fingerprint (and a cached gallery) stays valid while the Combiner trains. Memoised on the model until an encoder
    tensor changes."""
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


def is_missing_image(value) -> bool:
    """True for a cell that holds no image at all: None (a null dataset cell) or an Image cell with neither bytes nor
    a path. Datasets and galleries skip such rows and count them as "missing_image", apart from unreadable ones."""
    return value is None or (isinstance(value, dict) and not value.get("bytes") and not value.get("path"))


def image_identity(value) -> str | None:
    """A stable key for one image cell (datasets `Image(decode=False)` dict, encoded bytes, path string or PIL image),
    or None for a missing image (`is_missing_image`): callers skip and count that row instead of failing on it."""
    if is_missing_image(value):
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return "bytes:" + hashlib.sha1(value["bytes"]).hexdigest()
        return "path:" + str(value["path"])
    if isinstance(value, (bytes, bytearray)):
        return "bytes:" + hashlib.sha1(value).hexdigest()
    if isinstance(value, (str, os.PathLike)):
        return "path:" + str(value)
    if hasattr(value, "tobytes"):
        return "pil:" + hashlib.sha1(value.tobytes()).hexdigest()
    raise ValueError(f"Cannot read an image from a value of type {type(value).__name__}: expected an Image feature, "
                     "encoded bytes, a path or a PIL image.")


def try_load_image(value, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """`load_image`, or None when the image cannot be read (missing, damaged, not an image, too many pixels): for
    datasets and galleries, where such an image is skipped and counted, never fatal."""
    if is_missing_image(value):
        return None
    try:
        return load_image(value, max_pixels=max_pixels)
    except ImageLoadError as error:
        logger.debug("skipping an unreadable image: %s", error)
        return None


class _DecodedImages(torch.utils.data.Dataset):
    """Pixel values of images (paths, cells or PIL); an unreadable one yields None (counted, never fatal)."""

    def __init__(self, images: Sequence, image_processor, max_pixels: int | None):
        self.images, self.image_processor, self.max_pixels = images, image_processor, max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int):
        image = try_load_image(self.images[position], self.max_pixels)
        if image is None:
            return position, None
        return position, self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]


def _collate_readable(items):
    readable = [(position, pixels) for position, pixels in items if pixels is not None]
    positions = torch.tensor([position for position, _ in readable], dtype=torch.long)
    pixels = torch.stack([pixels for _, pixels in readable]) if readable else None
    return positions, pixels


@torch.inference_mode()
def encode_images(model, processor, images: Sequence, batch_size: int = 64, num_workers: int = 0,
                  show_progress: bool = True, description: str = "encoding images",
                  max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(`[N, D]` float32 CPU embeddings, `[N]` bool readable mask) of `images` (paths, Image cells or PIL images);
    the rows of unreadable images are zero. Decoding runs in `num_workers` DataLoader workers. `normalize=False`:
    the projected features before L2 normalisation (`get_image_features(normalize=False)`)."""
    device, dtype = model_device_dtype(model)
    embeddings = torch.zeros(len(images), model.config.embed_dim)
    readable = torch.zeros(len(images), dtype=torch.bool)
    loader = torch.utils.data.DataLoader(_DecodedImages(images, processor.image_processor, max_pixels),
                                         batch_size=batch_size, num_workers=num_workers, collate_fn=_collate_readable)
    with eval_mode(model):
        for positions, pixels in tqdm(loader, desc=description, unit="batch", disable=not show_progress):
            if pixels is None:
                continue
            embeddings[positions] = model.get_image_features(
                pixel_values=pixels.to(device=device, dtype=dtype), normalize=normalize).float().cpu()
            readable[positions] = True
    return embeddings, readable


@torch.inference_mode()
def encode_composer_image_features(model, processor, images: Sequence, batch_size: int = 64, num_workers: int = 0,
                                   show_progress: bool = True, description: str = "encoding images",
                                   max_pixels: int | None = DEFAULT_MAX_PIXELS,
                                   feature_dtype: torch.dtype = torch.float16) -> tuple[dict[str, torch.Tensor],
                                                                                         torch.Tensor]:
    """(`{name: [N, ...] CPU tensor}` for every name of `model.composer_image_inputs`, `[N]` bool readable mask):
    what the model's composer reads of `images`, from `get_composer_image_features` (one image pass each).
    `image_embeds` is float32 as `encode_images` returns it; the other features (the pseudo-word composer's image
    token states) are stored as `feature_dtype`, fp16 by default: they are many values per image (CLIP ViT-L/14:
    257 x 1024), and the composer maps them through a LayerNorm'd projection that fp16's precision does not
    disturb. Rows of unreadable images are zero."""
    device, dtype = model_device_dtype(model)
    features: dict[str, torch.Tensor] = {}
    readable = torch.zeros(len(images), dtype=torch.bool)
    loader = torch.utils.data.DataLoader(_DecodedImages(images, processor.image_processor, max_pixels),
                                         batch_size=batch_size, num_workers=num_workers, collate_fn=_collate_readable)

    def store(positions: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        for name, values in batch.items():
            if name not in features:  # shapes are known from the first batch
                features[name] = torch.zeros(len(images), *values.shape[1:],
                                             dtype=torch.float32 if name == "image_embeds" else feature_dtype)
            features[name][positions] = values.to("cpu", features[name].dtype)

    with eval_mode(model):
        for positions, pixels in tqdm(loader, desc=description, unit="batch", disable=not show_progress):
            if pixels is None:
                continue
            store(positions, model.get_composer_image_features(pixel_values=pixels.to(device=device, dtype=dtype)))
            readable[positions] = True
        if not features:  # nothing readable (or no image): a blank image gives the shapes of the zero rows
            from PIL import Image

            blank = processor.image_processor(images=[Image.new("RGB", (8, 8))], return_tensors="pt")["pixel_values"]
            shapes = model.get_composer_image_features(pixel_values=blank.to(device=device, dtype=dtype))
            store(torch.zeros(0, dtype=torch.long), {name: value[:0] for name, value in shapes.items()})
    return features, readable


@torch.inference_mode()
def encode_texts(model, processor, texts: Sequence[str], batch_size: int = 256, show_progress: bool = True,
                 description: str = "encoding texts", normalize: bool = True) -> torch.Tensor:
    """`[N, D]` float32 CPU embeddings of `texts` (`normalize=False`: before L2 normalisation)."""
    device, _ = model_device_dtype(model)
    embeddings = torch.zeros(len(texts), model.config.embed_dim)
    starts = range(0, len(texts), batch_size)
    with eval_mode(model):
        for start in tqdm(starts, desc=description, unit="batch", disable=not show_progress or len(starts) < 2):
            tokens = processor(text=list(texts[start:start + batch_size]), return_tensors="pt")
            embeddings[start:start + batch_size] = model.get_text_features(
                input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device),
                normalize=normalize).float().cpu()
    return embeddings


def image_batch_encoder(model, processor, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Callable:
    """`encode_batch` for `encode_in_chunks` over images: `embeds [n, d]` (zeros where unreadable) and `readable
    [n]`."""

    def encode_image_batch(values):
        embeds, readable = encode_images(model, processor, values, batch_size=max(len(values), 1),
                                         show_progress=False, max_pixels=max_pixels)
        return {"embeds": embeds, "readable": readable}

    return encode_image_batch


def composer_image_batch_encoder(model, processor, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Callable:
    """`encode_batch` for `encode_in_chunks` over images, for a composer that reads more than the pooled embedding:
    `embeds [n, d]`, `readable [n]` and, per further name of `model.composer_image_inputs`, that feature (fp16; see
    `encode_composer_image_features`). Zeros where unreadable."""

    def encode_image_batch(values):
        features, readable = encode_composer_image_features(model, processor, values, batch_size=max(len(values), 1),
                                                            show_progress=False, max_pixels=max_pixels)
        return {"embeds": features.pop("image_embeds"), "readable": readable, **features}

    return encode_image_batch


def text_batch_encoder(model, processor) -> Callable:
    """`encode_batch` for `encode_in_chunks` over strings: `embeds [n, d]`."""

    def encode_text_batch(texts):
        return {"embeds": encode_texts(model, processor, texts, batch_size=max(len(texts), 1), show_progress=False)}

    return encode_text_batch


def encode_in_chunks(kind: str, items: Sequence, encode_batch: Callable, folder: Path, batch_size: int,
                     chunk_size: int, show_progress: bool = True) -> list[str]:
    """Encode `items` in chunks of `chunk_size`, each saved atomically as `{folder}/{kind}-{k:05d}.safetensors`;
    chunks already present (written before an interruption) are kept, so a rerun resumes at the first missing one."""
    folder = Path(folder)
    names = []
    progress = tqdm(total=len(items), desc=f"encoding {kind}", unit=kind, disable=not show_progress)
    for chunk_number, start in enumerate(range(0, len(items), chunk_size)):
        name = f"{kind}-{chunk_number:05d}.safetensors"
        names.append(name)
        chunk = items[start:start + chunk_size]
        if (folder / name).exists():
            progress.update(len(chunk))
            continue
        outputs: dict[str, list[torch.Tensor]] = {}
        for batch_start in range(0, len(chunk), batch_size):
            for key, value in encode_batch(chunk[batch_start:batch_start + batch_size]).items():
                outputs.setdefault(key, []).append(value)
            progress.update(min(batch_size, len(chunk) - batch_start))
        atomic_save_file({key: torch.cat(values) for key, values in outputs.items()}, folder / name)
    progress.close()
    return names
