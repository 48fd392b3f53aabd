"""The demo's report: the metrics table in markdown and a retrieval grid picture.

The grid shows, for a few benchmark queries, the reference image and the modification text, then the top-5 gallery
images for SCOT (reference removed, as in the CIRR protocol), the right answer framed in green.
"""

import json
from pathlib import Path

import torch
from PIL import Image

METHOD_LABELS = {
    "image": "Image only (reference image embedding)",
    "text": "Text only (modification text embedding)",
    "sum": "Image + text (normalised sum)",
    "scot": "SCOT (Combiner, SCOT loss)",
    "scot_infonce": "Combiner trained with InfoNCE instead",
}


def metrics_table(metrics: dict[str, dict[str, float]], keys=None) -> str:
    """Markdown table: one row per method, one column per metric."""
    keys = keys or [key for key in next(iter(metrics.values()))]
    lines = ["| method | " + " | ".join(keys) + " |", "| --- | " + " | ".join("---:" for _ in keys) + " |"]
    for method, values in metrics.items():
        label = METHOD_LABELS.get(method, method)
        lines.append(f"| {label} | " + " | ".join(f"{values[key]:.1f}" for key in keys) + " |")
    return "\n".join(lines)


@torch.no_grad()
def retrieval_grid(model, processor, benchmark_dir, output_path, num_queries: int = 6, top_k: int = 5) -> Path:
    """Draw `num_queries` benchmark queries (spread over the stamps) with SCOT's top-k; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmark_dir = Path(benchmark_dir)
    split = json.loads((benchmark_dir / "cirr/image_splits/split.rc2.val.json").read_text())
    queries = json.loads((benchmark_dir / "cirr/captions/cap.rc2.val.json").read_text())
    names = list(split)
    images = {name: Image.open(benchmark_dir / split[name]).convert("RGB") for name in names}
    model.eval()
    gallery = torch.cat([model.get_image_features(**processor(images=[images[n] for n in names[i : i + 64]],
                                                                return_tensors="pt"))
                         for i in range(0, len(names), 64)])
    chosen = queries[:: max(1, len(queries) // num_queries)][:num_queries]
    reference_embeds = gallery[[names.index(q["reference"]) for q in chosen]]
    text_embeds = model.get_text_features(**processor(text=[q["caption"] for q in chosen], return_tensors="pt"))
    scores = model.compose(reference_embeds, text_embeds) @ gallery.T
    for row, query in enumerate(chosen):
        scores[row, names.index(query["reference"])] = float("-inf")  # CIRR: the reference is not an answer

    figure, axes = plt.subplots(len(chosen), top_k + 1, figsize=(1.9 * (top_k + 1), 2.1 * len(chosen)))
    for row, query in enumerate(chosen):
        axes[row, 0].imshow(images[query["reference"]])
        axes[row, 0].set_title(f"query: “{query['caption']}”", fontsize=8)
        for column, index in enumerate(scores[row].topk(top_k).indices.tolist(), start=1):
            name = names[index]
            axes[row, column].imshow(images[name])
            hit = name == query["target_hard"]
            axes[row, column].set_title(f"#{column} {scores[row, index]:.2f}" + (" ✓" if hit else ""), fontsize=8,
                                        color="green" if hit else "black")
            if hit:
                for spine in axes[row, column].spines.values():
                    spine.set_edgecolor("green")
                    spine.set_linewidth(4)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle("SCOT on the demo benchmark: reference + text → top 5 (right answer in green)", fontsize=10)
    figure.tight_layout()
    output_path = Path(output_path)
    figure.savefig(output_path, dpi=110)
    plt.close(figure)
    return output_path
