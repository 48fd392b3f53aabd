"""Fixtures of the scot_search tests: a small gallery folder of drawn images (plus a broken file and a non-image) and
its index, built with the tiny random SCOT model of tests/conftest.py."""

from pathlib import Path

import pytest

from tests.trainers.triplet_fixtures import draw  # the coloured shapes of the training tests

COLOURS = ("red", "green", "blue")
SHAPES = ("circle", "square", "triangle", "bar")


def write_gallery(folder: Path) -> Path:
    """12 PNGs in two sub-folders, one file that is not a PNG despite its name, one text file, and hidden files that
    are no images (never listed, never served)."""
    for shape in SHAPES:
        for name in COLOURS:
            sub = folder / ("round" if shape == "circle" else "angular")
            sub.mkdir(parents=True, exist_ok=True)
            draw(shape, name).save(sub / f"{shape}-{name}.png")
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".env").write_text("API_TOKEN=secret\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[remote \"origin\"]\n")
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
