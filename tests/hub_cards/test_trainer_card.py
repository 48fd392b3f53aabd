"""`ScotTrainer` writes a model card with every save: training settings, data size, and the CIR benchmark results
logged for the saved weights (none before the first evaluation)."""

import json
import logging

import pytest
from huggingface_hub import ModelCard
from transformers import AutoModel

from tests.hub_cards.front_matter import front_matter, model_index_metrics
from tests.tiny_backbones import save_tiny_clip
from tests.trainers.cir_fixtures import build_cirr
from tests.trainers.triplet_fixtures import save_triplet_dataset
from trainers.train import (
    DataArguments,
    ModelArguments,
    ScotTrainingArguments,
    build_trainer,
)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """4 steps on the 64-row triplet dataset (48 train / 16 held out) with CIRR evaluated by the trainer."""
    root = tmp_path_factory.mktemp("card_training")
    model_args = ModelArguments(model_name_or_path=str(save_tiny_clip(root / "clip")))
    data_args = DataArguments(eval_fraction=0.25, embedding_cache_dir=str(root / "cache"))
    training_args = ScotTrainingArguments(output_dir=str(root / "out"), per_device_train_batch_size=16, max_steps=4,
                                          learning_rate=1e-3, logging_steps=2, save_strategy="no", seed=0,
                                          report_to="none", disable_tqdm=True,
                                          dataset_name=str(save_triplet_dataset(root / "data")), cir_benchmark="cirr",
                                          cir_data_dir=str(build_cirr(root / "cirr")))
    trainer = build_trainer(model_args, data_args, training_args)
    trainer.train()
    return trainer


def test_a_save_before_any_evaluation_has_a_card_without_model_index(trainer, tmp_path):
    trainer.save_model(str(tmp_path / "saved"))
    metadata = front_matter(tmp_path / "saved" / "README.md")
    assert metadata["library_name"] == "transformers" and "scot" in metadata["tags"]
    assert "model-index" not in metadata
    assert "datasets" not in metadata  # a temporary folder is no Hub dataset id
    text = (tmp_path / "saved" / "README.md").read_text()
    assert "48 training triplets, 16 held out" in text
    # 4 steps of 16 over 48 training rows: 1.33 epochs
    assert "Steps: 4 (1.33 epochs); batch 16 per device × 1 process × 1 accumulation step = 16 triplets" in text
    assert "learning rate 0.001" in text and "seed 0" in text and "Not evaluated" in text
    last_loss = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry][-1]
    assert f"Last logged training loss: {round(last_loss, 4)} (step 4)" in text
    assert type(AutoModel.from_pretrained(tmp_path / "saved")).__name__ == "ScotModel"  # the card broke nothing


def test_after_evaluation_the_card_carries_the_logged_benchmark_results(trainer, tmp_path):
    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "saved"))
    index = model_index_metrics(front_matter(tmp_path / "saved" / "README.md"))
    expected = {("cirr", None, "val", metric_type, None): round(metrics[f"eval_cirr_{name}"], 2)
                for name, metric_type in (("R@1", "recall@1"), ("R@5", "recall@5"), ("R@10", "recall@10"),
                                          ("R@50", "recall@50"), ("Rsubset@1", "recall_subset@1"),
                                          ("Rsubset@2", "recall_subset@2"), ("Rsubset@3", "recall_subset@3"))}
    assert index == expected
    card = ModelCard.load(tmp_path / "saved" / "README.md")
    assert card.data.model_name == "out"
    # the held-out proxy recall is reported in the training section, not as a benchmark
    assert f"| {metrics['eval_loss']:.4f} | {metrics['eval_R@1']:.2f} | {metrics['eval_R@5']:.2f} |" in card.text


def test_a_card_failure_never_costs_the_save(trainer, tmp_path, monkeypatch, caplog):
    import hub_cards

    def broken(*args, **kwargs):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(hub_cards, "render_model_card", broken)
    with caplog.at_level(logging.WARNING, logger="trainers.trainer"):
        trainer.save_model(str(tmp_path / "saved"))
    saved = tmp_path / "saved"
    assert (saved / "model.safetensors").is_file() and (saved / "training_args.json").is_file()
    assert not (saved / "README.md").exists()
    assert "template exploded" in caplog.text


def test_demo_card_indexes_only_the_model_and_compares_the_baselines(trainer, tmp_path):
    from demo.run import write_model_card
    from scot_eval.evaluation import evaluate_benchmark

    folder = tmp_path / "scot-demo"
    trainer.save_model(str(folder))
    trainer.save_state()  # trainer_state.json: the training record the demo card reads
    scot_model = trainer.accelerator.unwrap_model(trainer.model)
    data_dir = trainer.args.cir_data_dir
    metrics = {method: {key: round(value, 2) for key, value in evaluate_benchmark(
        scot_model, trainer.processing_class, "cirr", data_dir, "val", method, cache_dir=tmp_path / "cache",
        show_progress=False)["metrics"].items()} for method in ("image", "text", "sum", "scot")}
    # the demo's benchmark has one CIRR folder per kind of change; the same folder stands in for two kinds here
    per_kind = {"colour": metrics, "count": metrics}
    backbone_report = {"heldout": {"image_to_text": {"R@1": 8.1, "R@5": 20.1}, "captions": 654}}
    write_model_card(folder, folder, per_kind, {"kept_rows": 64}, backbone_report)
    metadata = front_matter(folder / "README.md")
    assert metadata["license"] == "apache-2.0"
    index = model_index_metrics(metadata)
    assert {key[0] for key in index} == {"scot-demo-colour", "scot-demo-count"}  # the model's rows only
    recall_at_1 = {key[0]: value for key, value in index.items() if key[3] == "recall@1"}
    assert recall_at_1 == {"scot-demo-colour": metrics["scot"]["R@1"], "scot-demo-count": metrics["scot"]["R@1"]}
    text = (folder / "README.md").read_text()
    from demo.report import METHOD_NAMES  # the demo names its methods in one place, the card included

    for method in ("image", "text", "scot"):
        assert f"| {METHOD_NAMES[method]} | {metrics[method]['R@1']:.2f} | {metrics[method]['R@5']:.2f} |" in text
    assert json.loads((folder / "config.json").read_text())["model_type"] == "scot"
