"""The demo's report: the one naming of its methods, the metrics table in markdown and a retrieval grid picture.

The grid shows, for a few benchmark queries, the reference image and the modification text, then the top-5 gallery
images for SCOT (reference removed, as in the CIRR protocol), the right answer framed in green.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scot_core import encode_images, eval_mode, load_image
from scot_eval.benchmarks import RetrievalTask

# The methods the demo measures: the key in metrics.json -> the name the report, the console and the model card show.
# `scot_infonce` is SCOT's own method on the other model, the Combiner trained with InfoNCE.
METHOD_NAMES = {
    "image": "Image only (reference image embedding)",
    "text": "Text only (modification text embedding)",
    "sum": "Image + text (normalised sum)",
    "scot": "SCOT (Combiner, SCOT loss, text + image targets retrieved by caption and reference, image anchor, "
            "image floor, grounding gate where validation selects it)",
    "scot_ungated": "Combiner, the same weights without the grounding gate",
    "scot_novelty_gate": "Combiner, the default's weights with the text novelty gate (not adopted by its rule)",
    "scot_no_floor": "Combiner, SCOT loss, text + image targets retrieved by caption and reference, image anchor, "
                     "no floor (the previous default)",
    "scot_caption_retrieval": "Combiner, SCOT loss, text + image targets retrieved by caption alone, image anchor",
    "scot_text_only": "Combiner, SCOT loss on text targets only (the paper's Eq. 4-9)",
    "scot_infonce": "Combiner trained with InfoNCE instead",
}
BASELINES = ("image", "text", "sum")


def kinds_table(metrics: dict[str, dict[str, dict[str, float]]], key: str = "R@1") -> str:
    """Markdown table of one metric: a row per method, a column per kind of change, and the average over kinds."""
    kinds = list(metrics)
    methods = list(metrics[kinds[0]])
    lines = ["| method | " + " | ".join(kinds) + " | average |", "| --- |" + " ---: |" * (len(kinds) + 1)]
    for method in methods:
        values = [metrics[kind][method][key] for kind in kinds]
        cells = " | ".join(f"{value:.1f}" for value in values)
        lines.append(f"| {METHOD_NAMES.get(method, method)} | {cells} | {sum(values) / len(values):.1f} |")
    return "\n".join(lines)


def verdicts(metrics: dict[str, dict[str, dict[str, float]]], method: str = "scot", key: str = "R@1") -> list[str]:
    """One line per kind and for the average: does `method` beat every baseline at `key`, with the numbers."""
    lines = []
    averages = {name: sum(metrics[kind][name][key] for kind in metrics) / len(metrics)
                for name in metrics[next(iter(metrics))]}
    for kind, values in [*metrics.items(), ("average", averages)]:
        values = {name: value[key] if isinstance(value, dict) else value for name, value in values.items()}
        best = max(BASELINES, key=lambda name: values[name])
        beats = values[method] > values[best]
        lines.append(f"{kind}: SCOT {'beats' if beats else 'does NOT beat'} every baseline at {key} "
                     f"({values[method]:.1f} vs {METHOD_NAMES[best].split(' (')[0].lower()} {values[best]:.1f})")
    return lines


def metrics_table(metrics: dict[str, dict[str, float]], keys=None) -> str:
    """Markdown table: one row per method, one column per metric."""
    keys = keys or [key for key in next(iter(metrics.values()))]
    lines = ["| method | " + " | ".join(keys) + " |", "| --- | " + " | ".join("---:" for _ in keys) + " |"]
    for method, values in metrics.items():
        label = METHOD_NAMES.get(method, method)
        lines.append(f"| {label} | " + " | ".join(f"{values[key]:.1f}" for key in keys) + " |")
    return "\n".join(lines)


def retrieval_grid(model, processor, task: RetrievalTask, output_path, num_queries: int = 6, top_k: int = 5) -> Path:
    """Draw `num_queries` queries of the benchmark `task` (spread over the stamps) with SCOT's top-k; returns the PNG
    path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(task.gallery)
    images = {name: load_image(task.gallery[name]) for name in names}
    gallery, _ = encode_images(model, processor, [images[name] for name in names], batch_size=64, show_progress=False)
    chosen = task.queries[:: max(1, len(task.queries) // num_queries)][:num_queries]
    scores = _composed_scores(model, processor, gallery, names, chosen)

    figure, axes = plt.subplots(len(chosen), top_k + 1, figsize=(1.9 * (top_k + 1), 2.1 * len(chosen)))
    for row, query in enumerate(chosen):
        axes[row, 0].imshow(images[query.reference])
        axes[row, 0].set_title(f"query: “{query.texts[0]}”", fontsize=8)
        for column, index in enumerate(scores[row].topk(top_k).indices.tolist(), start=1):
            _draw_hit(axes[row, column], images[names[index]], column, float(scores[row, index]),
                      hit=names[index] == query.target)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle("SCOT on the demo benchmark: reference + text → top 5 (right answer in green)", fontsize=10)
    figure.tight_layout()
    output_path = Path(output_path)
    figure.savefig(output_path, dpi=110)
    plt.close(figure)
    return output_path


def _composed_scores(model, processor, gallery: torch.Tensor, names: list[str], queries) -> torch.Tensor:
    """Cosine scores `[queries, gallery]` of the composed queries, the reference removed from each ranking (CIRR:
    the reference is not an answer)."""
    reference = [names.index(query.reference) for query in queries]
    # the tokens, not cached text embeddings: every composer reads them
    tokens = processor(text=[query.texts[0] for query in queries], return_tensors="pt").to(model.device)
    with eval_mode(model), torch.inference_mode():
        composed = model.get_composed_features(image_embeds=gallery[reference].to(model.device),
                                               input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    scores = composed.float().cpu() @ gallery.T
    scores[torch.arange(len(queries)), reference] = float("-inf")
    return scores


def _draw_hit(axis, image, rank: int, score: float, hit: bool) -> None:
    axis.imshow(image)
    axis.set_title(f"#{rank} {score:.2f}" + (" ✓" if hit else ""), fontsize=8, color="green" if hit else "black")
    if hit:
        for spine in axis.spines.values():
            spine.set_edgecolor("green")
            spine.set_linewidth(4)
