"""The captioned-image dataset card: its YAML lets `load_dataset(folder)` read every split; counts from the data."""

import pytest
from datasets import Dataset, load_dataset

from hub_cards import render_image_dataset_card
from tests.hub_cards.front_matter import front_matter


def test_card_points_load_dataset_at_every_split(tmp_path):
    files, counts = {}, {}
    for split, rows in (("train", 5), ("test", 2)):
        files[split] = f"data/{split}-00000-of-00001.parquet"
        Dataset.from_dict({"caption": [f"a hat {i}" for i in range(rows)]}).to_parquet(str(tmp_path / files[split]))
        counts[split] = {"total": rows, "stamps": rows - 1}
    card = render_image_dataset_card(
        pretty_name="Tiny images", description="Two splits.", data_files=files, counts=counts,
        sources={"stamps": "GPL-2.0"}, repo_or_folder=str(tmp_path), limitations=["Tiny."],
        num_bytes={split: (tmp_path / path).stat().st_size for split, path in files.items()},
    )
    card.save(tmp_path / "README.md")

    loaded = load_dataset(str(tmp_path), cache_dir=str(tmp_path / ".cache"))
    assert {split: len(rows) for split, rows in loaded.items()} == {"train": 5, "test": 2}
    metadata = front_matter(tmp_path / "README.md")
    assert metadata["pretty_name"] == "Tiny images" and metadata["size_categories"] == ["n<1K"]
    assert [split["num_examples"] for split in metadata["dataset_info"]["splits"]] == [5, 2]
    text = (tmp_path / "README.md").read_text()
    assert "| split | rows | stamps |" in text and "| `train` | 5 | 4 |" in text and "| `test` | 2 | 1 |" in text
    assert "- `stamps`: GPL-2.0" in text and "## Limitations\n\n- Tiny." in text


def test_a_split_without_its_row_total_is_refused():
    with pytest.raises(ValueError, match=r"lacks the row total of split\(s\) \['test'\]"):
        render_image_dataset_card(pretty_name="x", description="x", data_files={"test": "data/test.parquet"},
                                  counts={}, sources={}, repo_or_folder="x")
