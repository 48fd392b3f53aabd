"""Checkpoint folders are complete or absent (issue 12, item 12): `ScotTrainer` stages each save and publishes it by a
rename; resume skips, with a warning, what an interrupted save left."""

import errno
import io
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.tiny_backbones import save_tiny_clip
from tests.trainers.triplet_fixtures import save_triplet_dataset
from trainers.checkpoints import checkpoint_problem, last_complete_checkpoint, publish_checkpoint, staging_folder
from trainers.train import build_trainer, checkpoint_to_resume, main
from trainers.trainer import ScotTrainer
from trainers.training_args import DataArguments, ModelArguments, ScotTrainingArguments


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {"clip": save_tiny_clip(root / "clip"), "data": save_triplet_dataset(root / "data")}


def test_a_full_disk_during_a_checkpoint_leaves_no_checkpoint_and_the_rerun_resumes_from_the_last_one(
        workspace, tmp_path, monkeypatch, caplog):
    config = tmp_path / "run.yaml"
    out = tmp_path / "out"
    config.write_text(f"model_name_or_path: {workspace['clip']}\ndataset_name: {workspace['data']}\n"
                      f"eval_fraction: 0.0\nembedding_cache_dir: {tmp_path / 'cache'}\noutput_dir: {out}\n"
                      "per_device_train_batch_size: 8\nmax_steps: 8\nlearning_rate: 0.001\nsave_steps: 4\n"
                      "logging_steps: 4\nseed: 3\nreport_to: none\ndisable_tqdm: true\n")
    real_save = torch.save

    def save_until_the_disk_is_full(obj, file, *args, **kwargs):
        # the second checkpoint's optimizer.pt: half of it reaches the disk, then the disk is full
        if isinstance(file, (str, Path)) and str(file).endswith("checkpoint-8/optimizer.pt"):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            Path(file).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(OSError, match="No space left on device"):
        main([str(config)])
    assert checkpoint_problem(out / "checkpoint-4") is None
    assert not (out / "checkpoint-8").exists()  # not a checkpoint-8 with a truncated optimizer.pt
    assert (out / "incomplete-checkpoint-8" / "checkpoint-8" / "optimizer.pt").is_file()  # clearly named

    monkeypatch.setattr(torch, "save", real_save)
    steps = []
    training_step = ScotTrainer.training_step

    def counted_training_step(self, *args, **kwargs):
        steps.append(self.state.global_step)
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(ScotTrainer, "training_step", counted_training_step)
    with caplog.at_level(logging.WARNING, logger="trainers"):
        main([str(config)])  # the same command again
    assert steps == [4, 5, 6, 7]  # resumed from checkpoint-4
    assert "incomplete-checkpoint-8 holds a checkpoint save that did not finish" in caplog.text
    assert checkpoint_problem(out / "checkpoint-8") is None  # saved again, complete
    assert not (out / "incomplete-checkpoint-8").exists()  # the leftover was replaced by the new save
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 8


def _fake_checkpoint(folder: Path, step: int) -> Path:
    """The files Trainer writes into a checkpoint (weights, optimizer, state last), small."""
    folder.mkdir(parents=True)
    save_file({"combiner.weight": torch.ones(4, 4)}, str(folder / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.zeros(64)}}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "a truncated optimizer.pt": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt is truncated"),
    "a truncated model.safetensors": (lambda c: _truncate(c / "model.safetensors"), "model.safetensors is truncated"),
    "no trainer_state.json": (lambda c: (c / "trainer_state.json").unlink(), "has no trainer_state.json"),
    "a truncated trainer_state.json": (lambda c: _truncate(c / "trainer_state.json"),
                                       "trainer_state.json is unreadable or truncated"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_skips_an_incomplete_last_checkpoint_with_a_warning(tmp_path, caplog, damage):
    # what Trainer's in-place save (or an older version of this package) leaves when the disk fills up
    damage_folder, problem = DAMAGES[damage]
    complete = _fake_checkpoint(tmp_path / "checkpoint-4", 4)
    damaged = _fake_checkpoint(tmp_path / "checkpoint-8", 8)
    damage_folder(damaged)
    assert problem in checkpoint_problem(damaged)
    with caplog.at_level(logging.WARNING, logger="trainers"):
        assert checkpoint_to_resume(ScotTrainingArguments(output_dir=str(tmp_path))) == str(complete)
    assert f"Skipping the incomplete checkpoint {damaged}" in caplog.text and problem in caplog.text
    with pytest.raises(ValueError, match=rf"Cannot resume from '{damaged}': .*{problem}"):
        checkpoint_to_resume(ScotTrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint=str(damaged)))


def test_no_complete_checkpoint_means_step_zero(tmp_path):
    _fake_checkpoint(staging_folder(tmp_path, 4) / "checkpoint-4", 4)
    assert last_complete_checkpoint(tmp_path) is None
    assert checkpoint_to_resume(ScotTrainingArguments(output_dir=str(tmp_path / "absent"))) is None


def test_publishing_replaces_an_earlier_save_of_the_same_step(tmp_path):
    earlier = _fake_checkpoint(tmp_path / "checkpoint-4", 4)
    (earlier / "stale.txt").write_text("from the earlier run")
    staged = _fake_checkpoint(staging_folder(tmp_path, 4) / "checkpoint-4", 4)
    (staged / "trainer_state.json").write_text(json.dumps({"global_step": 4, "run": "new"}))
    notes = tmp_path / "notes.txt"  # not ours: untouched
    notes.write_text("mine")
    publish_checkpoint(staged, earlier)
    assert json.loads((earlier / "trainer_state.json").read_text())["run"] == "new"
    assert not (earlier / "stale.txt").exists() and not staging_folder(tmp_path, 4).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "notes.txt"]


def test_staged_checkpoints_keep_the_best_model_record_and_the_rotation(workspace, tmp_path):
    # Trainer records the best checkpoint and rotates old ones by folder name: both must see the published names
    model_args = ModelArguments(model_name_or_path=str(workspace["clip"]))
    data_args = DataArguments(eval_fraction=0.25, embedding_cache_dir=str(tmp_path / "cache"))
    training_args = ScotTrainingArguments(
        output_dir=str(tmp_path / "out"), dataset_name=str(workspace["data"]), per_device_train_batch_size=8,
        max_steps=6, learning_rate=1e-3, eval_strategy="steps", eval_steps=2, save_steps=2, save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="loss", seed=3, report_to="none", disable_tqdm=True)
    trainer = build_trainer(model_args, data_args, training_args)
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.parent == tmp_path / "out" and best.name in {"checkpoint-2", "checkpoint-4", "checkpoint-6"}
    folders = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert folders == sorted({best.name, "checkpoint-6"})  # rotated to the limit, the best one kept
    for name in folders:
        recorded = json.loads((tmp_path / "out" / name / "trainer_state.json").read_text())["best_model_checkpoint"]
        assert Path(recorded).parent == tmp_path / "out" and Path(recorded).name.startswith("checkpoint-")
