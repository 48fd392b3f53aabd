"""Combiner training on cached embeddings vs re-encoding every step (the CLIP4Cir way), same data, same encoder.

Prints two ratios, each against a baseline measured in the same run:
- time per epoch, re-encoding / cached (goal >= 100x);
- the whole cached run (building the cache + all epochs) / one encoder pass over the data (goal <= 1.1x).

The encoder is a random-weight CLIP ViT-B/32 (or B/16) at 224 px (the default `CLIPConfig`; speed does not depend on
weight values) with the real CLIP BPE tokenizer (its vocabulary ships in the `open-clip-torch` wheel); the data are
`--rows` triplets of synthetic images, every image distinct and four texts per row. Both trainings use `ScotTrainer`
with the same batch size and optimiser.

    python bench/bench_training.py [--rows 256] [--batch_size 64] [--epochs 10]
"""

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageDraw
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from modeling_scot import ScotModel, ScotProcessor
from trainers.embedding_cache import EmbeddingCache
from trainers.trainer import RawTripletCollator, ScotTrainer, select_trainable_rows
from trainers.training_args import ScotTrainingArguments

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
SHAPES = ["square", "circle", "bar", "ring"]


def synthetic_triplets(rows: int, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    records = []
    for index in range(rows):
        colour, new_colour = rng.sample(COLOURS, 2)
        shape = rng.choice(SHAPES)
        image = Image.new("RGB", (224, 224), tuple(rng.randrange(256) for _ in range(3)))
        ImageDraw.Draw(image).ellipse((rng.randrange(80), rng.randrange(80), 150 + rng.randrange(70),
                                       150 + rng.randrange(70)), fill=tuple(rng.randrange(256) for _ in range(3)))
        records.append({"image": image, "caption": f"photo {index}: a {colour} {shape}",
                        "modification": f"make the {shape} {new_colour} ({index})",
                        "modified_caption": f"photo {index}: a {new_colour} {shape}"})
    features = Features({"image": ImageFeature(), "caption": Value("string"), "modification": Value("string"),
                         "modified_caption": Value("string")})
    return Dataset.from_list(records, features=features)


def clip_bpe_tokenizer() -> CLIPTokenizer:
    """The real CLIP tokenizer, built from the BPE merges file that ships inside the `open-clip-torch` wheel
    (`pip install --no-deps open-clip-torch`), so that texts have their real token counts."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise SystemExit("This bench needs CLIP's BPE vocabulary: pip install --no-deps open-clip-torch")
    bpe_file = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe_file, "rt", encoding="utf-8").read().split("\n")[1 : 49152 - 256 - 2 + 1]
    # byte-level alphabet in CLIP's (and GPT-2's) order: printable bytes as themselves, then the others from 256 up
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    alphabet = [chr(byte) for byte in printable] + [chr(256 + n) for n in range(len(others))]
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split()) for m in merges])


def clip_model_and_processor(patch_size: int):
    tokenizer = clip_bpe_tokenizer()
    config = CLIPConfig(vision_config=dict(patch_size=patch_size))
    processor = ScotProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer)
    return ScotModel.from_backbone(CLIPModel(config).eval()), processor


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the cached run")
    parser.add_argument("--patch_size", type=int, default=32, help="ViT patch: 32 = CLIP ViT-B/32, 16 = ViT-B/16")
    args = parser.parse_args()
    torch.manual_seed(0)
    workdir = Path(tempfile.mkdtemp(prefix="scot-bench-"))
    dataset = synthetic_triplets(args.rows)
    model, processor = clip_model_and_processor(args.patch_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CLIP ViT-B/{args.patch_size} 224 px "
          "(random weights, real CLIP tokenizer), "
          f"{args.rows} triplet rows, batch {args.batch_size}")

    # Baseline 1: one encoder pass over the data (each row's image and its three texts, batched, no training).
    def one_pass():
        with torch.no_grad():
            for start in range(0, len(dataset), args.batch_size):
                batch = dataset[start : start + args.batch_size]
                model.get_image_features(**processor(images=batch["image"], return_tensors="pt"))
                for column in ("modification", "modified_caption", "caption"):
                    model.get_text_features(**processor(text=batch[column], return_tensors="pt"))

    one_pass_seconds, _ = timed(one_pass)

    def training_args(name, epochs):
        return ScotTrainingArguments(output_dir=str(workdir / name), per_device_train_batch_size=args.batch_size,
                                     num_train_epochs=epochs, save_strategy="no", logging_strategy="no",
                                     disable_tqdm=True, dataloader_pin_memory=False, seed=0)

    # Baseline 2: one epoch re-encoding images and texts every step (the raw, cache-off path).
    # the rows as train.py gives them to the collator: Image column undecoded, decoded by scot_core.load_image
    raw_rows, _ = select_trainable_rows(dataset)
    raw_trainer = ScotTrainer(model=model, args=training_args("raw", 1), train_dataset=raw_rows,
                              data_collator=RawTripletCollator(processor), processing_class=processor)
    raw_epoch_seconds, _ = timed(raw_trainer.train)

    # Cached: build the cache once, then train every epoch on vectors.
    cache_seconds, cache = timed(lambda: EmbeddingCache.build_or_load(
        model, processor, dataset, cache_dir=workdir / "cache", batch_size=args.batch_size, show_progress=False))
    cached_trainer = ScotTrainer(model=model, args=training_args("cached", args.epochs),
                                 train_dataset=cache.as_dataset(), processing_class=processor)
    cached_train_seconds, _ = timed(cached_trainer.train)
    cached_epoch_seconds = cached_train_seconds / args.epochs
    whole_run_seconds = cache_seconds + cached_train_seconds

    print(f"one encoder pass over the data        {one_pass_seconds:8.2f} s")
    print(f"epoch re-encoding every step          {raw_epoch_seconds:8.2f} s")
    print(f"epoch on cached embeddings            {cached_epoch_seconds:8.4f} s")
    print(f"building the cache                    {cache_seconds:8.2f} s")
    print(f"whole cached run ({args.epochs} epochs)            {whole_run_seconds:8.2f} s")
    print(f"ratio epoch re-encoding / cached      {raw_epoch_seconds / cached_epoch_seconds:8.1f} x   (goal >= 100)")
    print(f"ratio whole run / one encoder pass    {whole_run_seconds / one_pass_seconds:8.3f} x   (goal <= 1.1)")


if __name__ == "__main__":
    main()
