"""The dataset card of a captioned-image dataset (one parquet file per split, an image and a caption per row), such
as the demo's images: the YAML `configs` that let `load_dataset(folder)` read every split, the row counts, the
sources and their licenses."""

from huggingface_hub import DatasetCard, DatasetCardData

from .cards import TEMPLATES_DIR, size_category

IMAGE_DATASET_CARD_TEMPLATE = TEMPLATES_DIR / "image_dataset_card.md.j2"


def render_image_dataset_card(*, pretty_name: str, description: str, data_files: dict[str, str],
                              counts: dict[str, dict[str, int]], sources: dict[str, str], repo_or_folder: str,
                              num_bytes: dict[str, int] | None = None, license: str = "other",
                              limitations: list[str] | None = None) -> DatasetCard:
    """The card from real counts.

    Args:
        data_files: `{split: parquet path inside the folder}`.
        counts: `{split: {"total": rows, <column>: count, ...}}`; every key but `total` becomes a column of the
            splits table (rows per source, ...).
        sources: `{source name: its license}`; `license` is the dataset's own (YAML), `"other"` for a mix.
        num_bytes: `{split: bytes}` of the data files; with it, the YAML `dataset_info` gives each split's size.
    """
    missing = [split for split in data_files if "total" not in counts.get(split, {})]
    if missing:
        raise ValueError(f"counts lacks the row total of split(s) {missing}: give counts[split]['total'].")
    card_data = DatasetCardData(
        license=license,
        pretty_name=pretty_name,
        task_categories=["text-to-image", "image-to-text"],
        size_categories=[size_category(sum(counts[split]["total"] for split in data_files))],
        configs=[{"config_name": "default",
                  "data_files": [{"split": split, "path": path} for split, path in data_files.items()]}],
        # the Hub reads a split's size only with its bytes too
        dataset_info=None if num_bytes is None else {"splits": [
            {"name": split, "num_bytes": num_bytes[split], "num_examples": counts[split]["total"]}
            for split in data_files]},
    )
    count_columns = list(dict.fromkeys(key for split in data_files for key in counts[split] if key != "total"))
    return DatasetCard.from_template(
        card_data, template_path=str(IMAGE_DATASET_CARD_TEMPLATE), pretty_name=pretty_name, description=description,
        repo_or_folder=repo_or_folder, counts={split: counts[split] for split in data_files},
        count_columns=count_columns, sources=sources, limitations=limitations or [],
    )
