"""The demo CIR benchmark: CIRR layout that the evaluation code reads unchanged, answers known by construction."""

import json

import numpy as np
from PIL import Image, ImageDraw

from demo.benchmark import build_colour_benchmark
from demo.data import TINT_COLOURS, prepare_image, tint
from demo.report import metrics_table
from scot_eval.benchmarks import check_benchmark, load_benchmark


def _black_stamp(shape: str) -> Image.Image:
    """Drawn like Tux Paint's colorable stamps: black on transparent."""
    image = Image.new("RGBA", (60, 60), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)
    (pen.ellipse if shape == "circle" else pen.rectangle)((8, 8, 52, 52), fill=(0, 0, 0, 255))
    return image


def test_black_stamps_get_visibly_different_tints():
    red, blue = (np.asarray(prepare_image(tint(_black_stamp("circle"), c), 32), dtype=np.float32)
                 for c in ("red", "blue"))
    assert np.abs(red - blue).mean() > 8  # black x colour would leave both black


def test_colour_benchmark_in_cirr_layout(tmp_path):
    stamps = [("circle", _black_stamp("circle")), ("square", _black_stamp("square"))]
    root = build_colour_benchmark(stamps, lambda image, colour: prepare_image(tint(image, colour), 32),
                                  tuple(TINT_COLOURS), tmp_path / "bench")
    queries = json.loads((root / "cirr/captions/cap.rc2.val.json").read_text())
    split = json.loads((root / "cirr/image_splits/split.rc2.val.json").read_text())
    colours = len(TINT_COLOURS)
    assert len(split) == 2 * colours and len(queries) == 2 * colours * (colours - 1)
    for query in queries:
        stamp = query["reference"].rsplit("-", 1)[0]
        assert query["target_hard"].startswith(stamp + "-") and query["target_hard"] != query["reference"]
        assert query["target_hard"].rsplit("-", 1)[1] in query["caption"]  # the text names the target colour
        assert sorted(query["img_set"]["members"]) == sorted(f"{stamp}-{c}" for c in TINT_COLOURS)
        assert (root / split[query["target_hard"]]).is_file()

    (task,) = load_benchmark("cirr", root, "val")  # the evaluation code reads it as it is
    assert len(task.queries) == len(queries) and len(task.gallery) == len(split) and not task.missing_images
    counts = check_benchmark("cirr", root, ["val"], show_progress=False)["splits"]["val"]
    assert counts["queries_with_targets"] == len(queries) and counts["unreadable_images"] == 0
    assert counts["queries_to_skip"] == 0


def test_metrics_table_lists_every_method():
    table = metrics_table({"image": {"R@1": 1.0, "R@5": 2.0}, "scot": {"R@1": 3.25, "R@5": 4.0}})
    lines = table.splitlines()
    assert lines[0] == "| method | R@1 | R@5 |" and len(lines) == 4
    # one decimal, as the papers' tables
    scot_name = ("SCOT (Combiner, SCOT loss, text + image targets retrieved by caption and reference, image anchor, "
                 "image floor, grounding gate where validation selects it)")
    assert f"| {scot_name} | 3.2 | 4.0 |" in table
