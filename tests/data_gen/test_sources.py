import io
import json

import pytest
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from data_gen.sources import CaptionRow, DatasetSource, ImageFolderSource, clean_rows


def _png(color):
    buffer = io.BytesIO()
    PILImage.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _dataset():
    return Dataset.from_dict(
        {
            "picture": [{"bytes": _png("red"), "path": None}, {"bytes": _png("blue"), "path": None}],
            "text": ["a red square", "a blue square"],
        },
        features=Features({"picture": Image(), "text": Value("string")}),
    )


def test_dataset_source_with_configurable_columns_and_image_bytes():
    source = DatasetSource(_dataset(), caption_column="text", image_column="picture", name="squares")
    rows = source.rows()
    assert [(row.id, row.caption) for row in rows] == [("squares:0", "a red square"), ("squares:1", "a blue square")]
    image = source.images(rows[1:])[0]
    assert PILImage.open(io.BytesIO(image["bytes"])).getpixel((0, 0)) == (0, 0, 255)


def test_dataset_source_from_disk_and_list_captions(tmp_path):
    Dataset.from_dict(
        {"image": [None, None], "captions": [["a cat", "a grey cat"], ["a dog"]]}
    ).save_to_disk(tmp_path / "saved")
    source = DatasetSource(str(tmp_path / "saved"), caption_column="captions", image_column=None)
    assert [row.caption for row in source.rows()] == ["a cat", "a grey cat", "a dog"]
    assert [row.id for row in source.rows()] == ["saved:0:0", "saved:0:1", "saved:1:0"]


def test_missing_caption_column_lists_the_columns_found():
    with pytest.raises(ValueError, match=r"caption column 'caption' not found .*columns found: \['picture', 'text'\]"):
        DatasetSource(_dataset(), caption_column="caption", image_column="picture")


def test_image_folder_with_sidecar_captions(tmp_path):
    for name, caption in (("b.png", "a blue square"), ("a.jpg", "a red square"), ("nocaption.png", None)):
        PILImage.new("RGB", (4, 4)).save(tmp_path / name)
        if caption:
            (tmp_path / name).with_suffix(".txt").write_text(caption + "\n")
    source = ImageFolderSource(str(tmp_path), name="folder")
    rows = source.rows()
    assert [(row.id, row.caption.strip()) for row in rows] == [
        ("folder:a.jpg", "a red square"),
        ("folder:b.png", "a blue square"),
    ]
    assert source.missing_captions == 1
    assert source.image(rows[0])["bytes"][:2] == b"\xff\xd8"  # the original JPEG bytes, not re-encoded


def test_image_folder_with_metadata_file(tmp_path):
    PILImage.new("RGB", (4, 4)).save(tmp_path / "x.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "x.png", "text": "a black square"}) + "\n")
    assert [row.caption for row in ImageFolderSource(str(tmp_path), caption_column="text").rows()] == [
        "a black square"
    ]
    with pytest.raises(ValueError, match="metadata.jsonl:1: expected keys 'file_name' and 'caption'"):
        ImageFolderSource(str(tmp_path)).rows()
    with pytest.raises(ValueError, match="no images"):
        (tmp_path / "empty").mkdir()
        ImageFolderSource(str(tmp_path / "empty")).rows()
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderSource(str(tmp_path / "missing"))


def test_clean_rows_counts_empty_long_and_duplicate_captions():
    rows = [
        CaptionRow("1", "a red car", 0),
        CaptionRow("2", "  ", 1),
        CaptionRow("3", "A red  car.", 2),
        CaptionRow("4", "word " * 100, 3),
        CaptionRow("5", None, 4),
        CaptionRow("6", "a blue car", 5),
    ]
    kept, skipped = clean_rows(rows, max_caption_words=60)
    assert [row.id for row in kept] == ["1", "6"]
    assert skipped.as_dict() == {"caption_too_long": 1, "duplicate_caption": 1, "empty_caption": 2}
    kept, skipped = clean_rows(rows, duplicates="keep")
    assert [row.id for row in kept] == ["1", "3", "6"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"file_name": "x.png", "caption": "a"}\n{"file_name": "x.png", "caption": \n', r"metadata.jsonl:2: .*not "
         r"valid JSON .*expected one JSON object per line"),
        (b'{"file_name": "x.png", "caption": "a"}\n\n["x.png", "a"]\n', r"metadata.jsonl:3: expected one JSON object "
         r"per line, got a list"),
        (b'{"file_name": "x.png", "caption": "a"}\n{"caption": "b"}\n', r"metadata.jsonl:2: expected keys 'file_name' "
         r"and 'caption'; keys found: \['caption'\]"),
        (b'{"file_name": "x.png", "caption": "a"}\n{"file_name": "x.png", "caption": "caf\xe9"}\n',
         r"metadata.jsonl:2: not UTF-8 text"),
    ],
)
def test_a_bad_metadata_jsonl_names_the_file_the_line_and_what_was_expected(tmp_path, content, message):
    # Issue 12, item 10: a bare JSONDecodeError / UnicodeDecodeError / KeyError did not say which file
    PILImage.new("RGB", (4, 4)).save(tmp_path / "x.png")
    (tmp_path / "metadata.jsonl").write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        ImageFolderSource(str(tmp_path)).rows()
    assert str(tmp_path / "metadata.jsonl") in str(error.value)


def test_non_utf8_captions_and_metadata_csv_name_their_file(tmp_path):
    PILImage.new("RGB", (4, 4)).save(tmp_path / "x.png")
    (tmp_path / "x.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(ValueError, match=r"x\.txt.* not UTF-8 text"):
        ImageFolderSource(str(tmp_path)).rows()
    (tmp_path / "metadata.csv").write_bytes(b"file_name,caption\nx.png,caf\xe9\n")
    with pytest.raises(ValueError, match=r"metadata\.csv.* not UTF-8 text"):
        ImageFolderSource(str(tmp_path)).rows()


def test_a_dataset_folder_with_malformed_json_names_the_dataset(tmp_path):
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "train.jsonl").write_text('{"caption": "a red car"}\n{oops\n')
    with pytest.raises(ValueError, match=r"could not read the dataset .*captions.*JSON parse error"):
        DatasetSource(str(tmp_path / "captions"), image_column=None)


def test_images_that_cannot_be_decoded_are_told_apart_from_missing_ones(tmp_path):
    from data_gen.sources import image_problem

    assert image_problem({"bytes": _png("red"), "path": None}) is None
    assert image_problem(None) == "missing_image"
    assert image_problem({"bytes": b"not an image", "path": "a.png"}) == "unreadable_image"
