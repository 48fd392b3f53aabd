"""Map-to-Compose's two stages through trainers/train.py (trainers/pseudo_word.py) on tiny random backbones: stage 1
then stage 2 end to end, the merged model reloading through AutoModel without peft, exact resume mid-stage, the
embedding cache's image token features, and the stage argument's checks."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from modeling_scot import ScotModel, ScotProcessor
from tests.tiny_backbones import save_tiny_clip, save_tiny_dual_encoder
from tests.trainers.triplet_fixtures import StopAt, draw, save_triplet_dataset
from trainers.embedding_cache import EmbeddingCache
from trainers.pseudo_word import ImageCaptionPairs, PseudoWordComposingTrainer, PseudoWordMappingTrainer
from trainers.train import build_trainer, main
from trainers.training_args import DataArguments, ModelArguments, ScotTrainingArguments

ATOL = 1e-6


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo_word_training")
    return {"root": root, "clip": save_tiny_clip(root / "clip"),
            "dual_encoder": save_tiny_dual_encoder(root / "dual_encoder"),
            "data": save_triplet_dataset(root / "data")}


def _flags(**settings) -> list[str]:
    return [part for name, value in settings.items() for part in (f"--{name}", str(value))]


def _common(workspace, cache_dir, output_dir, **extra) -> list[str]:
    return _flags(dataset_name=workspace["data"], embedding_cache_dir=cache_dir, output_dir=output_dir,
                  per_device_train_batch_size=16, per_device_eval_batch_size=16, learning_rate=1e-3, logging_steps=2,
                  seed=0, report_to="none", disable_tqdm="true", dataloader_pin_memory="false", **extra)


def _composed(model, processor) -> torch.Tensor:
    inputs = processor(images=[draw("circle", "red"), draw("bar", "blue")], text=["make it green", "make it bigger"],
                       return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**inputs).composed_embeds


@pytest.mark.slow
@pytest.mark.parametrize("family", ["clip", "dual_encoder"])
def test_stage_1_then_stage_2_through_the_script(workspace, tmp_path, family, monkeypatch):
    stage_1, stage_2, cache = tmp_path / "stage-1", tmp_path / "stage-2", tmp_path / "cache"
    main(_flags(model_name_or_path=workspace[family], composer="pseudo_word", num_pseudo_tokens=2,
                composer_stage="mapping") + _common(workspace, cache, stage_1, max_steps=4, eval_fraction=0.25))
    # stage 1 trained on the distinct (image, caption) pairs: 16 in the 64 triplets, 12 after the held-out quarter
    assert (stage_1 / "eval_results.json").is_file()
    mapped = ScotModel.from_pretrained(stage_1)
    backbone = ScotModel.from_backbone(workspace[family], composer="pseudo_word", num_pseudo_tokens=2)
    torch.testing.assert_close(mapped.encoder.state_dict(), backbone.encoder.state_dict(), atol=0, rtol=0)

    main(_flags(model_name_or_path=stage_1, composer_stage="composing")
         + _common(workspace, cache, stage_2, max_steps=4, save_steps=4, eval_fraction=0.25))
    final = load_file(stage_2 / "model.safetensors")
    assert not any("lora_" in name for name in final), "the adapters are merged before the final save"
    checkpoint = load_file(stage_2 / "checkpoint-4" / "model.safetensors")
    assert any("lora_" in name for name in checkpoint), "checkpoints keep the adapters active (to resume)"

    # stage 2 changed the text encoder only: the mapping network and the image side are stage 1's
    for name, value in load_file(stage_1 / "model.safetensors").items():
        text_side = ".text_model." in f".{name}" or "text_projection" in name
        if not text_side:
            torch.testing.assert_close(final[name], value, atol=0, rtol=0, msg=name)
    assert any(not torch.equal(final[name], value) for name, value in load_file(stage_1 / "model.safetensors").items()
               if ".text_model." in f".{name}")

    # the active-adapter checkpoint of the last step (needs peft) and the merged model (loaded without it) agree
    processor = ScotProcessor.from_pretrained(stage_2)
    expected = _composed(ScotModel.from_pretrained(stage_2 / "checkpoint-4"), processor)
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now fails
    reloaded = AutoModel.from_pretrained(stage_2)
    assert type(reloaded) is ScotModel and reloaded.config.pseudo_word_lora_state == "merged"
    torch.testing.assert_close(_composed(reloaded, processor), expected, atol=ATOL, rtol=0)


def _arguments(workspace, folder, output_dir, cache_dir, stage, **training):
    model_args = ModelArguments(model_name_or_path=str(folder), **(
        {"composer": "pseudo_word", "num_pseudo_tokens": 2} if stage == "mapping" else {}))
    data_args = DataArguments(eval_fraction=0.0, embedding_cache_dir=str(cache_dir))
    training = {"per_device_train_batch_size": 8, "max_steps": 8, "learning_rate": 1e-3, "save_steps": 100,
                "logging_steps": 4, "seed": 3, "report_to": "none", "disable_tqdm": True,
                "dataloader_pin_memory": False, **training}
    training_args = ScotTrainingArguments(output_dir=str(output_dir), dataset_name=str(workspace["data"]),
                                          composer_stage=stage, **training)
    return model_args, data_args, training_args


@pytest.fixture(scope="module")
def stage_1_model(workspace, tmp_path_factory):
    """A short stage-1 run on the tiny dual encoder (the demo's kind of backbone): stage 2's starting point."""
    root = tmp_path_factory.mktemp("stage_1")
    trainer = build_trainer(*_arguments(workspace, workspace["dual_encoder"], root / "out", root / "cache", "mapping",
                                        max_steps=2))
    trainer.train()
    trainer.save_model()
    return root / "out"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["mapping", "composing"])
def test_resume_mid_stage_continues_exactly(workspace, stage_1_model, tmp_path, stage):
    # 8 steps straight against 4 steps + stop + resume from checkpoint-4 (dropout in the mapper and LoRA, and the
    # data order, depend on the RNG and sampler states the checkpoint restores)
    folder = workspace["dual_encoder"] if stage == "mapping" else stage_1_model
    trainer_class = PseudoWordMappingTrainer if stage == "mapping" else PseudoWordComposingTrainer
    straight = build_trainer(*_arguments(workspace, folder, tmp_path / "straight", tmp_path / "cache", stage))
    assert type(straight) is trainer_class
    straight.train()
    interrupted = build_trainer(*_arguments(workspace, folder, tmp_path / "resumed", tmp_path / "cache", stage),
                                callbacks=[StopAt(4)])
    interrupted.train()
    assert (tmp_path / "resumed" / "checkpoint-4").is_dir()
    resumed = build_trainer(*_arguments(workspace, folder, tmp_path / "resumed", tmp_path / "cache", stage))
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4"))
    assert resumed.state.global_step == 8

    def trained(model) -> dict[str, torch.Tensor]:
        return {name: parameter.detach() for name, parameter in model.named_parameters() if parameter.requires_grad}

    expected, actual = trained(straight.model), trained(resumed.model)
    assert expected and expected.keys() == actual.keys()
    if stage == "composing":
        assert all(".lora_" in name for name in expected), "stage 2 trains the LoRA weights only"
    else:
        assert all(name.startswith("pseudo_word_mapper.") for name in expected), "stage 1 trains the mapper only"
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=ATOL, rtol=0, msg=name)
    fresh = build_trainer(*_arguments(workspace, folder, tmp_path / "fresh", tmp_path / "cache", stage)).model
    assert any(not torch.allclose(trained(fresh)[name], expected[name]) for name in expected)


def test_the_cache_holds_fp16_image_tokens_and_stage_1_counts_each_pair_once(workspace, stage_1_model, tmp_path):
    trainer = build_trainer(*_arguments(workspace, workspace["dual_encoder"], tmp_path / "out", tmp_path / "cache",
                                        "mapping"))
    pairs = trainer.train_dataset
    assert isinstance(pairs, ImageCaptionPairs)
    assert len(pairs) == 16  # 64 triplets over 16 (shape, colour) images, one caption each
    cache: EmbeddingCache = pairs.cache
    tokens = cache.image_features["image_token_embeds"]
    assert tokens.dtype == torch.float16 and tokens.shape[0] == len(cache.image_embeds) == 16
    item = pairs[0]
    assert set(item) == {"image_embeds", "image_token_embeds", "caption_embeds"}
    assert item["image_token_embeds"].dtype == torch.float32
    # the same rows for a Combiner land in another cache entry, without token features
    combiner = build_trainer(ModelArguments(model_name_or_path=str(workspace["dual_encoder"])),
                             DataArguments(eval_fraction=0.0, embedding_cache_dir=str(tmp_path / "cache")),
                             ScotTrainingArguments(output_dir=str(tmp_path / "combiner"), max_steps=1,
                                                   dataset_name=str(workspace["data"]), report_to="none"))
    assert combiner.train_dataset.cache.image_features == {}
    assert combiner.train_dataset.cache.folder != cache.folder


def test_the_stage_must_suit_the_model(workspace, stage_1_model, tmp_path):
    with pytest.raises(ValueError, match="composer_stage must be one of"):
        ScotTrainingArguments(output_dir=str(tmp_path), composer_stage="stage-1")
    model_args, data_args, training_args = _arguments(workspace, workspace["clip"], tmp_path / "a", tmp_path / "c",
                                                      "mapping")
    with pytest.raises(ValueError, match="leave composer_stage unset"):
        build_trainer(ModelArguments(model_name_or_path=str(workspace["clip"])), data_args, training_args)
    training_args.composer_stage = None
    with pytest.raises(ValueError, match="set composer_stage 'mapping'"):
        build_trainer(model_args, data_args, training_args)
    training_args.composer_stage = "composing"
    data_args.use_embedding_cache = False
    with pytest.raises(ValueError, match="set use_embedding_cache true"):
        build_trainer(ModelArguments(model_name_or_path=str(stage_1_model)), data_args, training_args)
    data_args.use_embedding_cache = True
    training_args.composer_stage = "mapping"
    data_args.target = "retrieved_image"
    with pytest.raises(ValueError, match="choose stage 2's supervision"):
        build_trainer(ModelArguments(model_name_or_path=str(stage_1_model)), data_args, training_args)


def test_stage_2_trains_towards_retrieved_images(workspace, stage_1_model, tmp_path):
    model_args, data_args, training_args = _arguments(workspace, stage_1_model, tmp_path / "out", tmp_path / "cache",
                                                      "composing", max_steps=2)
    data_args.target = "retrieved_image"
    trainer = build_trainer(model_args, data_args, training_args)
    item = trainer.train_dataset[0]
    cache = trainer.train_dataset.triplets.cache
    # the target is one of the training images (not the modified caption's text embedding)
    assert any(torch.equal(item["modified_caption_embeds"], image) for image in cache.image_embeds)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    assert {"input_ids", "attention_mask", "image_token_embeds", "modified_caption_embeds"} <= set(batch)
    assert "text_embeds" not in batch
    trainer.train()
    assert Path(tmp_path / "out").is_dir() and trainer.state.global_step == 2
