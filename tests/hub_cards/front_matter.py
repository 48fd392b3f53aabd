"""Read a card's YAML metadata the way the Hub does: PyYAML on the front matter, not huggingface_hub's parser."""

from pathlib import Path

import yaml


def front_matter(path) -> dict:
    text = Path(path).read_text()
    assert text.startswith("---\n"), text[:200]
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])


def model_index_metrics(metadata: dict) -> dict[tuple, float]:
    """{(dataset type, config, split, metric type, metric config): value} over the model-index."""
    (entry,) = metadata["model-index"]
    found = {}
    for result in entry["results"]:
        dataset = result["dataset"]
        for metric in result["metrics"]:
            key = (dataset["type"], dataset.get("config"), dataset.get("split"), metric["type"], metric.get("config"))
            assert key not in found, f"{key} twice in the model-index"
            found[key] = metric["value"]
    return found
