"""trainers/train.py end to end on a tiny CLIP and a 64-row triplet dataset: accelerate launch with a config file and
flags, exact resume (explicit, and by rerunning the same command), the arguments, the embedding cache, bad data, and
the 2-process gathered loss."""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from modeling_scot import ScotModel, ScotProcessor
from tests.tiny_backbones import save_tiny_clip
from tests.trainers.triplet_fixtures import StopAt, draw, save_triplet_dataset, triplet_rows
from trainers.embedding_cache import EmbeddingCache, TripletColumns
from trainers.train import build_trainer, finish_training, main, parse_args
from trainers.trainer import ScotTrainer
from trainers.training_args import DataArguments, ModelArguments, ScotTrainingArguments

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return {"root": root, "clip": save_tiny_clip(root / "clip"), "data": save_triplet_dataset(root / "data")}


def _env(root):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf_home"), OMP_NUM_THREADS="1")
    return env


@pytest.mark.slow
def test_accelerate_launch_with_a_config_file(workspace, tmp_path):
    config = {
        "model_name_or_path": str(workspace["clip"]),
        "dataset_name": str(workspace["data"]),
        "eval_fraction": 0.25,
        "embedding_cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 16,
        "max_steps": 3,  # overridden by the flag after the file
        "learning_rate": 0.001,
        "logging_steps": 5,
        "eval_strategy": "steps",
        "eval_steps": 15,
        "save_steps": 15,
        "seed": 0,
    }
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    # the README's command: the script's path (the package is installed), a config file, then a flag overriding it
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
               str(REPO / "trainers" / "train.py"), str(config_file), "--max_steps", "30"]
    result = subprocess.run(command, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    out = tmp_path / "out"
    curve = json.loads((out / "loss_curve.json").read_text())
    losses = [loss for _, loss in curve["train"]]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5, losses  # the loss falls
    assert curve["eval"], "evaluation ran during training"
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_loss", "eval_R@1", "eval_R@5", "eval_R@10"} <= set(eval_results)
    assert 0.0 <= eval_results["eval_R@1"] <= eval_results["eval_R@10"] <= 100.0

    model, processor = AutoModel.from_pretrained(out), AutoProcessor.from_pretrained(out)
    assert type(model) is ScotModel
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "training_args.json",
                                                "checkpoint-15", "checkpoint-30"}
    assert not list(out.glob("*.bin"))
    inputs = processor(images=[draw("circle", "red")], text=["make it blue"], return_tensors="pt")
    assert model(**inputs).composed_embeds.shape == (1, model.config.embed_dim)


def _arguments(workspace, output_dir, cache_dir, **training):
    model_args = ModelArguments(model_name_or_path=str(workspace["clip"]))
    data_args = DataArguments(eval_fraction=0.0, embedding_cache_dir=str(cache_dir))
    training = {"per_device_train_batch_size": 8, "max_steps": 16, "learning_rate": 1e-3, "save_steps": 100,
                "logging_steps": 4, "seed": 3, **training}
    training_args = ScotTrainingArguments(output_dir=str(output_dir), dataset_name=str(workspace["data"]), **training)
    return model_args, data_args, training_args


def test_resume_continues_exactly(workspace, tmp_path):
    # N = 16 steps straight, against 8 steps + a stop + resume from checkpoint-8 for the other 8. Dropout (0.5 in
    # the Combiner) and data order depend on RNG and sampler state, both restored from the checkpoint.
    straight = build_trainer(*_arguments(workspace, tmp_path / "straight", tmp_path / "cache"))
    straight.train()

    interrupted = build_trainer(*_arguments(workspace, tmp_path / "resumed", tmp_path / "cache"),
                                callbacks=[StopAt(8)])
    interrupted.train()
    assert interrupted.state.global_step == 8 and (tmp_path / "resumed" / "checkpoint-8").is_dir()

    resumed = build_trainer(*_arguments(workspace, tmp_path / "resumed", tmp_path / "cache"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-8"))
    assert resumed.state.global_step == 16

    # tolerance: 1e-6 absolute on every Combiner weight (float32, same CPU kernels; observed equal)
    _assert_same_combiner(resumed.model.combiner.state_dict(), straight.model.combiner.state_dict())
    untrained = build_trainer(*_arguments(workspace, tmp_path / "fresh", tmp_path / "cache")).model
    assert not torch.allclose(untrained.combiner.fusion[0].weight, straight.model.combiner.fusion[0].weight)


def _assert_same_combiner(actual: dict, expected: dict) -> None:
    # tolerance: 1e-6 absolute on every Combiner weight (float32, same CPU kernels; observed equal)
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)


def _saved_combiner(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {name: tensor for name, tensor in load_file(folder / "model.safetensors").items()
            if name.startswith("combiner.")}


def test_rerunning_the_same_command_resumes_from_the_last_checkpoint(workspace, tmp_path, monkeypatch):
    # Issue 12, item 7: rerunning `train.py CONFIG` after an interruption continues from the last checkpoint-* of
    # output_dir (as the transformers example scripts do) and ends with the weights of an uninterrupted run;
    # --overwrite_output_dir starts at step 0 again.
    config = tmp_path / "run.yaml"
    config.write_text(f"model_name_or_path: {workspace['clip']}\ndataset_name: {workspace['data']}\n"
                      f"eval_fraction: 0.0\nembedding_cache_dir: {tmp_path / 'cache'}\n"
                      f"output_dir: {tmp_path / 'out'}\n"
                      "per_device_train_batch_size: 8\nmax_steps: 16\nlearning_rate: 0.001\nsave_steps: 8\n"
                      "logging_steps: 4\nseed: 3\nreport_to: none\ndisable_tqdm: true\n")
    steps, kill_at = [], {"step": None}
    training_step = ScotTrainer.training_step

    def counted_training_step(self, *args, **kwargs):
        steps.append(self.state.global_step)
        if self.state.global_step == kill_at["step"]:
            raise KeyboardInterrupt("killed")  # the process dies after checkpoint-8 was written
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(ScotTrainer, "training_step", counted_training_step)

    main([str(config), "--output_dir", str(tmp_path / "straight")])
    assert len(steps) == 16
    straight = _saved_combiner(tmp_path / "straight")

    kill_at["step"] = 8
    with pytest.raises(KeyboardInterrupt):
        main([str(config)])
    assert (tmp_path / "out" / "checkpoint-8").is_dir() and not (tmp_path / "out" / "model.safetensors").exists()

    steps.clear()
    kill_at["step"] = None
    main([str(config)])  # the same command again
    assert steps == list(range(8, 16)), steps  # only the steps after checkpoint-8
    _assert_same_combiner(_saved_combiner(tmp_path / "out"), straight)
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 16

    steps.clear()
    main([str(config), "--overwrite_output_dir"])
    assert steps == list(range(16))  # from step 0, although checkpoint-16 is there
    _assert_same_combiner(_saved_combiner(tmp_path / "out"), straight)


def test_yaml_and_flags_parse_to_the_same_arguments(tmp_path):
    (tmp_path / "run.yaml").write_text("model_name_or_path: m\ndataset_name: d\noutput_dir: o\nalpha_pos: 5.0\n"
                                       "per_device_train_batch_size: 1024\n")
    from_yaml = parse_args([str(tmp_path / "run.yaml")])
    from_flags = parse_args(["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o",
                             "--alpha_pos", "5.0", "--per_device_train_batch_size", "1024"])
    assert from_yaml[0] == from_flags[0] and from_yaml[1] == from_flags[1]
    assert from_yaml[2].learning_rate == 1e-4 and from_yaml[2].optim == "adamw_torch"  # the paper's defaults
    assert from_yaml[2].per_device_train_batch_size == 1024 and from_yaml[2].dataset_name == "d"


def test_a_config_file_then_flags_that_override_it(tmp_path):
    # Issue 12, item 7: the README's `train.py CONFIG --resume_from_checkpoint OUT/checkpoint-500`
    (tmp_path / "run.yaml").write_text("model_name_or_path: m\ndataset_name: d\noutput_dir: o\nalpha_pos: 5.0\n"
                                       "max_steps: 10\nuse_embedding_cache: true\n")
    model_args, data_args, training_args = parse_args([
        str(tmp_path / "run.yaml"), "--resume_from_checkpoint", "o/checkpoint-5", "--alpha_pos", "3",
        "--no_use_embedding_cache"])
    assert training_args.resume_from_checkpoint == "o/checkpoint-5"
    assert model_args.alpha_pos == 3.0 and not data_args.use_embedding_cache  # the flags win
    assert model_args.model_name_or_path == "m" and training_args.max_steps == 10  # the rest is the file's
    assert training_args.output_dir == "o" and training_args.dataset_name == "d"


@pytest.mark.parametrize(("text", "message"), [
    ("model_name_or_path: m\n  bad: [indent\n", "not valid YAML"),
    ("", "holds no settings"),
    ("- a list\n", "holds no settings"),
    ("model_name_or_path: m\nmax_steps: two\n", r"sets max_steps: 'two', which is not a valid int"),
    ("model_name_or_path: m\nlearning_rat: 0.1\n", r"sets \['learning_rat'\], which are not arguments"),
])
def test_a_bad_config_file_is_refused_with_its_name(tmp_path, text, message):
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        parse_args([str(config), "--output_dir", "o"])
    assert str(config) in str(error.value)


def test_model_arguments_are_scot_config_fields_with_its_defaults():
    import dataclasses
    import inspect

    from modeling_scot import ScotConfig

    fields = {field.name: field for field in dataclasses.fields(ModelArguments)}
    settings = set(inspect.get_annotations(ScotConfig)) - {"encoder_config"}
    assert set(fields) == {"model_name_or_path"} | settings
    for name in settings:
        assert fields[name].default is None  # None: ScotConfig's default (or the saved model's value)
        default = next(field.default for field in dataclasses.fields(ScotConfig) if field.name == name)
        if default is not None:
            assert f"ScotConfig default: {default!r}." in fields[name].metadata["help"], name
    assert "4 x `embed_dim`" in fields["combiner_projection_dim"].metadata["help"]  # the docstring's words
    assert "Eq. 9" in fields["alpha_pos"].metadata["help"]


def test_cir_benchmark_arguments_are_checked_up_front(tmp_path):
    with pytest.raises(ValueError, match="cir_benchmark needs cir_data_dir"):
        ScotTrainingArguments(output_dir=str(tmp_path), cir_benchmark="cirr")
    with pytest.raises(ValueError, match="cir_benchmark must be one of fashioniq, cirr, circo, got 'cir'"):
        ScotTrainingArguments(output_dir=str(tmp_path), cir_benchmark="cir", cir_data_dir=str(tmp_path))


def test_plain_training_arguments_are_converted(workspace, tmp_path):
    from transformers import TrainingArguments

    model = ScotModel.from_backbone(workspace["clip"])
    trainer = ScotTrainer(model, TrainingArguments(output_dir=str(tmp_path), learning_rate=0.5, report_to="none"))
    assert isinstance(trainer.args, ScotTrainingArguments)
    assert trainer.args.learning_rate == 0.5 and trainer.args.output_dir == str(tmp_path)
    assert trainer.args.cir_benchmark is None and trainer.cir_benchmark_settings is None


def test_a_saved_scot_model_continues_with_new_loss_settings_only(workspace, scot_folder, tmp_path):
    model_args, data_args, training_args = _arguments(workspace, tmp_path / "out", tmp_path / "cache")
    model_args = ModelArguments(model_name_or_path=str(scot_folder), alpha_pos=3.0)
    trainer = build_trainer(model_args, data_args, training_args)
    assert trainer.model.config.alpha_pos == 3.0 and trainer.model.config.alpha_neg == 0.1
    with pytest.raises(ValueError, match=r"trained SCOT model: its architecture \(\['combiner_dropout'\]\)"):
        build_trainer(ModelArguments(model_name_or_path=str(scot_folder), combiner_dropout=0.1), data_args,
                      training_args)


@pytest.mark.slow
def test_scot_train_console_script_help_names_scot_config_defaults(tmp_path):
    script = Path(sys.executable).with_name("scot-train")
    result = subprocess.run([str(script), "--help"], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    help_text = " ".join(result.stdout.split())
    assert "--alpha_pos" in help_text and "ScotConfig default: 10.0." in help_text
    assert "--overwrite_output_dir" in help_text and "--cir_benchmark" in help_text


def test_shipped_configs_parse_with_the_papers_settings():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert {c.name for c in configs} >= {"scot_blip2.yaml", "scot_clip_vit_l14.yaml", "infonce_blip2.yaml"}
    for config in configs:
        model_args, data_args, training_args = parse_args([str(config)])
        assert training_args.learning_rate == 1e-4 and training_args.optim == "adamw_torch"
        assert training_args.per_device_train_batch_size == 1024 and data_args.use_embedding_cache
        if model_args.loss_type == "scot":
            assert (model_args.alpha_pos, model_args.alpha_neg, model_args.margin) == (10.0, 0.1, 0.2)


def test_cache_encodes_each_distinct_item_once_and_is_reused(workspace, tmp_path):
    from datasets import load_dataset

    dataset = load_dataset(str(workspace["data"]), split="train")
    model = ScotModel.from_backbone(workspace["clip"])
    processor = ScotProcessor.from_backbone(workspace["clip"])
    cache = EmbeddingCache.build_or_load(model, processor, dataset, cache_dir=tmp_path, show_progress=False)
    rows = triplet_rows()
    distinct_texts = {t for row in rows for t in (row["caption"], row["modification"], row["modified_caption"])}
    assert cache.manifest["num_distinct_images"] == 16 and cache.manifest["num_distinct_texts"] == len(distinct_texts)
    assert len(cache) == 64 and cache.skipped == {"missing_image": 0, "empty_text": 0, "unreadable_image": 0}

    item = cache.as_dataset()[5]
    with torch.no_grad():
        expected_image = model.get_image_features(**processor(images=[rows[5]["image"]], return_tensors="pt"))[0]
        target_tokens = processor(text=[rows[5]["modified_caption"]], return_tensors="pt")
        expected_target = model.get_text_features(**target_tokens)[0]
    torch.testing.assert_close(item["image_embeds"], expected_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(item["modified_caption_embeds"], expected_target, atol=1e-5, rtol=0)

    # same encoder + data: reused (no re-encoding); another encoder: another entry
    calls = []
    model.get_image_features = lambda *a, **k: calls.append(1)
    again = EmbeddingCache.build_or_load(model, processor, dataset, cache_dir=tmp_path, show_progress=False)
    assert again.folder == cache.folder and not calls
    other = ScotModel.from_backbone(save_tiny_clip(tmp_path / "other_clip", seed=1))
    other_cache = EmbeddingCache.build_or_load(other, processor, dataset, cache_dir=tmp_path, show_progress=False)
    assert other_cache.folder != cache.folder


def test_interrupted_cache_resumes_from_its_chunks(workspace, tmp_path):
    from datasets import load_dataset


    dataset = load_dataset(str(workspace["data"]), split="train")
    model = ScotModel.from_backbone(workspace["clip"])
    processor = ScotProcessor.from_backbone(workspace["clip"])
    complete = EmbeddingCache.build_or_load(model, processor, dataset, cache_dir=tmp_path / "a", chunk_size=4,
                                            show_progress=False)
    # simulate an interruption: the manifest and some text chunks were never written
    partial = tmp_path / "b" / complete.folder.name
    shutil.copytree(complete.folder, partial)
    (partial / "manifest.json").unlink()
    for chunk in sorted(partial.glob("texts-*.safetensors"))[3:]:
        chunk.unlink()
    encoded = []
    original = model.get_text_features
    model.get_text_features = lambda **kwargs: encoded.append(len(kwargs["input_ids"])) or original(**kwargs)
    resumed = EmbeddingCache.build_or_load(model, processor, dataset, cache_dir=tmp_path / "b", chunk_size=4,
                                           show_progress=False)
    assert sum(encoded) == complete.manifest["num_distinct_texts"] - 3 * 4  # only the missing chunks
    torch.testing.assert_close(resumed.text_embeds, complete.text_embeds, atol=0, rtol=0)


def _png_cell(image) -> dict:
    import io

    png = io.BytesIO()
    image.save(png, format="PNG")
    return {"bytes": png.getvalue(), "path": None}


def _rows_with_bad_ones(count: int = 8) -> list[dict]:
    """`count` triplet rows as Image cells; row 1 and 2 have an empty text, row 4 an unreadable image, row 6 a null
    image cell (None)."""
    rows = [{**row, "image": _png_cell(row["image"])} for row in triplet_rows()[:count]]
    rows[1]["modification"] = "   "
    rows[2]["modified_caption"] = ""
    rows[4]["image"] = {"bytes": b"not an image", "path": None}
    rows[6]["image"] = None
    return rows


def test_bad_rows_are_skipped_and_counted(workspace, tmp_path):
    # Issue 12, item 8: a null image cell is skipped and counted ("missing_image"), not a crash in image_identity
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "caption": Value("string"), "modification": Value("string"),
                         "modified_caption": Value("string")})
    dataset = Dataset.from_list(_rows_with_bad_ones(), features=features)
    model = ScotModel.from_backbone(workspace["clip"])
    cache = EmbeddingCache.build_or_load(model, ScotProcessor.from_backbone(workspace["clip"]), dataset,
                                         cache_dir=tmp_path / "cache", show_progress=False)
    assert cache.skipped == {"missing_image": 1, "empty_text": 2, "unreadable_image": 1}
    assert len(cache) == 4 and cache.row_indices["dataset_row"].tolist() == [0, 3, 5, 7]


def test_raw_training_skips_and_counts_bad_rows(workspace, tmp_path, caplog):
    # Issue 12, item 8, without the cache: rows with a missing image or an empty text are dropped before training,
    # the unreadable image when the collator decodes it; all counted by reason, none fatal
    data = save_triplet_dataset(tmp_path / "data", _rows_with_bad_ones(16))
    model_args, data_args, training_args = _arguments(workspace, tmp_path / "raw", tmp_path / "cache", max_steps=2)
    training_args.dataset_name = str(data)
    data_args.use_embedding_cache = False
    with caplog.at_level("WARNING", logger="trainers"):
        trainer = build_trainer(model_args, data_args, training_args)
    assert len(trainer.train_dataset) == 13  # 16 rows - 1 missing image - 2 empty texts
    assert "skipped 3 rows before training (1 missing_image, 2 empty_text)" in caplog.text
    trainer.train()  # one epoch of 13 rows in batches of 8: every kept row is collated once
    assert trainer.data_collator.skipped == {"missing_image": 0, "empty_text": 0, "unreadable_image": 1}


@pytest.mark.parametrize("use_embedding_cache", [True, False])
def test_a_dataset_whose_every_row_is_skipped_is_refused_with_the_counts(workspace, tmp_path, use_embedding_cache):
    # Issue 12, item 8: not torch's "num_samples=0" from the sampler, but the counts by reason
    rows = [{**row, "image": _png_cell(row["image"])} for row in triplet_rows()[:8]]
    for row in rows[:6]:
        row["image"] = None
    for row in rows[6:]:
        row["caption"] = ""
    data = save_triplet_dataset(tmp_path / "data", rows)
    model_args, data_args, training_args = _arguments(workspace, tmp_path / "out", tmp_path / "cache")
    training_args.dataset_name = str(data)
    data_args.use_embedding_cache = use_embedding_cache
    with pytest.raises(ValueError, match=r"The 'train' split of .*data has no row to train on: all 8 rows were "
                                         r"skipped \(6 missing_image, 2 empty_text\)"):
        build_trainer(model_args, data_args, training_args)


def test_missing_column_error_lists_expected_and_found(workspace, tmp_path):
    from datasets import load_dataset

    dataset = load_dataset(str(workspace["data"]), split="train").rename_column("modification", "edit")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['modification'\].*found \[.*'edit'"):
        TripletColumns().check(dataset)
    data_args = DataArguments(modified_caption_column="target_caption", embedding_cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="target_caption"):
        build_trainer(ModelArguments(model_name_or_path=str(workspace["clip"])), data_args,
                      ScotTrainingArguments(output_dir=str(tmp_path / "out"), dataset_name=str(workspace["data"])))


def test_training_without_the_cache_reencodes_raw_batches(workspace, tmp_path):
    model_args, data_args, training_args = _arguments(workspace, tmp_path / "raw", tmp_path / "cache")
    data_args.use_embedding_cache = False
    training_args.max_steps = 4
    trainer = build_trainer(model_args, data_args, training_args)
    before = trainer.model.combiner.fusion[0].weight.clone()
    encoder_before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    trainer.train()
    assert not torch.equal(before, trainer.model.combiner.fusion[0].weight)
    for key, value in trainer.model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_gathered_loss_equals_single_process(workspace, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(REPO / "tests" / "trainers" / "distributed_loss_check.py"),
               str(workspace["clip"])]
    result = subprocess.run(command, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    assert report["world_size"] == 2
    for loss in report["gathered_losses"]:
        assert loss == pytest.approx(report["single_process_loss"], abs=1e-5)
    assert report["max_grad_difference"] <= 1e-5 * max(1.0, report["max_grad"])


def test_cir_benchmark_is_evaluated_during_training(workspace, tmp_path, cir_data):
    cirr = str(cir_data["cirr"])
    model_args, data_args, training_args = _arguments(workspace, tmp_path / "out", tmp_path / "cache", max_steps=4,
                                                      cir_benchmark="cirr", cir_data_dir=cirr)
    data_args.eval_fraction = 0.25
    trainer = build_trainer(model_args, data_args, training_args)
    trainer.train()
    first = trainer.evaluate()
    second = trainer.evaluate()
    for key in ("eval_cirr_R@1", "eval_cirr_R@5", "eval_cirr_R@10", "eval_cirr_R@50", "eval_cirr_Rsubset@1"):
        assert 0.0 <= first[key] <= 100.0
        assert second[key] == first[key]  # prepared once, same model: same numbers


def test_retrieved_image_targets_train_end_to_end(workspace, tmp_path):
    model_args, _, training_args = _arguments(workspace, tmp_path / "out", tmp_path / "cache", max_steps=4)
    data_args = DataArguments(eval_fraction=0.25, embedding_cache_dir=str(tmp_path / "cache"),
                              target="retrieved_image")
    trainer = build_trainer(model_args, data_args, training_args)
    row = trainer.train_dataset[0]
    cache = trainer.train_dataset.cache
    # the target is one of the training images, not the modified caption's text embedding
    assert (cache.image_embeds == row["modified_caption_embeds"]).all(dim=1).any()
    assert not torch.equal(row["modified_caption_embeds"], row["image_embeds"])
    assert math.isfinite(trainer.train().training_loss)
    with pytest.raises(ValueError, match="needs the embedding cache"):
        build_trainer(model_args, DataArguments(use_embedding_cache=False, target="retrieved_image"), training_args)


def test_load_triplets_refuses_an_incomplete_folder_and_warns_on_one_without_a_record(workspace, tmp_path, caplog):
    # Issue 12, item 6: a killed generation run's folder used to train as a smaller dataset, without a word
    from data_gen.generate import main as generate
    from tests.data_gen.conftest import make_image_folder
    from trainers.train import load_triplets

    triplets = tmp_path / "triplets"
    generate(["--image_folder", make_image_folder(tmp_path / "images", 6), "--output_dir", str(triplets),
              "--engine", "templates", "--shard_size", "4"])
    data_args = DataArguments(eval_fraction=0.0)
    assert len(load_triplets(str(triplets), data_args, seed=0)[0]) == 6
    status = triplets / ".generation" / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "complete": False}))
    with pytest.raises(ValueError, match=r"incomplete.*rerun .*data_gen\.generate.* with the same arguments"):
        load_triplets(str(triplets), data_args, seed=0)
    with caplog.at_level("WARNING"):
        train, _ = load_triplets(str(workspace["data"]), data_args, seed=0)
    assert len(train) == 64 and "no record of being complete" in caplog.text


def test_the_grounding_gate_is_calibrated_on_the_validation_slice_and_saved(workspace, tmp_path):
    model_args, _, training_args = _arguments(workspace, tmp_path / "out", tmp_path / "cache", max_steps=2,
                                              grounding_gate_alpha=0.5)
    model_args.grounding_gate_neighbours = 2  # the gate's k is a ScotConfig field (a model argument)
    data_args = DataArguments(eval_fraction=0.25, embedding_cache_dir=str(tmp_path / "cache"))
    trainer = build_trainer(model_args, data_args, training_args)
    metrics = finish_training(trainer, trainer.train())
    saved = ScotModel.from_pretrained(tmp_path / "out")
    assert saved.config.grounding_gate_neighbours == 2
    assert saved.config.grounding_gate_threshold == pytest.approx(metrics["eval"]["eval_grounding_gate_threshold"])
    assert 0.0 <= metrics["eval"]["eval_grounding_gate_gated_fraction"] <= 1.0
    # without a held-out split there is nothing to calibrate on: refused before any training
    with pytest.raises(ValueError, match="novelty_gate_alpha calibrate a gate on a Combiner's cached"):
        build_trainer(model_args, DataArguments(eval_fraction=0.0, embedding_cache_dir=str(tmp_path / "cache")),
                      training_args)


def test_the_novelty_gate_is_calibrated_on_the_validation_slice_and_saved_with_its_bank(workspace, tmp_path):
    from modeling_scot import text_familiarity
    from trainers.grounding_gate import validation_embeds

    model_args, _, training_args = _arguments(workspace, tmp_path / "out", tmp_path / "cache", max_steps=2,
                                              novelty_gate_alpha=0.25)
    model_args.novelty_gate_neighbours = 2  # the gate's k is a ScotConfig field (a model argument)
    data_args = DataArguments(eval_fraction=0.25, embedding_cache_dir=str(tmp_path / "cache"))
    trainer = build_trainer(model_args, data_args, training_args)
    metrics = finish_training(trainer, trainer.train())["eval"]
    saved = ScotModel.from_pretrained(tmp_path / "out")
    # the bank: the training split's distinct modifications; θ: the validation familiarity's 0.25 quantile
    bank = torch.unique(validation_embeds(trainer.train_dataset)[1], dim=0)
    assert saved.config.novelty_gate_neighbours == 2 and saved.config.novelty_gate_bank_size == len(bank)
    assert metrics["eval_novelty_gate_bank_size"] == len(bank)
    torch.testing.assert_close(saved.novelty_gate_text_embeds, bank)
    familiarity = text_familiarity(validation_embeds(trainer.eval_dataset)[1], bank, 2)
    assert saved.config.novelty_gate_threshold == pytest.approx(float(familiarity.quantile(0.25)))
    assert metrics["eval_novelty_gate_gated_fraction"] == pytest.approx(
        float((familiarity < saved.config.novelty_gate_threshold).float().mean()))
    assert {"eval_novelty_gate_floor_R@1_ungated", "eval_novelty_gate_floor_R@1_gated"} <= set(metrics)
    with pytest.raises(ValueError, match=r"novelty_gate_alpha must be in \(0, 1\)"):
        ScotTrainingArguments(output_dir=str(tmp_path / "x"), novelty_gate_alpha=1.0)


def test_exclude_kinds_trains_without_a_kind_and_its_rows_can_be_evaluated_as_held_out(workspace, tmp_path):
    from datasets import load_dataset

    from trainers.grounding_gate import floor_recall, reference_floor_recall, validation_embeds
    from trainers.train import cached_held_out_dataset

    data = save_triplet_dataset(tmp_path / "kinds", with_kinds=True)
    model_args = ModelArguments(model_name_or_path=str(workspace["clip"]))
    training_args = ScotTrainingArguments(output_dir=str(tmp_path / "out"), dataset_name=str(data), max_steps=2,
                                          per_device_train_batch_size=8, seed=3, report_to="none")
    data_args = DataArguments(eval_fraction=0.25, embedding_cache_dir=str(tmp_path / "cache"), exclude_kinds=["size"])
    trainer = build_trainer(model_args, data_args, training_args)
    # the 16 'make it bigger' rows are in neither split: 48 colour rows, 4 distinct modifications
    assert len(trainer.train_dataset) + len(trainer.eval_dataset) == 48
    for dataset in (trainer.train_dataset, trainer.eval_dataset):
        assert len(torch.unique(validation_embeds(dataset)[1], dim=0)) == 4
    trainer.train()
    rows = load_dataset(str(data), split="train").filter(lambda kind: kind == "size", input_columns="kind")
    held_out = cached_held_out_dataset(trainer, rows, data_args, "the size rows")
    assert len(held_out) == 16 and "probe_floor_image_embeds" in held_out[0]
    gallery = trainer.train_dataset.cache.image_embeds
    for recall in (reference_floor_recall(held_out, gallery),
                   floor_recall(trainer.accelerator.unwrap_model(trainer.model).eval(), held_out, gallery)[0]):
        assert 0.0 <= recall <= 100.0 and recall * 16 / 100 == pytest.approx(round(recall * 16 / 100))
    # a kind that never occurs, and a dataset without the column, are refused before any encoding
    with pytest.raises(ValueError, match=r"exclude_kinds \['count'\] never occur"):
        build_trainer(model_args, DataArguments(eval_fraction=0.25, embedding_cache_dir=str(tmp_path / "cache"),
                                                exclude_kinds=["count"]), training_args)
    no_kinds = ScotTrainingArguments(output_dir=str(tmp_path / "out2"), dataset_name=str(workspace["data"]),
                                     max_steps=2, report_to="none")
    with pytest.raises(ValueError, match="has no column 'kind' to leave kinds of change out by"):
        build_trainer(model_args, DataArguments(eval_fraction=0.25, embedding_cache_dir=str(tmp_path / "cache"),
                                                exclude_kinds=["size"]), no_kinds)


def test_the_grounding_gate_alpha_is_selected_on_the_validation_slice_by_the_rule(workspace, tmp_path):
    from trainers.grounding_gate import GROUNDING_GATE_ALPHAS

    model_args, _, training_args = _arguments(workspace, tmp_path / "out", tmp_path / "cache", max_steps=2,
                                              grounding_gate_select=True)
    model_args.grounding_gate_neighbours = 2
    data_args = DataArguments(eval_fraction=0.25, embedding_cache_dir=str(tmp_path / "cache"))
    trainer = build_trainer(model_args, data_args, training_args)
    gate = {name.removeprefix("eval_grounding_gate_"): value
            for name, value in finish_training(trainer, trainer.train())["eval"].items()
            if name.startswith("eval_grounding_gate_")}
    # the statistic first, by the higher validation AUC (a tie keeps the sixth round's)
    statistic = "change" if gate["auc_change"] > gate["auc_lookalike"] else "lookalike"
    assert gate[f"statistic_{statistic}"] == 1.0 and gate["auc"] == gate[f"auc_{statistic}"]
    assert gate["statistic_change"] + gate["statistic_lookalike"] == 1.0
    recalls = {alpha: gate[f"floor_R@1_alpha_{alpha}"] for alpha in GROUNDING_GATE_ALPHAS}
    passing = [alpha for alpha, recall in recalls.items() if recall >= gate["floor_R@1_ungated"]]
    saved = ScotModel.from_pretrained(tmp_path / "out")
    if passing:  # the strictest α that keeps the ungated floor R@1, written into the saved config
        assert gate["selected"] == 1.0 and gate["alpha"] == min(passing)
        assert saved.config.grounding_gate_neighbours == 2
        assert saved.config.grounding_gate_threshold == pytest.approx(gate["threshold"])
        assert saved.config.grounding_gate_statistic == statistic
    else:  # every α loses: no gate
        assert gate["selected"] == 0.0 and saved.config.grounding_gate_neighbours == 0
    with pytest.raises(ValueError, match="grounding_gate_select chooses alpha on the validation slice"):
        ScotTrainingArguments(output_dir=str(tmp_path / "x"), grounding_gate_select=True, grounding_gate_alpha=0.5)
