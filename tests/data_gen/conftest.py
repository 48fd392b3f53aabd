import os

import pytest
import torch
from PIL import Image

from .tiny_llm import build_tiny_llm

CAPTIONS = [
    "a brown dog running on the beach",
    "a red car parked on a street",
    "two cats sleeping on a sofa",
    "a man wearing a blue shirt",
    "a wooden table with a white cup",
    "a girl holding a yellow umbrella",
    "an old bicycle against a brick wall",
    "a bowl of green apples on a counter",
]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """On small shared VMs (2 vCPUs here) two OpenMP threads make tiny-model generation up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """Folder of a tiny random llama + tokenizer (no download)."""
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


def make_image_folder(folder, num_images, captions=CAPTIONS):
    """`num_images` small PNGs with sidecar captions; captions are made unique with a number."""
    os.makedirs(folder, exist_ok=True)
    for index in range(num_images):
        Image.new("RGB", (8, 8), (index * 7 % 256, 90, 160)).save(os.path.join(folder, f"img{index:05d}.png"))
        with open(os.path.join(folder, f"img{index:05d}.txt"), "w") as handle:
            handle.write(f"{captions[index % len(captions)]} number {index}")
    return str(folder)


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "images", 24)
