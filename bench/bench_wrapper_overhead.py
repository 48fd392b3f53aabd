"""Overhead of ScotModel.get_image_features over the encoder's own image call (goal: ratio <= 1.05).

Same weights, same inputs, same process; the two calls are interleaved and the median of each is compared, so
machine noise hits both alike. Encoders have random weights (speed does not depend on their values):
- CLIP ViT-B/32 at 224 px (the default `CLIPConfig`): raw = `CLIPModel.get_image_features(...).pooler_output`;
- BLIP-2 retrieval, a reduced ViT (6 layers, 768 wide) + Q-Former (the real 12 layers, 32 queries): raw =
  `Blip2VisionModelWithProjection(...).image_embeds` sharing the same weights (SCOT adds the query mean pooling).

    python bench/bench_wrapper_overhead.py [--batch_size 8] [--repeats 15]
"""

import argparse
import statistics
import time

import torch
from transformers import Blip2Config, Blip2ForImageTextRetrieval, Blip2VisionModelWithProjection, CLIPConfig, CLIPModel

from modeling_scot import ScotModel


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(name, raw_call, scot_call, repeats):
    with torch.inference_mode():
        raw_call(), scot_call()  # warm-up
        raw_times, scot_times = [], []
        for _ in range(repeats):  # interleave so that drifts in machine load hit both
            raw_times.append(_median_seconds(raw_call, 1))
            scot_times.append(_median_seconds(scot_call, 1))
    raw, scot = statistics.median(raw_times), statistics.median(scot_times)
    print(f"{name:<34} raw {raw * 1e3:8.1f} ms   scot {scot * 1e3:8.1f} ms   ratio scot/raw {scot / raw:.3f}")
    return scot / raw


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"median of {args.repeats} interleaved runs")

    clip = CLIPModel(CLIPConfig()).eval()
    scot = ScotModel.from_backbone(clip)
    pixels = torch.randn(args.batch_size, 3, 224, 224)
    compare("CLIP ViT-B/32 get_image_features",
            lambda: clip.get_image_features(pixel_values=pixels).pooler_output,
            lambda: scot.get_image_features(pixel_values=pixels), args.repeats)

    blip2_config = Blip2Config(vision_config=dict(num_hidden_layers=6, hidden_size=768, intermediate_size=3072,
                                                  num_attention_heads=12, image_size=224, patch_size=14),
                               qformer_config=dict(use_qformer_text_input=True))
    scot_blip2 = ScotModel.from_backbone(Blip2ForImageTextRetrieval(blip2_config).eval())
    raw_blip2 = Blip2VisionModelWithProjection(blip2_config).eval()
    missing, unexpected = raw_blip2.load_state_dict(scot_blip2.encoder.state_dict(), strict=False)
    assert not missing, missing  # every weight of the raw image path is the one SCOT uses
    pixels = torch.randn(args.batch_size, 3, 224, 224)
    compare("BLIP-2 (6-layer ViT) image features",
            lambda: raw_blip2(pixel_values=pixels).image_embeds,
            lambda: scot_blip2.get_image_features(pixel_values=pixels), args.repeats)


if __name__ == "__main__":
    main()
