"""Generation killed with SIGKILL half-way, then rerun: every input row ends up in the dataset exactly once."""

import glob
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from datasets import Dataset, Features, Image, Value, load_dataset
from PIL import Image as PILImage

from data_gen.dataset_io import IncompleteDatasetError, check_complete

from .conftest import CAPTIONS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_ROWS, SHARD_SIZE = 2400, 40


def _source_dataset(folder):
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), "green").save(buffer, format="PNG")
    captions = [f"{CAPTIONS[i % len(CAPTIONS)]} number {i}" for i in range(NUM_ROWS)]
    images = [{"bytes": buffer.getvalue(), "path": None}] * NUM_ROWS
    Dataset.from_dict(
        {"image": images, "caption": captions},
        features=Features({"image": Image(), "caption": Value("string")}),
    ).save_to_disk(folder)


@pytest.mark.slow
def test_kill_9_midway_then_resume_loses_and_duplicates_nothing(tiny_llm, tmp_path):
    _source_dataset(tmp_path / "source")
    output_dir = tmp_path / "triplets"
    command = [
        sys.executable, "-m", "data_gen.generate",
        "--dataset", str(tmp_path / "source"), "--source_name", "src", "--output_dir", str(output_dir),
        "--model", tiny_llm, "--max_new_tokens", "24", "--batch_size", "8", "--shard_size", str(SHARD_SIZE),
        "--fallback", "templates", "--num_shots", "1",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO_ROOT}
    num_shards = NUM_ROWS // SHARD_SIZE

    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_marks = os.path.join(output_dir, ".generation", "shard-*.json")
    deadline = time.time() + 120
    while len(glob.glob(done_marks)) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, (
        f"generation ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    )
    process.send_signal(signal.SIGKILL)
    process.wait()
    shards_at_kill = len(glob.glob(done_marks))
    assert 3 <= shards_at_kill < num_shards, "the kill must land mid-run"
    # Issue 12, item 6: the killed run's folder is not read as a smaller dataset
    with pytest.raises(IncompleteDatasetError, match="rerun"):
        check_complete(output_dir)
    with pytest.raises(FileNotFoundError):
        load_dataset(str(output_dir), split="train")

    finished = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]

    triplets = load_dataset(str(output_dir), split="train")
    counts = Counter(triplets["id"])
    expected = {f"src:{i}" for i in range(NUM_ROWS)}
    assert set(counts) == expected and max(counts.values()) == 1
    assert len(glob.glob(os.path.join(output_dir, "data", f"train-*-of-{num_shards:05d}.parquet"))) == num_shards
    assert not glob.glob(os.path.join(output_dir, "**", "*.tmp*"), recursive=True, include_hidden=True)
    assert f"num_examples: {NUM_ROWS}" in open(os.path.join(output_dir, "README.md")).read()
    assert triplets[0]["image"].size == (8, 8)
    assert check_complete(output_dir) is True
