"""Querying a gallery index with a SCOT model: (reference image, modification text) → top-K gallery images.

A composed query is V_c = f_c(f_θ(image), f_φ(text)) ranked by cosine against the gallery's f_θ(images) (paper §3);
an image-only query ranks by f_θ(image), a text-only one by f_φ(text) (the shared space's zero-shot retrieval).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from trainers.embedding_cache import encoder_fingerprint, open_image

from .index import GalleryIndex

logger = logging.getLogger(__name__)

# Defaults of the web demo and the CLI: what `make demo` writes
DEFAULT_MODEL = "scot-demo"
# A gallery image this close to the reference is the reference itself (or a byte-different copy of it)
SAME_IMAGE_COSINE = 0.9999
# extra results fetched so that removing copies of the reference still leaves k
REFERENCE_COPIES = 8


@dataclass
class SearchHit:
    rank: int
    id: str
    score: float
    path: str = ""
    row: int = -1  # for a dataset gallery: the row of the dataset (split) that was indexed


@dataclass
class SearchResult:
    """Top-K of one query. `mode` is "composed", "image" or "text"; `text_weight` is the Combiner's λ (the weight
    on the text embedding; 1 − λ on the image) for composed queries, else None."""

    mode: str
    hits: list[SearchHit] = field(default_factory=list)
    text_weight: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def load_query_image(image):
    """A PIL image from a path, bytes-like dict or PIL image; a clear error naming the input when it is unreadable."""
    if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
        raise FileNotFoundError(f"Reference image {str(image)!r} does not exist.")
    opened = open_image(image)
    if opened is None:
        raise ValueError(f"Reference image {image if isinstance(image, (str, os.PathLike)) else 'upload'!s} could not "
                         "be read as an image (expected PNG, JPEG, WebP, GIF, BMP or TIFF).")
    return opened


class GallerySearcher:
    """A SCOT model, its processor and a gallery index encoded by the same encoder."""

    def __init__(self, model, processor, index: GalleryIndex):
        if model.config.embed_dim != index.embed_dim:
            raise ValueError(f"The model's embed_dim {model.config.embed_dim} differs from the gallery index's "
                             f"{index.embed_dim}: the index was built with another model.")
        recorded = index.metadata.get("encoder_fingerprint")
        if recorded and recorded != encoder_fingerprint(model, processor):
            raise ValueError("The gallery index was encoded with a different encoder (or processor) than this model's "
                             f"(index model: {index.metadata.get('model_name_or_path')!r}); rebuild the index with "
                             "`scot-search index` for this model.")
        self.model = model.eval()
        self.processor = processor
        self.index = index
        self.device = next(model.parameters()).device
        self._dataset = None  # a dataset gallery's images, loaded by `hit_image` when first needed

    @classmethod
    def from_pretrained(cls, index_dir, model_name_or_path: str | None = None, device: str | None = None,
                        **search_options) -> GallerySearcher:
        """Load the index in `index_dir` and the model it was built with (or `model_name_or_path`)."""
        from transformers import AutoModel, AutoProcessor

        import modeling_scot  # noqa: F401 - registers the "scot" Auto classes

        index = GalleryIndex.load(index_dir, **search_options)
        model_name_or_path = model_name_or_path or index.metadata.get("model_name_or_path")
        if not model_name_or_path:
            raise ValueError(f"The index in {str(index_dir)!r} does not record its model: pass the model folder.")
        model = AutoModel.from_pretrained(model_name_or_path)
        processor = AutoProcessor.from_pretrained(model_name_or_path)
        if device:
            model.to(device)
        return cls(model, processor, index)

    @torch.no_grad()
    def query(self, image=None, text: str | None = None, k: int = 10, exclude_reference: bool = True) -> SearchResult:
        """Top-`k` gallery images for a reference image and/or a modification text (at least one of them).

        With `exclude_reference` (default), gallery images identical to the reference (image embeddings at cosine
        ≥ 0.9999) are left out, as CIRR's protocol does: "this, but in blue" is never answered by "this"."""
        if text is not None and not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}.")
        if text is not None and not text.strip():
            raise ValueError("The text is empty: describe the change (or leave the text out for an image-only query).")
        if image is None and text is None:
            raise ValueError("Give a reference image, a text, or both.")
        image_embeds = text_embeds = text_weight = None
        if image is not None:
            pixels = self.processor(images=[load_query_image(image)], return_tensors="pt")["pixel_values"]
            image_embeds = self.model.get_image_features(pixel_values=pixels.to(self.device))
        if text is not None:
            tokens = self.processor(text=[text.strip()], return_tensors="pt").to(self.device)
            text_embeds = self.model.get_text_features(input_ids=tokens["input_ids"],
                                                       attention_mask=tokens["attention_mask"])
        if image_embeds is not None and text_embeds is not None:
            query_embeds, weight = self.model.compose(image_embeds, text_embeds, return_text_weight=True)
            mode, text_weight = "composed", float(weight[0, 0])
        else:
            query_embeds = image_embeds if image_embeds is not None else text_embeds
            mode = "image" if image_embeds is not None else "text"
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        exclude = exclude_reference and image_embeds is not None
        scores, positions = self.index.search(query_embeds, k + (REFERENCE_COPIES if exclude else 0))
        kept = [(float(score), int(position)) for score, position in zip(scores[0], positions[0]) if position >= 0]
        if exclude:
            reference = image_embeds[0].float().cpu().numpy()
            kept = [(score, position) for score, position in kept
                    if float(self.index.embeds[position] @ reference) < SAME_IMAGE_COSINE]
        hits = [SearchHit(rank=rank, id=self.index.ids[position], score=score, path=self.index.paths[position],
                          row=self.index.rows[position]) for rank, (score, position) in enumerate(kept[:k], start=1)]
        return SearchResult(mode=mode, hits=hits, text_weight=text_weight)

    def hit_image(self, hit: SearchHit):
        """What to show for a hit: its file path (folder galleries) or its decoded image, read from the indexed
        dataset (loaded once, on first use); None when neither is available."""
        if hit.path:
            return hit.path
        source = self.index.metadata.get("source", {})
        if hit.row < 0 or "dataset" not in source:
            return None
        if self._dataset is None:
            from datasets import load_dataset

            self._dataset = load_dataset(source["dataset"], split=source["split"])
        return open_image(self._dataset[hit.row][source["image_column"]])
