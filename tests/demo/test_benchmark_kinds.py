"""The multi-kind demo benchmark on drawn stamps: every kind's folder is a valid CIRR val split whose answers are the
changes the texts name."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from demo.benchmark import KINDS, build_kinds_benchmark, is_addable_object, load_kinds, object_phrase

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}


def _stamp(shape: str) -> Image.Image:
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    if shape == "arrow":  # points right: its mirror image differs, but it is the same upside down
        draw.polygon([(2, 30), (30, 30), (30, 38), (38, 20), (30, 2), (30, 10), (2, 10)], fill=(20, 20, 20, 255))
    else:  # a disc: the same when flipped
        draw.ellipse((4, 4, 36, 36), fill=(20, 20, 20, 255))
    return image


def _tinted(image, colour):
    rgba = np.asarray(image, dtype=np.float32)
    rgba[..., :3] = COLOURS[colour]
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, Image.fromarray(rgba.astype(np.uint8))).convert("RGB").resize((32, 32))


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    stamps = [("arrow", _stamp("arrow"), "an arrow"), ("disc", _stamp("disc"), "a disc"), ("nine", _stamp("arrow"),
                                                                                          "nine")]
    root = tmp_path_factory.mktemp("kinds")
    return root, build_kinds_benchmark(stamps, _tinted, COLOURS, root, size=32)


def _read(folder):
    captions = json.loads((folder / "cirr" / "captions" / "cap.rc2.val.json").read_text())
    split = json.loads((folder / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    return captions, split


def test_every_kind_is_a_cirr_split_with_known_answers(benchmark):
    root, summary = benchmark
    assert list(summary) == list(KINDS) and list(load_kinds(root)) == list(KINDS)
    for kind, folder in load_kinds(root).items():
        captions, split = _read(folder)
        assert summary[kind]["num_queries"] == len(captions) > 0
        for query in captions:
            assert query["reference"] != query["target_hard"]
            assert {query["reference"], query["target_hard"]} <= set(query["img_set"]["members"]) <= set(split)
            assert (folder / split[query["target_hard"]]).is_file() and query["caption"].strip()


def test_counts_per_kind(benchmark):
    _, summary = benchmark
    assert summary["colour"]["num_queries"] == 3 * 2  # 3 stamps x (2 colours -> the other)
    assert summary["count"]["num_queries"] == 3 * 6  # 1/2/3 copies, every ordered pair
    assert summary["background"]["num_queries"] == 3 * 2 * 2  # white -> each colour and back
    # add_object: only noun-phrase captions are added ("nine" is not), never to themselves: arrow + disc,
    # disc + arrow, nine + either
    assert summary["add_object"]["num_queries"] == 1 + 1 + 2
    # orientation: a flip that changes nothing asks nothing (the disc either way, the arrow upside down); each
    # of the two arrows: mirrored, there and back
    assert summary["orientation"]["num_queries"] == 2 * 2


def test_texts_name_the_change(benchmark):
    root, _ = benchmark
    add_captions, _ = _read(root / "add_object")
    for query in add_captions:
        partner = query["target_hard"].split("-with-")[1]
        assert {"arrow": "an arrow", "disc": "a disc"}[partner] in query["caption"]
    count_captions, _ = _read(root / "count")
    words = {1: ("one",), 2: ("two", "pair"), 3: ("three",)}
    for query in count_captions:
        target_count = int(query["target_hard"].rsplit("-x", 1)[1])
        assert any(word in query["caption"] for word in words[target_count])


def test_count_variants_differ(benchmark):
    root, _ = benchmark
    dark = [(np.asarray(Image.open(root / "count" / "dev" / f"arrow-x{count}.png").convert("L")) < 128).sum()
            for count in (1, 2, 3)]
    assert dark[0] > 0 and len(set(dark)) == 3


def test_object_phrases():
    assert object_phrase("dollar sign") == "a dollar sign" and object_phrase("an alien tree") == "an alien tree"
    assert is_addable_object("a kangaroo") and not is_addable_object("the sign for the letter b")
