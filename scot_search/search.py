"""Querying a gallery index with a SCOT model: (reference image, modification text) → top-K gallery images.

A composed query is V_c = f_c(f_θ(image), f_φ(text)) ranked by cosine against the gallery's f_θ(images) (paper §3),
asked of the model through `get_composed_features`; an image-only query ranks by f_θ(image), a text-only one by
f_φ(text) (the shared space's zero-shot retrieval).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from modeling_scot.modeling_scot import SAME_IMAGE_COSINE, GalleryStatistics, text_grounding
from scot_core import (
    DEFAULT_MAX_PIXELS,
    encoder_fingerprint,
    eval_mode,
    load_image,
    load_scot_or_backbone,
    try_load_image,
)
from scot_core.encoding import model_device_dtype

from .index import GalleryIndex

logger = logging.getLogger(__name__)

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
    on the text embedding; 1 − λ on the image) for composed queries, else None; `image_anchor_weight` the
    Combiner's image anchor β (`ScotConfig.image_anchor_weight`) when it has one, else None; `grounded`, for a
    composed query of a model with the grounding gate, whether its text picked out one of the reference's look-alikes
    (False: the query was answered by the image alone, λ 0), else None; `familiar_text`, for a composed query of a
    model with the text novelty gate, whether its text is like the training modifications (False: answered by the
    image alone), else None."""

    mode: str
    hits: list[SearchHit] = field(default_factory=list)
    text_weight: float | None = None
    image_anchor_weight: float | None = None
    grounded: bool | None = None
    familiar_text: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def load_query_image(image, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """The reference image as RGB (from a path, encoded bytes, an Image cell or a PIL image), by the package's one
    decoder; `ImageLoadError` (a ValueError) naming the file when it cannot be read or has too many pixels."""
    if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
        raise FileNotFoundError(f"Reference image {str(image)!r} does not exist.")
    return load_image(image, max_pixels=max_pixels)


def _check_text(text: str) -> None:
    """ValueError if `text` is not Unicode the tokenizer can read: a lone surrogate, e.g. what Python makes of
    command-line bytes that are not UTF-8, or what a JSON request may spell as `\\udcff`."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"The text is not valid Unicode: {text[error.start]!r} at position {error.start} is a lone "
                         "surrogate (bytes that are not UTF-8?).") from None


def recorded_model_name(model_name_or_path: str | os.PathLike) -> str:
    """What an index records as its model: the absolute path of a local folder (queries may run elsewhere in the
    tree), else the hub id as given."""
    path = Path(model_name_or_path)
    return str(path.resolve()) if path.is_dir() else str(model_name_or_path)


def load_search_model(model_name_or_path: str | os.PathLike, device: str | None = None):
    """`(model, processor)` for searching: a saved SCOT model (folder or hub id; no remote code), or a backbone
    wrapped with an untrained Combiner, which answers image-only and text-only queries but not composed ones."""
    try:
        model, processor, trained = load_scot_or_backbone(model_name_or_path, device=device)
    except SafetensorError as error:  # a truncated or damaged weights file (a full disk, an interrupted download)
        raise ValueError(f"The weights of the model {str(model_name_or_path)!r} cannot be read ({error}): save or "
                         "download the model again.") from None
    if not trained:
        logger.warning("%s is a backbone, not a trained SCOT model: its Combiner is new and untrained, so composed "
                       "queries are not meaningful (image-only and text-only queries are).", model_name_or_path)
    return model, processor


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
        self.model = model
        self.processor = processor
        self.index = index
        self._dataset = None  # a dataset gallery's images, loaded by `hit_image` when first needed
        self._gallery_statistics = None  # the grounding gate's, computed on the first gated query

    def _grounding_gate_inputs(self, image_embeds: torch.Tensor) -> dict:
        """What `get_composed_features` reads of the gallery for the model's grounding gate: the reference's k
        nearest indexed images (its copies left out) and the gallery's statistics. Empty when the gate is off."""
        k = self.model.config.grounding_gate_neighbours
        if not k or len(self.index) <= k:
            return {}
        if self._gallery_statistics is None:
            self._gallery_statistics = GalleryStatistics.from_embeds(torch.from_numpy(self.index.embeds))
        reference = image_embeds[0].float().cpu().numpy()
        _, positions = self.index.search(image_embeds, k + REFERENCE_COPIES)
        kept = [int(position) for position in positions[0]
                if position >= 0 and float(self.index.embeds[position] @ reference) < SAME_IMAGE_COSINE][:k]
        if len(kept) < k:  # more copies of the reference than REFERENCE_COPIES: no gate for this query
            return {}
        neighbours = torch.from_numpy(self.index.embeds[kept])[None]
        return {"gallery_neighbour_embeds": neighbours.to(image_embeds.device, image_embeds.dtype),
                "gallery_statistics": self._gallery_statistics}

    @classmethod
    def from_pretrained(cls, index_dir, model_name_or_path: str | None = None, device: str | None = None,
                        **search_options) -> GallerySearcher:
        """Load the index in `index_dir` and the model it was built with (or `model_name_or_path`)."""
        index = GalleryIndex.load(index_dir, **search_options)
        model_name_or_path = model_name_or_path or index.metadata.get("model_name_or_path")
        if not model_name_or_path:
            raise ValueError(f"The index in {str(index_dir)!r} does not record its model: pass the model folder.")
        return cls(*load_search_model(model_name_or_path, device), index)

    @torch.inference_mode()
    def query(self, image=None, text: str | None = None, k: int = 10, exclude_reference: bool = True) -> SearchResult:
        """Top-`k` gallery images for a reference image and/or a modification text (at least one of them).

        With `exclude_reference` (default), gallery images identical to the reference (image embeddings at cosine
        ≥ 0.9999) are left out, as CIRR's protocol does: "this, but in blue" is never answered by "this"."""
        if text is not None and not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}.")
        if text is not None and not text.strip():
            raise ValueError("The text is empty: describe the change (or leave the text out for an image-only query).")
        if text is not None:
            _check_text(text)
        if image is None and text is None:
            raise ValueError("Give a reference image, a text, or both.")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        device, dtype = model_device_dtype(self.model)
        image_embeds = text_weight = None
        with eval_mode(self.model):
            if image is not None:
                pixels = self.processor(images=[load_query_image(image)], return_tensors="pt")["pixel_values"]
                # everything the composer reads of the reference (the pseudo-word composer: its token states too)
                image_side = self.model.get_composer_image_features(pixel_values=pixels.to(device=device, dtype=dtype))
                image_embeds = image_side["image_embeds"]
            if text is not None:
                tokens = self.processor(text=[text.strip()], return_tensors="pt").to(device)
                text_inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
                               "token_type_ids": tokens.get("token_type_ids")}
            grounded = familiar = None
            if image is not None and text is not None:
                # the model's one entry point for a composed query: the composer decides what it reads of the text
                gate = self._grounding_gate_inputs(image_embeds)
                query_embeds, weight = self.model.get_composed_features(**image_side, **text_inputs, **gate,
                                                                        return_text_weight=True)
                mode, text_weight = "composed", None if weight is None else float(weight[0, 0])
                if gate:  # said to the user: an answer by the image alone is not the composed one
                    grounding = text_grounding(self.model.get_text_features(**text_inputs),
                                               gate["gallery_neighbour_embeds"], gate["gallery_statistics"],
                                               torch.nn.functional.normalize(image_embeds.float(), dim=-1),
                                               self.model.config.grounding_gate_statistic)
                    grounded = bool(grounding[0] >= self.model.config.grounding_gate_threshold)
                if self.model.config.novelty_gate_neighbours and self.model.config.novelty_gate_bank_size:
                    familiarity = self.model.text_familiarity(self.model.get_text_features(**text_inputs))
                    familiar = bool(familiarity[0] >= self.model.config.novelty_gate_threshold)
            elif image is not None:
                query_embeds, mode = image_embeds, "image"
            else:
                query_embeds, mode = self.model.get_text_features(**text_inputs), "text"
        exclude = exclude_reference and image_embeds is not None
        scores, positions = self.index.search(query_embeds, k + (REFERENCE_COPIES if exclude else 0))
        kept = [(float(score), int(position)) for score, position in zip(scores[0], positions[0]) if position >= 0]
        if exclude:
            reference = image_embeds[0].float().cpu().numpy()
            kept = [(score, position) for score, position in kept
                    if float(self.index.embeds[position] @ reference) < SAME_IMAGE_COSINE]
        hits = [SearchHit(rank=rank, id=self.index.ids[position], score=score, path=self.index.paths[position],
                          row=self.index.rows[position]) for rank, (score, position) in enumerate(kept[:k], start=1)]
        # the anchor is the Combiner's (the one composer with a λ); β = 0 is no anchor
        anchor = self.model.config.image_anchor_weight if text_weight is not None else 0.0
        return SearchResult(mode=mode, hits=hits, text_weight=text_weight, image_anchor_weight=anchor or None,
                            grounded=grounded, familiar_text=familiar)

    def hit_image(self, hit: SearchHit):
        """The decoded image of a hit (RGB PIL): its indexed file (folder galleries; only if it is still the file
        that was indexed, not since replaced by a link elsewhere), or its cell of the indexed dataset (loaded once, on
        first use); None when it cannot be read."""
        if hit.path:
            if Path(hit.path).resolve() != Path(hit.path):
                return None
            return try_load_image(hit.path)
        source = self.index.metadata.get("source", {})
        if hit.row < 0 or "dataset" not in source:
            return None
        if self._dataset is None:
            from datasets import load_dataset

            self._dataset = load_dataset(source["dataset"], split=source["split"])
        return try_load_image(self._dataset[hit.row][source["image_column"]])
