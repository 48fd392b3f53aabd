"""The encoding core shared by training, evaluation, search and the demo.

`modeling_scot` is the model (importable with torch + transformers alone, the copy the Hub carries); this package
holds what every stage around it needs once: the image decoder, batched encoding with progress, chunked resumable
encoding, the encoder fingerprint, atomic writes and model loading. It never imports `trainers`, `scot_eval`,
`scot_search` or `demo`.
"""

from modeling_scot.processing_scot import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, to_rgb

from .encoding import (
    composer_image_batch_encoder,
    encode_composer_image_features,
    encode_images,
    encode_in_chunks,
    encode_texts,
    encoder_fingerprint,
    eval_mode,
    image_batch_encoder,
    image_identity,
    is_missing_image,
    text_batch_encoder,
    try_load_image,
)
from .io import atomic_path, atomic_save_file, atomic_write_json, atomic_write_text, read_json
from .loading import load_scot_or_backbone

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageLoadError",
    "atomic_path",
    "atomic_save_file",
    "atomic_write_json",
    "atomic_write_text",
    "composer_image_batch_encoder",
    "encode_composer_image_features",
    "encode_images",
    "encode_in_chunks",
    "encode_texts",
    "encoder_fingerprint",
    "eval_mode",
    "image_batch_encoder",
    "image_identity",
    "is_missing_image",
    "load_image",
    "load_scot_or_backbone",
    "read_json",
    "text_batch_encoder",
    "to_rgb",
    "try_load_image",
]
