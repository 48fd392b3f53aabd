"""Model cards from real `trainers.evaluate` results, dataset cards from a real data_gen run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard
from PIL import Image

from hub_cards import (
    eval_results_from_evaluation,
    merge_eval_results,
    model_card_from_folder,
    render_model_card,
    update_model_card,
)
from scot_eval.cli import main as evaluate_main
from tests.hub_cards.front_matter import front_matter, model_index_metrics

REPO = Path(__file__).resolve().parents[2]
CIRR_METRICS = {"R@1": "recall@1", "R@5": "recall@5", "R@10": "recall@10", "R@50": "recall@50",
                "Rsubset@1": "recall_subset@1", "Rsubset@2": "recall_subset@2", "Rsubset@3": "recall_subset@3"}


def _evaluate(scot_folder, cir_data, benchmark, tmp_path, *extra) -> dict:
    """Run the evaluation entry as a user would; return the metrics.json it wrote."""
    output_dir = tmp_path / "evaluations" / "-".join([benchmark, *extra]).replace("--", "")
    assert evaluate_main(["--model", str(scot_folder), "--benchmark", benchmark,
                          "--data_dir", str(cir_data[benchmark]), "--output_dir", str(output_dir),
                          "--cache_dir", str(tmp_path / "cache"), "--no_progress", *extra]) == 0
    return json.loads((output_dir / "metrics.json").read_text())


def test_evaluate_records_each_benchmark_in_the_model_index(fresh_scot_folder, cir_data, tmp_path):
    measured = {benchmark: _evaluate(fresh_scot_folder, cir_data, benchmark, tmp_path, "--update_model_card")
                for benchmark in ("cirr", "circo", "fashioniq")}

    metadata = front_matter(fresh_scot_folder / "README.md")
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-feature-extraction"
    assert {"scot", "composed-image-retrieval", "clip"} <= set(metadata["tags"])
    assert "base_model" not in metadata  # the tiny encoder is a local folder, not a Hub id
    expected = {("cirr", None, "val", metric_type, None): round(measured["cirr"]["metrics"][name], 2)
                for name, metric_type in CIRR_METRICS.items()}
    expected.update({("circo", None, "val", f"map@{k}", None): round(measured["circo"]["metrics"][f"mAP@{k}"], 2)
                     for k in (5, 10, 25, 50)})
    for category in ("dress", "shirt", "toptee", "average"):
        for k in (10, 50):
            config = None if category == "average" else category
            expected[("fashioniq", config, "val", f"recall@{k}", "clip4cir")] = round(
                measured["fashioniq"]["metrics"][f"{category}_R@{k}"], 2)
    assert model_index_metrics(metadata) == expected
    (entry,) = metadata["model-index"]
    assert entry["name"] == "scot-tiny-clip"
    names = {result["dataset"]["type"]: result["dataset"]["name"] for result in entry["results"]}
    assert names == {"cirr": "CIRR", "circo": "CIRCO", "fashioniq": "FashionIQ"}
    assert {result["task"]["type"] for result in entry["results"]} == {"image-feature-extraction"}

    # huggingface_hub reads the same model-index back, and the Results table shows the measured numbers
    card = ModelCard.load(fresh_scot_folder / "README.md")
    assert len(card.data.eval_results) == len(expected)
    assert f"| scot-tiny-clip | {measured['cirr']['metrics']['R@1']:.2f} |" in card.text
    assert f"| dress | {measured['fashioniq']['metrics']['dress_R@10']:.2f} |" in card.text
    assert "Not evaluated" not in card.text


def test_baselines_and_test_splits_leave_the_card_alone(fresh_scot_folder, cir_data, tmp_path):
    _evaluate(fresh_scot_folder, cir_data, "cirr", tmp_path, "--update_model_card")
    recorded = (fresh_scot_folder / "README.md").read_text()
    _evaluate(fresh_scot_folder, cir_data, "cirr", tmp_path, "--update_model_card", "--method", "sum")
    evaluate_main(["--model", str(fresh_scot_folder), "--benchmark", "cirr", "--data_dir", str(cir_data["cirr"]),
                   "--split", "test1", "--output_dir", str(tmp_path / "test1"), "--cache_dir", str(tmp_path / "cache"),
                   "--no_progress", "--update_model_card"])
    assert (fresh_scot_folder / "README.md").read_text() == recorded
    # the same measurement again replaces its entries instead of adding a second copy
    again = _evaluate(fresh_scot_folder, cir_data, "cirr", tmp_path, "--update_model_card")
    index = model_index_metrics(front_matter(fresh_scot_folder / "README.md"))
    assert len(index) == len(CIRR_METRICS)
    assert index[("cirr", None, "val", "recall@1", None)] == round(again["metrics"]["R@1"], 2)


def test_newer_results_replace_older_ones_and_others_are_kept():
    old = eval_results_from_evaluation({"benchmark": "cirr", "split": "val", "method": "scot",
                                        "metrics": {"R@1": 10.0, "R@5": 20.0}})
    circo = eval_results_from_evaluation({"benchmark": "circo", "split": "val", "method": "scot",
                                          "metrics": {"mAP@5": 3.0}})
    new = eval_results_from_evaluation({"benchmark": "cirr", "split": "val", "method": "scot",
                                        "metrics": {"R@1": 12.5}})
    merged = merge_eval_results(old + circo, new)
    assert [(r.dataset_type, r.metric_type, r.metric_value) for r in merged] == [
        ("cirr", "recall@1", 12.5), ("cirr", "recall@5", 20.0), ("circo", "map@5", 3.0)]
    assert eval_results_from_evaluation({"benchmark": "cirr", "split": "val", "method": "image",
                                         "metrics": {"R@1": 50.0}}) == []


def test_a_hand_written_card_keeps_its_text(fresh_scot_folder, cir_data, tmp_path):
    (fresh_scot_folder / "README.md").write_text("---\nlicense: mit\n---\n\n# My model\n\nWritten by hand.\n")
    measured = _evaluate(fresh_scot_folder, cir_data, "circo", tmp_path)
    update_model_card(fresh_scot_folder, measured)
    metadata = front_matter(fresh_scot_folder / "README.md")
    assert metadata["license"] == "mit"
    index = model_index_metrics(metadata)
    assert index[("circo", None, "val", "map@5", None)] == round(measured["metrics"]["mAP@5"], 2)
    text = (fresh_scot_folder / "README.md").read_text()
    row = " | ".join(f"{measured['metrics'][f'mAP@{k}']:.2f}" for k in (5, 10, 25, 50))
    assert "Written by hand." in text and f"| scot-tiny-clip | {row} |" in text


def test_a_card_without_metrics_has_no_model_index_and_says_so(fresh_scot_folder):
    from modeling_scot import ScotConfig

    card = render_model_card(ScotConfig.from_pretrained(fresh_scot_folder), model_name="scot-tiny-clip",
                             dataset={"name": "someone/scot-triplets", "train_rows": 1000})
    card.save(fresh_scot_folder / "README.md")
    metadata = front_matter(fresh_scot_folder / "README.md")
    assert "model-index" not in metadata
    assert metadata["datasets"] == ["someone/scot-triplets"] and metadata["library_name"] == "transformers"
    assert ModelCard.load(fresh_scot_folder / "README.md").data.eval_results is None
    assert "Not evaluated on a composed image retrieval benchmark" in card.text
    assert "No training record was found" in card.text and "1000 triplets" in card.text


@pytest.fixture(scope="module")
def pseudo_word_folder(tmp_path_factory, backbone_folders) -> Path:
    """A saved pseudo-word (Map-to-Compose) model on the tiny CLIP, K = 3, as stage 2 leaves it: LoRA merged."""
    from modeling_scot import ScotModel, ScotProcessor

    folder = tmp_path_factory.mktemp("pseudo_word_card") / "m2c-tiny-clip"
    model = ScotModel.from_backbone(backbone_folders["clip"], composer="pseudo_word", num_pseudo_tokens=3)
    model.add_composer_adapters(rank=4)
    model.merge_composer_adapters()
    model.save_pretrained(folder)
    ScotProcessor.from_backbone(backbone_folders["clip"]).save_pretrained(folder)
    return folder


def test_a_pseudo_word_card_names_the_composer_and_its_settings(pseudo_word_folder):
    card = model_card_from_folder(pseudo_word_folder)
    text = card.text
    assert ("Composer: Map-to-Compose reading ([docs/map_to_compose.md](docs/map_to_compose.md) in the package's "
            "repository): image → K = 3 pseudo-word tokens in the text encoder's input embedding space, prompt "
            "template `a photo of $ that {modification}`") in text
    assert "stage 1's image prompt `a photo of $`), LoRA merged into the text encoder." in text
    assert "- LoRA: rank 4, α 16.0, on `q_proj`, `k_proj`, `v_proj`, `out_proj`." in text
    assert "- Mapping network: 2 visual-semantic-injection blocks" in text and "8 heads, dropout 0.1." in text
    assert "text side tuned by stage 2's LoRA" in text and "the composed prompt against the frozen" in text
    assert "Combiner" not in text and "model.compose(" not in text  # nothing of the other composer
    assert "map-to-compose" in card.data.tags

    # after stage 1 alone: no LoRA yet, and the card says so
    config = json.loads((pseudo_word_folder / "config.json").read_text())
    stage_1 = render_model_card({**config, "pseudo_word_lora_state": "none"}, model_name="m2c-stage-1").text
    assert "LoRA merged" not in stage_1 and "- LoRA:" not in stage_1
    assert "no LoRA yet: the text encoder is the backbone's (stage 1 only)" in stage_1
    assert "stage 2 (composing) has not run" in stage_1 and "`clip` from" in stage_1 and ", frozen;" in stage_1


def test_a_combiner_card_names_the_combiner(scot_folder):
    from modeling_scot import ScotConfig

    config = ScotConfig.from_pretrained(scot_folder)
    card = render_model_card(config, model_name="scot-tiny-clip")
    assert ("- Composer: Combiner (SCOT, CLIP4Cir-style): image + text embeddings → λ-mix + fusion; branch width "
            f"P = {config.combiner_projection_dim}, fusion width H = {config.combiner_hidden_dim}") in card.text
    assert "Map-to-Compose" not in card.text and "pseudo-word" not in card.text
    assert "map-to-compose" not in card.data.tags
    assert "Image anchor" not in card.text  # β = 0: the paper's Combiner
    config.image_anchor_weight = 0.5
    anchored = render_model_card(config, model_name="scot-tiny-clip")
    assert "Image anchor β = 0.5 (ours, not the paper's)" in anchored.text


@pytest.mark.parametrize("folder_fixture", ["scot_folder", "pseudo_word_folder"])
def test_the_usage_code_in_the_card_runs(folder_fixture, request, tmp_path, monkeypatch):
    from modeling_scot import ScotConfig

    folder = request.getfixturevalue(folder_fixture)
    card = render_model_card(ScotConfig.from_pretrained(folder), model_name=folder.name, repo_id=str(folder))
    (code,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.DOTALL)
    monkeypatch.chdir(tmp_path)
    for name, colour in (("gallery_0.png", "red"), ("gallery_1.png", "blue"), ("reference.png", "green")):
        Image.new("RGB", (40, 40), colour).save(name)
    namespace = {}
    exec(compile(code, "model card usage", "exec"), namespace)  # noqa: S102 - our own template's snippet
    assert tuple(namespace["composed"].shape) == (1, namespace["model"].config.embed_dim)
    assert sorted(namespace["ranking"][0].tolist()) == [0, 1]


def _image_folder(folder: Path, captions: list[str]) -> str:
    folder.mkdir(parents=True)
    for index, caption in enumerate(captions):
        Image.new("RGB", (8, 8), (index * 20, 90, 160)).save(folder / f"img{index:03d}.png")
        (folder / f"img{index:03d}.txt").write_text(caption)
    return str(folder)


def test_dataset_card_of_a_generated_folder_has_configs_and_the_real_counts(tmp_path):
    from datasets import load_dataset

    from data_gen.dataset_io import FEATURES, read_shard_states
    from data_gen.generate import main as generate_main

    captions = [f"a {colour} {thing} number {i}" for i, (colour, thing) in enumerate(
        (c, t) for c in ("red", "blue", "green") for t in ("car", "dog", "cup", "chair"))] + ["", "a plain sky"]
    output_dir = tmp_path / "triplets"
    generate_main(["--image_folder", _image_folder(tmp_path / "images", captions), "--output_dir", str(output_dir),
                   "--shard_size", "5", "--engine", "templates", "--source_license", "cc0-1.0"])

    triplets = load_dataset(str(output_dir), split="train")
    states = read_shard_states(str(output_dir))
    kept = sum(state["kept_rows"] for state in states.values())
    assert len(triplets) == kept > 0
    metadata = front_matter(output_dir / "README.md")
    assert metadata["configs"] == [{"config_name": "default",
                                    "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    (split,) = metadata["dataset_info"]["splits"]
    parquet_bytes = sum(os.path.getsize(path) for path in (output_dir / "data").glob("*.parquet"))
    assert split == {"name": "train", "num_examples": kept, "num_bytes": parquet_bytes}
    assert [feature["name"] for feature in metadata["dataset_info"]["features"]] == list(FEATURES)
    assert metadata["size_categories"] == ["n<1K"] and "scot" in metadata["tags"]

    card = DatasetCard.load(output_dir / "README.md")
    generated = sum(state["generated_rows"] for state in states.values())
    assert f"rows sent to the generator: {generated}; triplets kept: **{kept}**" in card.text
    assert "| `empty_caption` | 1 |" in card.text  # the empty caption was skipped and counted


@pytest.mark.slow
def test_hub_cards_imports_nothing_heavy():
    # trainers, data_gen and the demo import hub_cards; it must not pull torch / transformers / datasets itself
    code = ("import sys, hub_cards; heavy = {'torch', 'transformers', 'datasets'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_dataset_card_counts_triplets_by_generator_and_kind():
    from hub_cards import render_dataset_card

    stats = {
        "kept_rows": 10, "generated_rows": 12, "input_rows": 12, "rejections": {"same_as_caption": 2},
        "per_generator": {"smollm2": 6, "templates": 4}, "per_kind": {"colour": 5, "count": 3, "size": 2},
        "per_generator_kind": {"smollm2": {"colour": 2, "count": 2, "size": 2},
                               "templates": {"colour": 3, "count": 1}},
        "generator": "smollm2", "adapter": None, "engine": "prefix_cache", "decoding": "greedy", "seed": 0,
        "prompt_style": "one_step", "num_shots": 0, "kinds_asked": True, "fallback": "templates",
        "example_prompt": "Caption: a red car", "images_embedded": True, "sources": [], "license": "other",
    }
    card = render_dataset_card(stats, features=[], repo_or_folder="scot-triplets").text
    assert "| kind | `smollm2` | `templates` | all | share |" in card
    assert "| `colour` | 2 | 3 | 5 | 50.0% |" in card and "| `size` | 2 | 0 | 2 | 20.0% |" in card
    assert "each row's prompt asked for one kind" in card
