"""Fixtures of the scot_search tests: a small gallery folder of drawn images (plus a broken file and a non-image) and
its index, built with the tiny random SCOT model of tests/conftest.py."""

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220)}
SHAPES = ("circle", "square", "triangle", "bar")


def draw(shape: str, colour: tuple[int, int, int], size: int = 48) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    box = (8, 8, size - 8, size - 8)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    elif shape == "triangle":
        pen.polygon([(size // 2, 6), (size - 6, size - 6), (6, size - 6)], fill=colour)
    else:
        pen.rectangle((size // 2 - 6, 4, size // 2 + 6, size - 4), fill=colour)
    return image


def write_gallery(folder: Path) -> Path:
    """12 PNGs in two sub-folders, one file that is not a PNG despite its name, and one text file."""
    for shape in SHAPES:
        for name, colour in COLOURS.items():
            sub = folder / ("round" if shape == "circle" else "angular")
            sub.mkdir(parents=True, exist_ok=True)
            draw(shape, colour).save(sub / f"{shape}-{name}.png")
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="session")
def gallery_folder(tmp_path_factory) -> Path:
    return write_gallery(tmp_path_factory.mktemp("gallery"))


@pytest.fixture(scope="session")
def gallery_index(tmp_path_factory, gallery_folder, scot_folder) -> Path:
    """The gallery indexed by `scot-search index` (exact flat index)."""
    from scot_search.cli import main

    output = tmp_path_factory.mktemp("index") / "gallery-index"
    assert main(["index", str(gallery_folder), "--model", str(scot_folder), "--output", str(output),
                 "--batch_size", "5", "--chunk_size", "5"]) == 0
    return output
