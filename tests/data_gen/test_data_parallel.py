"""Two CPU processes (torchrun + accelerate) split the shards; the dataset equals the one-process dataset."""

import os
import subprocess
import sys

import pytest
from datasets import load_dataset

from data_gen.generate import main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_two_processes_split_the_shards_and_match_one_process(tiny_llm, image_folder, tmp_path):
    arguments = ["--image_folder", image_folder, "--model", tiny_llm, "--shard_size", "5", "--max_new_tokens", "8",
                 "--fallback", "templates", "--num_shots", "1"]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "data_gen.generate"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": REPO_ROOT}  # fmt: skip
    finished = subprocess.run(
        [*torchrun, *arguments, "--output_dir", str(tmp_path / "two")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "generating (process 1)" in finished.stderr  # really two processes

    main([*arguments, "--output_dir", str(tmp_path / "one")])
    two = load_dataset(str(tmp_path / "two"), split="train").remove_columns("image").to_list()
    one = load_dataset(str(tmp_path / "one"), split="train").remove_columns("image").to_list()
    assert two == one and len(one) == 24
