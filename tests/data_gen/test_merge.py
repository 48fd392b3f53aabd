"""Merging triplet datasets: one Hub-format folder, one train split, statistics summed, the card rendered from them."""

import glob
import json
import os

import pytest
from datasets import load_dataset

from data_gen.dataset_io import merge_dataset_stats, merge_triplet_datasets, read_stats
from data_gen.generate import main

from .conftest import make_image_folder


def _templates_run(image_folder, output_dir, shard_size):
    main(["--image_folder", image_folder, "--output_dir", str(output_dir), "--engine", "templates",
          "--shard_size", str(shard_size), "--source_name", "demo", "--source_license", "cc0-1.0"])
    return str(output_dir)


@pytest.fixture
def two_runs(tmp_path):
    first = _templates_run(make_image_folder(tmp_path / "first-images", 12), tmp_path / "first", 5)
    second = _templates_run(make_image_folder(tmp_path / "second-images", 7), tmp_path / "second", 4)
    return first, second


def test_merged_folder_reads_as_one_split_with_summed_statistics(two_runs, tmp_path):
    first, second = two_runs
    parts = [read_stats(first), read_stats(second)]
    output_dir = tmp_path / "merged"
    stats = merge_triplet_datasets([first, second], output_dir, pretty_name="Merged triplets", engine="two runs")

    merged = load_dataset(str(output_dir), split="train")
    expected_ids = [*load_dataset(first, split="train")["id"], *load_dataset(second, split="train")["id"]]
    assert list(merged["id"]) == expected_ids  # every row of each part, in the parts' order
    shards = sorted(glob.glob(str(output_dir / "data" / "train-*.parquet")))
    assert [os.path.basename(shard) for shard in shards] == [f"train-{i:05d}-of-00005.parquet" for i in range(5)]

    for key in ("kept_rows", "generated_rows", "input_rows"):
        assert stats[key] == parts[0][key] + parts[1][key]
    reasons = set(parts[0]["rejections"]) | set(parts[1]["rejections"])
    assert stats["rejections"] == {r: parts[0]["rejections"].get(r, 0) + parts[1]["rejections"].get(r, 0)
                                   for r in sorted(reasons)}
    assert stats["per_generator"] == {"templates": len(merged)}
    assert stats["sources"] == [{"name": "demo", "license": "cc0-1.0"}]  # the same source, listed once
    assert stats["engine"] == "two runs" and stats["complete"]

    card = (output_dir / "README.md").read_text()
    assert "# Merged triplets" in card and f"num_examples: {len(merged)}" in card
    assert f"triplets kept: **{len(merged)}**" in card
    assert read_stats(output_dir) == json.loads(json.dumps(stats))  # recorded: the merge can be merged again


def test_a_smaller_merge_replaces_the_shards_of_a_larger_one_and_nothing_else(two_runs, tmp_path):
    first, second = two_runs
    output_dir = tmp_path / "merged"
    merge_triplet_datasets([first, second], output_dir)
    (output_dir / "notes.txt").write_text("mine")
    merge_triplet_datasets([second], output_dir)
    assert len(load_dataset(str(output_dir), split="train")) == read_stats(second)["kept_rows"]
    assert len(glob.glob(str(output_dir / "data" / "*.parquet"))) == 2
    assert (output_dir / "notes.txt").read_text() == "mine"


def test_merging_refuses_what_is_not_a_triplet_dataset(two_runs, tmp_path):
    first, _ = two_runs
    with pytest.raises(FileNotFoundError, match="has no .generation/stats.json"):
        merge_triplet_datasets([first, tmp_path / "nothing"], tmp_path / "merged")
    with pytest.raises(ValueError, match="holds a generation run"):
        merge_triplet_datasets([first], first)
    merged = tmp_path / "merged"
    merge_triplet_datasets([first], merged)
    with pytest.raises(ValueError, match="both a part and the output"):
        merge_triplet_datasets([first, merged], merged)
    with pytest.raises(ValueError, match="at least one"):
        merge_triplet_datasets([], tmp_path / "merged")
    with pytest.raises(ValueError, match="at least one"):
        merge_dataset_stats([])


def test_a_folder_of_someone_elses_shards_is_refused_and_left_alone(tmp_path):
    from data_gen.dataset_io import merge_triplet_datasets

    foreign = tmp_path / "mine" / "data" / "train-00000-of-00002.parquet"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"not ours")
    with pytest.raises(ValueError, match="did not write"):
        merge_triplet_datasets([tmp_path / "part"], tmp_path / "mine")
    assert foreign.read_bytes() == b"not ours"
