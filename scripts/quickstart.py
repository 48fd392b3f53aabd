"""Walk through the SCOT model API end to end, offline, on a tiny *random* CLIP encoder built here.

What it does: builds and saves a small random `CLIPModel` (standing in for a pretrained checkpoint, none of which can
be downloaded here), wraps it with `ScotModel.from_backbone`, composes (image, text) queries, saves the SCOT model
and processor, reloads them with `AutoModel` / `AutoProcessor`, checks the outputs are identical, and ranks a small
gallery of coloured squares. The encoder and the Combiner are untrained, so the ranking shows the API, not retrieval
quality: the trained demo pipeline (`make demo` once issue 6 lands) replaces this.

    python scripts/quickstart.py --output_dir outputs/quickstart
"""

import argparse
import os
import string
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModel, AutoProcessor, CLIPConfig, CLIPModel, CLIPTokenizer  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

import modeling_scot  # noqa: E402, F401  (registers the Auto classes)
from modeling_scot import ScotModel, ScotProcessor  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30)}


def build_random_clip(folder: Path, image_size: int = 64) -> Path:
    """A small CLIP (2-layer towers, 64 px, 64-d joint space) with random weights and a character-level vocabulary."""
    alphabet = list(string.ascii_lowercase + string.digits + " .,")
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=16),
        projection_dim=64,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                          crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/quickstart", type=Path)
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)

    backbone = build_random_clip(args.output_dir / "random-clip")
    print(f"1. random CLIP encoder saved to {backbone}")

    model = ScotModel.from_backbone(backbone)
    processor = ScotProcessor.from_backbone(backbone)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    print(f"2. ScotModel.from_backbone: embed_dim {model.config.embed_dim}, Combiner {trainable:,} trainable "
          f"parameters, encoder {frozen:,} frozen")

    references = [Image.new("RGB", (80, 80), COLOURS["red"]), Image.new("RGB", (80, 80), COLOURS["green"])]
    texts = ["make it blue", "make it yellow"]
    inputs = processor(images=references, text=texts, return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs)
    print(f"3. composed {tuple(output.composed_embeds.shape)} queries; Combiner text weight λ = "
          f"{[round(w, 3) for w in output.text_weight.squeeze(-1).tolist()]}")

    scot_folder = args.output_dir / "scot-random-clip"
    model.save_pretrained(scot_folder)
    processor.save_pretrained(scot_folder)
    reloaded = AutoModel.from_pretrained(scot_folder)
    reloaded_processor = AutoProcessor.from_pretrained(scot_folder)
    with torch.no_grad():
        again = reloaded(**reloaded_processor(images=references, text=texts, return_tensors="pt"))
    difference = (again.composed_embeds - output.composed_embeds).abs().max().item()
    print(f"4. saved to {scot_folder} ({', '.join(sorted(p.name for p in scot_folder.iterdir()))}); "
          f"reloaded as {type(reloaded).__name__}, max output difference {difference:.1e}")
    if difference > 1e-6:
        print("   reloaded outputs differ: this is a bug", file=sys.stderr)
        return 1

    gallery_names = list(COLOURS)
    gallery = [Image.new("RGB", (80, 80), rgb) for rgb in COLOURS.values()]
    with torch.no_grad():
        gallery_embeds = model.get_image_features(**processor(images=gallery, return_tensors="pt"))
    scores = output.composed_embeds @ gallery_embeds.T
    print("5. ranking a 4-image gallery (random weights: the order is arbitrary, not a result):")
    for text, row in zip(texts, scores):
        ranked = [f"{gallery_names[i]} {row[i]:.3f}" for i in row.argsort(descending=True).tolist()]
        print(f"   {text!r}: {', '.join(ranked)}")
    print(f"done: everything is under {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
