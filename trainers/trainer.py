"""`ScotTrainer`: the transformers `Trainer` with the SCOT loss, negatives gathered across processes.

Batches come in two shapes:
- cached (the default): `image_embeds`, `text_embeds` (modification), `modified_caption_embeds`, `caption_embeds`
  from `trainers.embedding_cache`; only the Combiner runs.
- raw (cache off, needed for unfrozen encoders): `pixel_values`, `input_ids`, `attention_mask` and the tokenised
  modified captions and captions from `RawTripletCollator`; the encoder runs every step, as in CLIP4Cir.

Either way the composed queries come from the model's forward (`ScotModel.get_composed_features` inside it): the
forward, not the method, so that DDP's gradient hooks see the call.
"""

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalPrediction, rotate_checkpoints

from modeling_scot import compute_scot_loss, image_floor_loss
from scot_core import atomic_write_text, try_load_image
from scot_core.encoding import is_missing_image

from .checkpoints import TRAINER_STATE_NAME, publish_checkpoint, staging_folder
from .embedding_cache import (
    SAME_IMAGE_COSINE,
    SKIP_REASONS,
    TripletColumns,
    describe_skipped,
    has_text,
    undecoded_images,
)
from .training_args import ScotTrainingArguments

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each process the sum, over processes, of the gradients for its own rows."""

    @staticmethod
    def forward(ctx, tensor):
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output):
        grad_output = grad_output.contiguous()
        dist.all_reduce(grad_output)  # sum (all backends support it, unlike reduce_scatter)
        start = dist.get_rank() * ctx.rows
        return grad_output[start : start + ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather `tensor` [n, d] from every process (the same n on each), keeping the autograd graph (as open_clip's
    `gather_features` with `gather_with_grad=True`). Each process then computes the loss over the global batch; the
    gather's backward sums the gradients every process sends to this one's rows, and DDP's gradient averaging divides
    by the process count again, so the update equals the single-process update on the same global batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gathered_scot_loss(config, composed_embeds, modified_caption_embeds, caption_embeds=None) -> torch.Tensor:
    """`compute_scot_loss` over the global batch: composed embeddings with gradient, targets and negatives from every
    process (the cached targets carry no gradient, so gathering them with grad costs nothing extra)."""
    return compute_scot_loss(
        config,
        gather_with_grad(composed_embeds),
        gather_with_grad(modified_caption_embeds),
        gather_with_grad(caption_embeds) if caption_embeds is not None else None,
    )


def _skip_reason_before_decoding(image_cell, texts) -> str | None:
    """Why a triplet row cannot be trained on, from the checks that need no decoding (`SKIP_REASONS` order)."""
    if is_missing_image(image_cell):
        return "missing_image"
    if not all(has_text(text) for text in texts):
        return "empty_text"
    return None


def select_trainable_rows(dataset: "Dataset",
                          columns: TripletColumns | None = None) -> tuple["Dataset", dict[str, int]]:
    """For raw training: (`dataset` with its Image column undecoded and without the rows that have a missing image
    or an empty text, the counts of those rows by reason). Unreadable images are found, and skipped, only when
    `RawTripletCollator` decodes them."""
    columns = columns or TripletColumns()
    dataset = undecoded_images(dataset, columns.image)
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    kept, offset = [], 0
    for batch in dataset.select_columns([columns.image, *columns.text_columns]).iter(batch_size=1024):
        for position, cell in enumerate(batch[columns.image]):
            reason = _skip_reason_before_decoding(cell, [batch[name][position] for name in columns.text_columns])
            if reason is None:
                kept.append(offset + position)
            else:
                skipped[reason] += 1
        offset += len(batch[columns.image])
    return (dataset.select(kept) if len(kept) < len(dataset) else dataset), skipped


class RawTripletCollator:
    """Collate raw triplet rows for training without the embedding cache: reference images and modification texts
    for the model, modified captions and captions tokenised for the target / negative embeddings. Images are decoded
    here, by `scot_core.load_image` (give the dataset's Image column `decode=False`, as `build_trainer` does, so that
    a damaged image reaches this collator instead of failing inside the dataset). Rows with a missing image, an empty
    text or an unreadable image are dropped and counted by reason in `self.skipped` (per process, per pass)."""

    def __init__(self, processor, columns: TripletColumns | None = None):
        self.processor = processor
        self.columns = columns or TripletColumns()
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        columns = self.columns
        kept = []
        skipped = dict.fromkeys(SKIP_REASONS, 0)
        for row in rows:
            cell, texts = row.get(columns.image), [row.get(name) for name in columns.text_columns]
            reason = _skip_reason_before_decoding(cell, texts)
            image = try_load_image(cell) if reason is None else None
            if reason is None and image is None:
                reason = "unreadable_image"
            if reason is not None:
                skipped[reason] += 1
                continue
            kept.append((image, *texts))
        for reason, count in skipped.items():
            self.skipped[reason] += count
        if not kept:
            raise ValueError(f"No row of this batch of {len(rows)} can be trained on ({describe_skipped(skipped)}). "
                             "Rows with a missing image or an empty text are dropped before training by "
                             "`select_trainable_rows`; unreadable images are only found when decoded: train with the "
                             "embedding cache, which decodes each image once and skips them, or remove them.")
        images, modifications, modified_captions, captions = map(list, zip(*kept))
        batch = dict(self.processor(images=images, text=modifications, return_tensors="pt"))
        for prefix, texts in (("modified_caption", modified_captions), ("caption", captions)):
            tokens = self.processor(text=texts, return_tensors="pt")
            batch[f"{prefix}_input_ids"] = tokens["input_ids"]
            batch[f"{prefix}_attention_mask"] = tokens["attention_mask"]
        return batch


def composed_to_caption_recall(eval_prediction: EvalPrediction, ks=(1, 5, 10)) -> dict[str, float]:
    """Proxy retrieval metrics during training, in percent, on the held-out slice of the triplets.

    `R@k`: each composed query ranks every distinct training target (the modified caption's embedding, or its
    image-derived replacement). With probes (cached evaluation sets), also target-independent figures, the same for
    every `target`, so that runs trained towards different targets compare: `caption_R@k` ranks the distinct modified
    captions, `image_R@k` the distinct retrieved images (the training image nearest to each modified caption), and
    `probe_R@1` is their mean — the caption says what changed, the retrieved image what a gallery holds; a query that
    only moves into the text side scores well on the first and badly on the second. The image floor: `floor_R@1`
    ranks the distinct images retrieved by caption and reference together (`probe_floor_image_embeds`),
    `floor_reference_R@1` the same with the reference image alone as the query, and `floor_gap` is the first minus
    the second: below 0, the composed query does worse than the image alone would. Duplicates count once."""
    from scot_eval.metrics import recall_at_k

    normalize = torch.nn.functional.normalize
    composed = normalize(torch.as_tensor(eval_prediction.predictions, dtype=torch.float32), dim=-1)

    def recall(labels, queries=composed, left_out=None, ks=ks) -> dict[str, float]:
        """`queries` rank the distinct `labels`; with `left_out`, each row's own image (its reference) is left out"""
        distinct, index = torch.unique(torch.as_tensor(labels, dtype=torch.float32), dim=0, return_inverse=True)
        distinct = normalize(distinct, dim=-1)
        scores = queries @ distinct.T
        if left_out is not None:
            scores = scores.masked_fill(left_out @ distinct.T > SAME_IMAGE_COSINE, float("-inf"))
        return recall_at_k(scores, index, ks=ks)

    labels = eval_prediction.label_ids
    if not isinstance(labels, (tuple, list)):
        return recall(labels)
    targets, captions, images, floor_images, references = labels
    metrics = recall(targets)
    metrics.update({f"caption_{name}": value for name, value in recall(captions).items()})
    metrics.update({f"image_{name}": value for name, value in recall(images).items()})
    metrics["probe_R@1"] = (metrics["caption_R@1"] + metrics["image_R@1"]) / 2
    # as the CIRR protocol does, each row's own reference image is left out of its ranking (for both queries)
    references = normalize(torch.as_tensor(references, dtype=torch.float32), dim=-1)
    for name, queries in (("floor_R@1", composed), ("floor_reference_R@1", references)):
        metrics[name] = recall(floor_images, queries, left_out=references, ks=(1,))["R@1"]
    metrics["floor_gap"] = metrics["floor_R@1"] - metrics["floor_reference_R@1"]
    return metrics


class ScotTrainer(Trainer):
    """A `Trainer` for `ScotModel`: the SCOT (or InfoNCE) loss from `modeling_scot` over the batch gathered from all
    processes, on cached embeddings or raw batches. Evaluation reports the loss and composed -> modified-caption
    recall@1/5/10 on the evaluation set; with `args.cir_benchmark` set, also that CIR benchmark (`scot_eval`).
    Every save writes a model card (README.md, from `hub_cards`) next to the weights, naming `args.dataset_name`.

    `args` is a `ScotTrainingArguments`; plain `TrainingArguments` are converted (with no benchmark, no dataset name),
    as TRL's trainers convert theirs."""

    # The loss is a function of the whole (global) batch, not a sum over items: training_step divides it by the
    # gradient-accumulation steps, so accumulated gradients are the mean over micro-batches.
    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args: TrainingArguments | None = None, *trainer_args, **kwargs):
        if args is None:
            args = ScotTrainingArguments()
        elif not isinstance(args, ScotTrainingArguments):
            settings = {**args.to_dict(), "hub_token": args.hub_token}  # to_dict masks the token
            accepted = {field.name for field in dataclasses.fields(ScotTrainingArguments) if field.init}
            args = ScotTrainingArguments(**{name: value for name, value in settings.items() if name in accepted})
        kwargs.setdefault("compute_metrics", composed_to_caption_recall)
        super().__init__(model, args, *trainer_args, **kwargs)
        self._prepared_benchmark = None
        self._staging_dir: str | None = None  # set while a checkpoint is saved: see `_save_checkpoint`

    @property
    def cir_benchmark_settings(self) -> dict | None:
        """The CIR benchmark evaluated during training, as `hub_cards.evaluations_from_log_history` reads it."""
        if not self.args.cir_benchmark:
            return None
        return {"benchmark": self.args.cir_benchmark, "data_dir": self.args.cir_data_dir,
                "split": self.args.cir_split, "method": "scot"}

    def _embed_batch(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Composed embeddings (with gradient) and the target / negative caption embeddings of one batch."""
        if "pixel_values" in inputs:
            scot_model = self.accelerator.unwrap_model(model)
            composed = model(
                pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                attention_mask=inputs.get("attention_mask"),
            ).composed_embeds
            with torch.set_grad_enabled(torch.is_grad_enabled() and not scot_model.config.freeze_encoder):
                modified = scot_model.get_text_features(
                    input_ids=inputs["modified_caption_input_ids"],
                    attention_mask=inputs["modified_caption_attention_mask"],
                )
                captions = scot_model.get_text_features(
                    input_ids=inputs["caption_input_ids"], attention_mask=inputs["caption_attention_mask"]
                )
            return composed, modified, captions
        composed = model(image_embeds=inputs["image_embeds"], text_embeds=inputs["text_embeds"]).composed_embeds
        return composed, inputs["modified_caption_embeds"], inputs.get("caption_embeds")

    def _mixed_loss(self, loss_fn, config, composed, modified, captions, inputs) -> torch.Tensor:
        """The loss towards the target, mixed with the loss towards the retrieved image when
        `args.retrieved_image_weight` > 0 (target mixing, see `ScotTrainingArguments`), plus the image floor when
        `args.image_floor_weight` > 0 (on the local batch: the floor compares each row with its own reference)."""
        weight = self.args.retrieved_image_weight
        loss = loss_fn(config, composed, modified, captions)
        if weight == 0:
            return loss
        if "retrieved_image_embeds" not in inputs:
            raise ValueError("retrieved_image_weight > 0 needs retrieved-image targets: train on the embedding cache.")
        loss = (1 - weight) * loss + weight * loss_fn(config, composed, inputs["retrieved_image_embeds"], captions)
        if self.args.image_floor_weight > 0:
            loss = loss + self.args.image_floor_weight * image_floor_loss(
                composed, inputs["image_embeds"], inputs["retrieved_image_embeds"], self.args.image_floor_temperature)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        composed, modified, captions = self._embed_batch(model, inputs)
        config = self.accelerator.unwrap_model(model).config
        loss = self._mixed_loss(gathered_scot_loss, config, composed, modified, captions, inputs)
        return (loss, {"composed_embeds": composed}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            composed, modified, captions = self._embed_batch(model, inputs)
            # per-process loss on the local batch: evaluation does not need the global negatives
            loss = self._mixed_loss(compute_scot_loss, self.accelerator.unwrap_model(model).config, composed,
                                    modified, captions, inputs)
        if prediction_loss_only:
            return loss.detach(), None, None
        # the targets (and the probes) travel as "labels", so Trainer gathers them and calls compute_metrics
        labels = modified.detach()
        if "probe_image_embeds" in inputs:
            labels = (labels, inputs["probe_caption_embeds"].detach(), inputs["probe_image_embeds"].detach(),
                      inputs["probe_floor_image_embeds"].detach(), inputs["image_embeds"].detach())
        return loss.detach(), composed.detach(), labels

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        # Trainer pickles its arguments into training_args.bin; keep them as JSON instead (nothing here is unpickled)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            Path(output_dir, "training_args.bin").unlink(missing_ok=True)
            atomic_write_text(Path(output_dir, "training_args.json"), self.args.to_json_string())
            self.write_model_card(output_dir)

    # -- checkpoints: complete or absent (trainers.checkpoints) ------------------------------------------------------

    def _get_output_dir(self, trial) -> str:
        # While `_save_checkpoint` runs, Trainer's run folder is the staging folder, so that Trainer's own save (every
        # file, on every process) lands in `incomplete-checkpoint-N/checkpoint-N` instead of `checkpoint-N`.
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, staged: written under `incomplete-checkpoint-N/`, then, once every process has
        written its part, synced and renamed to `checkpoint-N`. A save that fails (a full disk) or is killed leaves
        no `checkpoint-N`, only the staging folder, which resume skips with a warning and the next save of the same
        step replaces. The best-model record, the rotation of old checkpoints and the hub push then use the
        published folder."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = staging_folder(run_dir, self.state.global_step), run_dir / name
        staged = staging / name
        with self.args.main_process_first(local=False, desc="clearing an interrupted save of this step"):
            if self.args.local_process_index == 0 and staging.exists():  # one per node; on a shared disk, the first
                shutil.rmtree(staging)  # a leftover of this trainer's own interrupted save of this step (its name)
        self._staging_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        if self.args.should_save and not staged.is_dir():
            raise RuntimeError(f"Trainer._save_checkpoint did not write into {staged} (_get_output_dir): this "
                               "transformers version saves checkpoints differently; the checkpoint is not staged.")
        if self.state.best_model_checkpoint is not None and Path(self.state.best_model_checkpoint) == staged:
            # Trainer recorded where it wrote the best model: the published name is meant
            self.state.best_model_checkpoint = str(final)
            if self.args.should_save:
                self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG state, shards)
        with self.args.main_process_first(local=False, desc="publishing the checkpoint"):
            if self.args.local_process_index == 0 and staged.is_dir():  # on a shared disk, only the first publishes
                publish_checkpoint(staged, final)
        if self.args.push_to_hub:
            self._push_from_checkpoint(str(final))
        if self.args.should_save:  # Trainer rotated the staging folder, which holds one checkpoint: rotate here
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._staging_dir is not None:
            return  # pushed once published: the upload runs in the background and must not read a folder renamed
        super()._push_from_checkpoint(checkpoint_folder)

    def write_model_card(self, output_dir: str | None = None) -> bool:
        """`create_model_card` that warns instead of raising: a card problem must never cost a checkpoint or the end
        of a run. True when the card was written."""
        try:
            self.create_model_card(output_dir=output_dir)
        except Exception as error:  # noqa: BLE001 - whatever went wrong, the weights are saved already
            logger.warning("Could not write the model card in %s: %s", output_dir or self.args.output_dir, error)
            return False
        return True

    def create_model_card(self, language=None, license: str | None = None, tags: str | list[str] | None = None,
                          model_name: str | None = None, finetuned_from: str | None = None, tasks=None,
                          dataset_tags=None, dataset: str | list[str] | None = None, dataset_args=None,
                          output_dir: str | None = None) -> None:
        """Write the SCOT model card (`hub_cards.render_model_card`) to `output_dir/README.md` (default
        `args.output_dir`) from what the trainer knows: the config, the training arguments and log, the data's size,
        the last held-out metrics, and the CIR benchmark results logged at the current step (the only ones that
        describe these weights) as a model-index. `save_model` and `push_to_hub` call it. The signature is
        `Trainer.create_model_card`'s; `language`, `tasks`, `dataset_tags` and `dataset_args` are not used."""
        if not self.is_world_process_zero():
            return
        from hub_cards import evaluations_from_log_history, render_model_card, training_summary

        output_dir = Path(output_dir or self.args.output_dir)
        step = self.state.global_step
        if self.args.load_best_model_at_end and self.state.best_global_step not in (None, step):
            # the weights saved may be an earlier (best) checkpoint's: no logged evaluation surely describes them,
            # so the card claims none
            evaluations = []
        else:
            evaluations = evaluations_from_log_history(self.state.log_history, self.cir_benchmark_settings, step=step)
        if isinstance(dataset, (list, tuple)):
            dataset = dataset[0] if dataset else None
        default_name = (self.args.hub_model_id or "").split("/")[-1] or Path(self.args.output_dir).resolve().name
        card = render_model_card(
            self.accelerator.unwrap_model(self.model).config,
            model_name=model_name or default_name,
            repo_id=self.args.hub_model_id or model_name or default_name,
            evaluations=evaluations,
            training=training_summary(self.args.to_dict(), self.state.log_history, global_step=step,
                                      epoch=self.state.epoch, world_size=self.args.world_size),
            dataset={"name": dataset or self.args.dataset_name,
                     "train_rows": _length(self.train_dataset), "eval_rows": _length(self.eval_dataset)},
            license=license,
            base_model=finetuned_from,
            tags=[tags] if isinstance(tags, str) else tags,
        )
        card.save(output_dir / "README.md")

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.args.cir_benchmark:
            from scot_eval.evaluation import evaluate_prepared, prepare_benchmark

            scot_model = self.accelerator.unwrap_model(self.model)
            if self._prepared_benchmark is None:
                # the encoder is frozen: gallery, references and query texts are encoded once per run
                self._prepared_benchmark = prepare_benchmark(scot_model, self.processing_class,
                                                             self.args.cir_benchmark, self.args.cir_data_dir,
                                                             self.args.cir_split)
            result = evaluate_prepared(scot_model, self._prepared_benchmark, method="scot",
                                       processor=self.processing_class)
            cir_metrics = {f"{metric_key_prefix}_{self.args.cir_benchmark}_{key}": float(value)
                           for key, value in result.metrics.items()}
            self.log(cir_metrics)
            metrics.update(cir_metrics)
        return metrics


def _length(dataset) -> int | None:
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # an IterableDataset has no length
        return None
