import glob
import os

import pytest
from datasets import load_dataset
from PIL import Image as PILImage

from data_gen.dataset_io import FEATURES
from data_gen.generate import TransformersEngine, TripletGenerator, main
from data_gen.models import load_causal_lm, load_tokenizer
from data_gen.sources import CaptionRow


def _generate(image_folder, output_dir, *extra):
    main(["--image_folder", image_folder, "--output_dir", str(output_dir), "--shard_size", "5", *extra])
    return load_dataset(str(output_dir), split="train")


def test_templates_run_gives_a_load_dataset_ready_folder_with_card(image_folder, tmp_path):
    triplets = _generate(image_folder, tmp_path / "out", "--engine", "templates", "--source_license", "cc-by-4.0")
    assert triplets.features == FEATURES
    assert len(triplets) > 0 and len(set(triplets["id"])) == len(triplets)
    first = triplets[0]
    assert isinstance(first["image"], PILImage.Image) and first["image"].size == (8, 8)
    assert first["generator"] == "templates" and first["source"] == "images"
    assert len(glob.glob(str(tmp_path / "out" / "data" / "train-*-of-00005.parquet"))) == 5
    card = open(tmp_path / "out" / "README.md").read()
    assert "configs:" in card and "dtype: image" in card and f"num_examples: {len(triplets)}" in card
    assert f"triplets kept: **{len(triplets)}**" in card and "`cc-by-4.0`" in card


def test_tiny_llm_run_counts_rejections_and_falls_back(image_folder, tiny_llm, tmp_path):
    args = ["--model", tiny_llm, "--max_new_tokens", "12", "--batch_size", "4"]
    triplets = _generate(
        image_folder, tmp_path / "out", *args, "--fallback", "templates", "--prompt_style", "two_step"
    )
    assert len(triplets) == 24  # every caption in the fixture has a template rule
    card = open(tmp_path / "out" / "README.md").read()
    # A random model writes junk: every answer is counted under some reason, and nothing crashed.
    reasons = [
        line.split("|")
        for line in card.splitlines()
        if line.startswith("| `") and line.rstrip("| ").split("|")[-1].strip().isdigit()
    ]
    rejected = sum(int(cells[2]) for cells in reasons if "templates_" not in cells[1])
    assert rejected == 24 - sum(generator != "templates" for generator in triplets["generator"])
    assert "### User" in card  # the prompt used is in the card
    # Same seed, same inputs → same output (greedy here; sampling is seeded per shard and batch).
    again = _generate(image_folder, tmp_path / "again", *args, "--fallback", "templates", "--prompt_style", "two_step")
    assert again.remove_columns("image").to_list() == triplets.remove_columns("image").to_list()


def test_sampling_is_deterministic_given_a_seed(tiny_llm):
    tokenizer = load_tokenizer(tiny_llm)
    engine = TransformersEngine(load_causal_lm(tiny_llm), tokenizer, batch_size=2, max_new_tokens=8, temperature=1.0)
    prompts = ["Caption: a red car", "Caption: a dog", "Caption: two cats"]
    assert engine.complete(prompts, seed=5) == engine.complete(prompts, seed=5)
    assert engine.complete(prompts, seed=5) != engine.complete(prompts, seed=6)


def test_malformed_model_output_is_counted_and_skipped():
    class ScriptedEngine:
        def complete(self, prompts, seed=0):
            answers = ["Modification: make the car blue\nModified caption: a blue car on a road", "\x00\x01", "sorry"]
            return answers[: len(prompts)]

    generator = TripletGenerator(ScriptedEngine(), tokenizer=None, generator_name="scripted")
    generator.prompt = lambda caption, *args: caption  # no tokenizer needed for a scripted engine
    rows = [CaptionRow(str(i), caption, i) for i, caption in enumerate(["a red car on a road", "a cat", "a dog"])]
    kept, rejections = generator.generate(rows)
    assert [(row.id, modification, generator_name) for row, modification, _, generator_name in kept] == [
        ("0", "make the car blue", "scripted")
    ]
    assert rejections.as_dict() == {"unparseable": 2}


def test_captions_only_dataset_and_changed_settings_refuse_to_resume(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"text": ["a red car", "", "a blue vase with a rose"]}).save_to_disk(tmp_path / "captions")
    common = ["--dataset", str(tmp_path / "captions"), "--caption_column", "text", "--image_column", "none"]
    main([*common, "--output_dir", str(tmp_path / "out"), "--engine", "templates", "--no_embed_images"])
    triplets = load_dataset(str(tmp_path / "out"), split="train")
    assert len(triplets) == 2 and triplets["image"] == [None, None]
    assert "| `empty_caption` | 1 |" in open(tmp_path / "out" / "README.md").read()
    with pytest.raises(ValueError, match="other settings \\(seed\\)"):
        main([
            *common, "--output_dir", str(tmp_path / "out"), "--engine", "templates", "--no_embed_images", "--seed", "1"
        ])
    with pytest.raises(ValueError, match=r"caption column 'caption' not found .*columns found: \['text'\]"):
        main(["--dataset", str(tmp_path / "captions"), "--output_dir", str(tmp_path / "x"), "--engine", "templates"])


def test_push_to_hub_goes_up_to_the_network(image_folder, tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    from data_gen.dataset_io import push_to_hub

    _generate(image_folder, tmp_path / "out", "--engine", "templates")
    # The real client builds the request; only the offline switch stops it at the HTTP layer.
    with pytest.raises(OfflineModeIsEnabled, match="api/repos/create"):
        push_to_hub(str(tmp_path / "out"), "someone/scot-triplets", token="hf_not_a_real_token")

    calls = []
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kwargs: calls.append(("create", repo_id, kwargs))
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: calls.append(("upload", kwargs)))
    push_to_hub(str(tmp_path / "out"), "someone/scot-triplets", private=True)
    assert calls[0] == ("create", "someone/scot-triplets", {"repo_type": "dataset", "private": True, "exist_ok": True})
    upload = calls[1][1]
    assert upload["repo_type"] == "dataset" and upload["allow_patterns"] == ["README.md", "data/*.parquet"]
    # resume records exist but are not uploaded
    assert os.path.isdir(os.path.join(upload["folder_path"], ".generation"))
