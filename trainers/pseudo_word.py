"""Map-to-Compose's two training stages (issue 15) for a pseudo-word model (`ScotConfig.composer="pseudo_word"`).

`trainers/train.py --composer_stage mapping|composing` selects them; everything else (arguments, resuming, the
embedding cache, saving, the card) is the same script as the Combiner's.

- **mapping** (stage 1): only the mapping network trains, on image-caption pairs: the (image, caption) columns of any
  dataset `load_dataset` reads (a triplet dataset's other columns are ignored; its repeated pairs count once). Loss:
  `compute_pseudo_word_mapping_loss` (contrastive prompt <-> image + soft alignment with the captions), over the
  batch gathered from every process.
- **composing** (stage 2): LoRA adapters in the text encoder train (`add_composer_adapters`; the mapping network is
  frozen), on triplets: the prompt "a photo of $ that {modification}" with the reference's pseudo words, towards the
  frozen modified-caption embedding (`target text`, or `retrieved_image`, the training image nearest to it), the
  original caption as hard negative (`compute_scot_loss` dispatches to `pseudo_word_composing_loss`), gathered
  across processes as for the Combiner. `finish_training` merges the adapters before the final save, so the saved
  model loads without peft; checkpoints keep them active, so a run resumes from them.

Both stages read the image side from the embedding cache (`image_embeds` + `image_token_embeds`, the latter fp16) and
the caption / modified-caption targets as cached frozen text embeddings; the modification goes to the model as
tokens (stage 2 runs the text encoder, which it tunes).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from modeling_scot import compute_pseudo_word_mapping_loss

from .embedding_cache import CachedTripletDataset, EmbeddingCache, TripletColumns
from .trainer import ScotTrainer, gather_with_grad
from .training_args import COMPOSER_STAGES

__all__ = ["COMPOSER_STAGES", "CachedComposingDataset", "ImageCaptionPairs", "ModificationCollator",
           "PseudoWordComposingTrainer", "PseudoWordMappingTrainer", "gathered_mapping_loss", "mapping_columns"]


def mapping_columns(columns: TripletColumns) -> TripletColumns:
    """Stage 1 reads only (image, caption): the three text columns all name the caption column, so the embedding
    cache encodes each caption once and any image-caption dataset (no modification columns) is accepted."""
    return TripletColumns(image=columns.image, caption=columns.caption, modification=columns.caption,
                          modified_caption=columns.caption)


def _image_side(cache: EmbeddingCache, image_rows: torch.Tensor, position: int) -> dict[str, torch.Tensor]:
    image = image_rows[position]
    item = {"image_embeds": cache.image_embeds[image]}
    for name, values in cache.image_features.items():  # fp16 in the cache; the mapper reads float32
        item[name] = values[image].float()
    return item


class ImageCaptionPairs(torch.utils.data.Dataset):
    """Stage 1's rows: the distinct (image, caption) pairs of an `EmbeddingCache` (built with `mapping_columns`),
    as `image_embeds`, the composer's other image features (`image_token_embeds`) and `caption_embeds`."""

    def __init__(self, cache: EmbeddingCache):
        if not cache.image_features:
            raise ValueError(f"The embedding cache {cache.folder} holds no image token features: it was built for a "
                             "Combiner, not a pseudo-word model.")
        pairs = torch.stack([cache.row_indices["image"], cache.row_indices["caption"]], dim=1)
        pairs = torch.unique(pairs, dim=0)  # a triplet dataset repeats each (image, caption) once per triplet
        self.cache, self.images, self.captions = cache, pairs[:, 0], pairs[:, 1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = _image_side(self.cache, self.images, index)
        item["caption_embeds"] = self.cache.text_embeds[self.captions[index]]
        return item


class CachedComposingDataset(torch.utils.data.Dataset):
    """Stage 2's rows: a `CachedTripletDataset` (targets as its `target` says, probes when asked) without the cached
    modification embedding, plus the composer's other image features and the modification text itself, which
    `ModificationCollator` tokenises (the composer reads the tokens)."""

    def __init__(self, triplets: CachedTripletDataset, modifications: list[str]):
        if not triplets.cache.image_features:
            raise ValueError(f"The embedding cache {triplets.cache.folder} holds no image token features: it was "
                             "built for a Combiner, not a pseudo-word model.")
        if len(modifications) != len(triplets):
            raise ValueError(f"CachedComposingDataset got {len(modifications)} modifications for {len(triplets)} "
                             "cached rows.")
        self.triplets, self.modifications = triplets, modifications

    @classmethod
    def from_cache(cls, cache: EmbeddingCache, rows, modification_column: str, **dataset_options):
        """The cache's kept rows with their modification from `rows` (the dataset the cache was built from)."""
        texts = rows.select_columns([modification_column])[modification_column]
        modifications = [texts[row].strip() for row in cache.row_indices["dataset_row"].tolist()]
        return cls(cache.as_dataset(**dataset_options), modifications)

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int):
        item = self.triplets[index]
        del item["text_embeds"]  # the composer embeds the modification itself, with the adapters being trained
        item.update(_image_side(self.triplets.cache, self.triplets.cache.row_indices["image"], index))
        item["modification"] = self.modifications[index]
        return item


class ModificationCollator:
    """Stack the cached tensors of stage-2 rows and tokenise their modification texts as `ScotProcessor` does
    (`input_ids`, `attention_mask`)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {name: torch.stack([row[name] for row in rows]) for name in rows[0] if name != "modification"}
        tokens = self.processor(text=[row["modification"] for row in rows], return_tensors="pt")
        batch["input_ids"], batch["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
        return batch


def gathered_mapping_loss(config, prompt_embeds, image_embeds, caption_embeds) -> torch.Tensor:
    """Stage 1's loss over the global batch: prompts with gradient, images and captions from every process."""
    return compute_pseudo_word_mapping_loss(config, gather_with_grad(prompt_embeds), gather_with_grad(image_embeds),
                                            gather_with_grad(caption_embeds))


@contextmanager
def _forward_replaced(module: torch.nn.Module, method: Callable) -> Iterator[None]:
    """DDP synchronises gradients only for what runs through its `forward`; stage 1 needs `get_image_prompt_features`
    instead of the model's forward, so that method stands in as `module.forward` for one call (a forward accelerate
    installed on the instance, for mixed precision, is put back afterwards)."""
    installed = module.__dict__.get("forward")
    module.forward = method
    try:
        yield
    finally:
        if installed is None:
            del module.forward
        else:
            module.forward = installed


class PseudoWordMappingTrainer(ScotTrainer):
    """Stage 1: trains the mapping network on cached (image, caption) pairs (`ImageCaptionPairs`). Evaluation
    reports the loss and prompt -> image recall@1/5/10 over the distinct images of the held-out pairs."""

    def _prompt_features(self, model, inputs: dict) -> torch.Tensor:
        scot_model = self.accelerator.unwrap_model(model)
        image_side = {name: inputs[name] for name in scot_model.composer_image_inputs}
        if model is scot_model:
            return scot_model.get_image_prompt_features(**image_side)
        with _forward_replaced(scot_model, scot_model.get_image_prompt_features):
            return model(**image_side)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        prompts = self._prompt_features(model, inputs)
        config = self.accelerator.unwrap_model(model).config
        loss = gathered_mapping_loss(config, prompts, inputs["image_embeds"], inputs["caption_embeds"])
        return (loss, {"prompt_embeds": prompts}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            prompts = self._prompt_features(model, inputs)
            # per-process loss on the local batch, as ScotTrainer's evaluation
            loss = compute_pseudo_word_mapping_loss(self.accelerator.unwrap_model(model).config, prompts,
                                                    inputs["image_embeds"], inputs["caption_embeds"])
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), prompts.detach(), inputs["image_embeds"].detach()


class PseudoWordComposingTrainer(ScotTrainer):
    """Stage 2: trains the LoRA adapters on cached triplets (`CachedComposingDataset` + `ModificationCollator`); the
    loss, target mixing, evaluation and checkpoints are `ScotTrainer`'s."""

    def _embed_batch(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        scot_model = self.accelerator.unwrap_model(model)
        composed = model(**{name: inputs[name] for name in scot_model.composer_image_inputs},
                         input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).composed_embeds
        return composed, inputs["modified_caption_embeds"], inputs.get("caption_embeds")
