"""Demo data: caption cleaning, tints, the series split, and a small build from the real Debian files."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo import data

needs_tuxpaint = pytest.mark.skipif(
    not data.TUXPAINT_STAMPS_DIR.is_dir(),
    reason="Debian tuxpaint-stamps-default is not installed (apt-get install -y --no-install-recommends "
    "tuxpaint-stamps-default)",
)
needs_all_sources = pytest.mark.skipif(
    not (data.TUXPAINT_STAMPS_DIR.is_dir() and data.OPENCLIPART_PNG_DIR.is_dir() and data.NOTO_EMOJI_FONT.is_file()),
    reason="needs Debian tuxpaint-stamps-default, openclipart-png and fonts-noto-color-emoji",
)


@pytest.mark.parametrize(
    "description, caption",
    [
        ("A US 25 cent piece ($.25) called a quarter.", "a us 25 cent piece called a quarter"),
        ("Cent sign. 100 cents make 1 dollar.", "cent sign"),
        ("A Canadian dollar ($1.00) called a loonie. It’s named after the bird on the coin—a loon.",
         "a canadian dollar called a loonie"),
        ("Pedestrian Crossing (“PED XING”).", "pedestrian crossing"),
        ("Grandma’s old rag doll.", "grandma's old rag doll"),
        ("Penguins are wining!", "penguins are wining"),
    ],
)
def test_clean_caption(description, caption):
    assert data.clean_caption(description) == caption


@pytest.mark.parametrize(
    "title, caption",
    [("SoftBlueCouch_02", "soft blue couch"), ("pantyhose10", "pantyhose"), ("AIGA_Symbol_Signs", "aiga symbol signs"),
     ("star_22pt03step", "star pt step")],
)
def test_clean_title(title, caption):
    assert data.clean_title(title) == caption


def test_title_from_file_name_drops_the_truncated_creator():
    assert data._title_from_file_name("acquila_architetto_franc_01", "Architetto Francesco Rollandin") == "acquila"


def test_tint_caption():
    assert data.tint_caption("a brown hat", "blue") == "a blue hat"
    assert data.tint_caption("an apple core", "red") == "a red apple core"


def test_split_is_by_series_and_stable():
    splits = {data.split_of(f"series {i}", 0.1) for i in range(200)}
    assert splits == {"train", "test"}
    assert data.split_of("openclipart/card", 0.1) == data.split_of("openclipart/card", 0.1)
    assert data.series_of("card 10") == data.series_of("card 3")


def _stamp_like():
    """A grey disc with a dark outline on a transparent background."""
    yy, xx = np.mgrid[:40, :40]
    radius = np.hypot(yy - 20, xx - 20)
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[radius < 15] = (200, 200, 200, 255)
    rgba[(radius >= 13) & (radius < 15)] = (30, 30, 30, 255)
    return Image.fromarray(rgba, mode="RGBA")


@pytest.mark.parametrize("colour", sorted(data.TINT_COLOURS))
def test_tint_keeps_the_shape_and_changes_the_colour(colour):
    stamp = _stamp_like()
    tinted = np.asarray(data.tint(stamp, colour))
    original = np.asarray(stamp)
    np.testing.assert_array_equal(tinted[..., 3], original[..., 3])  # same alpha: same shape
    fill = tinted[20, 20, :3].astype(int)
    np.testing.assert_allclose(fill, data.TINT_COLOURS[colour], atol=2)  # light fill takes the full colour
    assert tinted[20, 6, :3].max() < fill.max()  # the dark outline stays darker (shading kept)


def test_tint_rejects_an_unknown_colour():
    with pytest.raises(ValueError, match="Unknown tint colour 'teal'"):
        data.tint(_stamp_like(), "teal")


def test_prepare_image_crops_pads_and_resizes():
    canvas = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    canvas.paste(_stamp_like(), (150, 30))
    prepared = data.prepare_image(canvas, 32)
    assert prepared.size == (32, 32) and prepared.mode == "RGB"
    pixels = np.asarray(prepared)
    assert pixels[0, 0].tolist() == [255, 255, 255]  # white padding
    assert pixels[16, 16].max() < 255  # the content is centred and fills the square


def test_missing_debian_package_names_the_apt_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y --no-install-recommends tuxpaint-stamps-default"):
        data.tuxpaint_stamps(tmp_path / "nowhere")


@needs_tuxpaint
def test_benchmark_stamps_are_fixed_recolourable_and_unambiguous():
    stamps = data.benchmark_stamps()
    assert len(stamps) == data.NUM_BENCHMARK_STAMPS
    assert [s.path for s in stamps] == [s.path for s in data.benchmark_stamps()]
    assert all(s.recolourable and Path(s.path).is_file() for s in stamps)
    all_captions = [s.caption for s in data.tuxpaint_stamps()]
    assert all(all_captions.count(s.caption) == 1 for s in stamps)


@needs_all_sources
@pytest.mark.slow
def test_build_small_dataset(tmp_path):
    # reserve most recolourable stamps, so that keeping them out of the build is really exercised
    stats = data.build_demo_dataset(tmp_path / "data", image_size=32, limit=12, num_benchmark_stamps=150,
                                    progress=False)
    reserved = set(stats["benchmark_stamps"])
    assert len(reserved) > 50

    dataset = data.load_demo_dataset(tmp_path / "data")
    assert set(dataset) <= {"train", "test"} and "train" in dataset
    train = dataset["train"]
    columns = {"image", "caption", "source", "license", "series", "recolourable", "tint", "stamp_path"}
    assert columns <= set(train.column_names)
    assert set(train["source"]) == {"tuxpaint", "openclipart", "emoji"}
    assert train[0]["image"].size == (32, 32)
    assert all(caption and caption == caption.lower() for caption in train["caption"])

    # reserved benchmark stamps (and their tints) are in no split
    for split in dataset.values():
        assert not reserved & set(split["stamp_path"])
    # series never cross the split
    if "test" in dataset:
        assert not set(dataset["train"]["series"]) & set(dataset["test"]["series"])
    # tinted variants carry their colour in the caption
    tinted = train.filter(lambda t: bool(t), input_columns="tint")
    assert len(tinted) > 0 and all(row["caption"].startswith(f"a {row['tint']} ") for row in tinted)

    # the card (hub_cards) names each split's rows and the sources' licenses
    card = (tmp_path / "data" / "README.md").read_text()
    for split, counts in stats["counts"].items():
        assert f"| `{split}` | {counts['total']} |" in card and f"num_examples: {counts['total']}" in card
    assert all(license in card for license in data.LICENSES.values()) and "## Limitations" in card

    # a second build with the same settings is reused, not rebuilt
    parquet = tmp_path / "data" / stats["files"]["train"]
    written = parquet.stat().st_mtime_ns
    assert data.build_demo_dataset(tmp_path / "data", image_size=32, limit=12, num_benchmark_stamps=150,
                                   progress=False)["fingerprint"] == stats["fingerprint"]
    assert parquet.stat().st_mtime_ns == written
