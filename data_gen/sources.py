"""Caption sources: where (image, caption) rows come from.

- `DatasetSource`: any `datasets` dataset (a `Dataset` object, a `save_to_disk` folder, a local data folder or a hub
  id) with an image column and a caption column, names configurable. A caption column holding lists (COCO-style,
  several captions per image) gives one row per caption.
- `ImageFolderSource`: a folder of images with a caption next to each (`dog.png` + `dog.txt`), or a
  `metadata.jsonl` / `metadata.csv` with `file_name` and a caption column (the `imagefolder` convention).

Both expose `rows()` → list of `CaptionRow` (cheap: captions only) and `images(rows)` → `{"bytes", "path"}` each, read
only when a kept triplet is written, so millions of captions never hold their images in memory; `image_problem`
decodes each of those once before it is kept. A malformed or non-UTF-8 input file is a `ValueError` naming the file
(and the line, for JSON Lines) and what was expected.
"""

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scot_core import ImageLoadError, is_missing_image, load_image

from .prompts import RejectionCounter, normalize

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")

logger = logging.getLogger(__name__)


def read_text_file(path: str, what: str = "text file") -> str:
    """A UTF-8 text file's content, or a ValueError naming the file when it is not UTF-8."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"The {what} {path!r} is not UTF-8 text ({error.reason} at byte {error.start}); save it as "
                         "UTF-8.") from None


def read_json_lines(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-blank line of a JSON Lines file; a ValueError naming the file and the line
    when a line is not UTF-8, not JSON, or not a JSON object."""
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{where}: not UTF-8 text ({error.reason} at byte {error.start} of the line); save "
                                 "the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg}, column {error.colno}); expected one JSON "
                                 "object per line.") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected one JSON object per line, got a {type(record).__name__}.")
            yield line_number, record


@dataclass(frozen=True)
class CaptionRow:
    """One input row. `id` is stable across runs (it is the resume key and the output `id`)."""

    id: str
    caption: str
    key: object  # what the source needs to find the image again (row index or file path)


class DatasetSource:
    """Rows of a `datasets` dataset: `image_column` (None for captions without images) and `caption_column`."""

    def __init__(self, dataset: "str | Dataset | DatasetDict", caption_column: str = "caption",
                 image_column: str | None = "image", split: str = "train", name: str | None = None,
                 id_column: str | None = None) -> None:
        from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
        from datasets.exceptions import DatasetGenerationError

        described = dataset if isinstance(dataset, str) else type(dataset).__name__
        if isinstance(dataset, str):
            saved_marks = ("state.json", "dataset_dict.json")  # what `save_to_disk` writes
            if os.path.isdir(dataset) and any(os.path.exists(os.path.join(dataset, mark)) for mark in saved_marks):
                dataset = load_from_disk(dataset)
            else:
                try:
                    dataset = load_dataset(dataset, split=split)
                except DatasetGenerationError as error:  # a malformed data file; the cause says what is wrong
                    cause = error.__cause__ or error
                    raise ValueError(f"could not read the dataset {described!r}: {cause} (expected data files that "
                                     "`datasets` reads: parquet, CSV, UTF-8 JSON / JSON Lines, ...)") from None
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise ValueError(f"split {split!r} not found in {described}; splits found: {sorted(dataset)}")
            dataset = dataset[split]
        if not isinstance(dataset, Dataset):
            raise TypeError(f"expected a datasets.Dataset (or a path / hub id of one), got {type(dataset).__name__}")
        for role, column in (("caption", caption_column), ("image", image_column), ("id", id_column)):
            if column is not None and column not in dataset.column_names:
                raise ValueError(
                    f"{role} column {column!r} not found in {described}; columns found: {dataset.column_names}. "
                    f"Pass --{role}_column with one of them."
                )
        self.dataset = dataset
        self._undecoded_dataset = None
        self.caption_column = caption_column
        self.image_column = image_column
        self.id_column = id_column
        if not name:
            name = os.path.basename(os.path.normpath(described)) if isinstance(described, str) else "dataset"
        self.name = name

    @property
    def has_images(self) -> bool:
        return self.image_column is not None

    def rows(self) -> list[CaptionRow]:
        captions = self.dataset[self.caption_column]
        ids = self.dataset[self.id_column] if self.id_column else range(len(captions))
        rows = []
        for index, (row_id, caption) in enumerate(zip(ids, captions)):
            if isinstance(caption, (list, tuple)):
                rows.extend(CaptionRow(f"{self.name}:{row_id}:{j}", text, index) for j, text in enumerate(caption))
            else:
                rows.append(CaptionRow(f"{self.name}:{row_id}", caption, index))
        return rows

    def _undecoded(self) -> "Dataset":
        # decode=False hands back the stored bytes/path without decoding and re-encoding the picture.
        if self._undecoded_dataset is None:
            from datasets import Image

            self._undecoded_dataset = self.dataset.cast_column(self.image_column, Image(decode=False))
        return self._undecoded_dataset

    def images(self, rows: list[CaptionRow]) -> list[dict | None]:
        """`{"bytes", "path"}` (or None) per row, read in one batch."""
        if self.image_column is None:
            return [None] * len(rows)
        values = self._undecoded().select([row.key for row in rows])[self.image_column]
        return [_image_value(value) for value in values]


def _image_value(value: object) -> dict | None:
    if value is None:
        return None
    if hasattr(value, "save"):  # a PIL image (a dataset whose column is not an Image feature)
        import io

        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    if isinstance(value, str):
        value = {"bytes": None, "path": value}
    if value.get("bytes") is None and value.get("path"):
        if not os.path.isfile(value["path"]):
            return None  # counted as a missing image
        with open(value["path"], "rb") as handle:
            return {"bytes": handle.read(), "path": os.path.basename(value["path"])}
    return {"bytes": value["bytes"], "path": os.path.basename(value["path"]) if value.get("path") else None}


class ImageFolderSource:
    """Images under `folder` (recursively) with captions from sidecar files or a metadata file."""

    has_images = True  # every row is an image file

    def __init__(self, folder: str, caption_extension: str = ".txt", caption_column: str = "caption",
                 name: str | None = None) -> None:
        if not os.path.isdir(folder):
            raise ValueError(f"image folder {folder!r} does not exist or is not a folder")
        self.folder = folder
        self.caption_extension = caption_extension
        self.caption_column = caption_column
        self.name = name or os.path.basename(os.path.normpath(folder))
        self.missing_captions = 0

    def _metadata_captions(self) -> dict[str, str] | None:
        for filename in ("metadata.jsonl", "metadata.csv"):
            path = os.path.join(self.folder, filename)
            if not os.path.exists(path):
                continue
            if filename.endswith(".jsonl"):
                numbered = read_json_lines(path)
            else:  # line 1 is the header
                numbered = enumerate(csv.DictReader(io.StringIO(read_text_file(path, "metadata file"))), 2)
            captions = {}
            for line_number, record in numbered:
                if self.caption_column not in record or "file_name" not in record:
                    raise ValueError(
                        f"{path}:{line_number}: expected keys 'file_name' and {self.caption_column!r}; "
                        f"keys found: {sorted(key for key in record if key is not None)}"
                    )
                captions[os.path.normpath(str(record["file_name"]))] = record[self.caption_column]
            return captions
        return None

    def rows(self) -> list[CaptionRow]:
        metadata = self._metadata_captions()
        images = sorted(
            os.path.relpath(os.path.join(root, filename), self.folder)
            for root, _, filenames in os.walk(self.folder)
            for filename in filenames
            if filename.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not images:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {self.folder!r}")
        rows = []
        for relative_path in images:
            if metadata is not None:
                caption = metadata.get(os.path.normpath(relative_path))
            else:
                caption_path = os.path.join(self.folder, os.path.splitext(relative_path)[0] + self.caption_extension)
                caption = read_text_file(caption_path, "caption file") if os.path.exists(caption_path) else None
            if caption is None:
                self.missing_captions += 1  # reported as a skip reason, never fatal
                continue
            rows.append(CaptionRow(f"{self.name}:{relative_path}", caption, relative_path))
        return rows

    def image(self, row: CaptionRow) -> dict | None:
        """The file's bytes, or None when it is gone (removed since `rows()`: counted as a missing image)."""
        try:
            with open(os.path.join(self.folder, row.key), "rb") as handle:
                return {"bytes": handle.read(), "path": os.path.basename(row.key)}
        except FileNotFoundError:
            return None

    def images(self, rows: list[CaptionRow]) -> list[dict | None]:
        return [self.image(row) for row in rows]


def image_problem(value: dict | None) -> str | None:
    """None when the image `value` (`{"bytes", "path"}`) decodes, within `load_image`'s pixel limit; else the reason to
    skip its row: `missing_image`, or `unreadable_image` (not an image, damaged, a decompression bomb), logged."""
    if is_missing_image(value):
        return "missing_image"
    try:
        load_image(value)
    except ImageLoadError as error:
        logger.warning("skipping a row whose image cannot be used: %s", error)
        return "unreadable_image"
    return None


def clean_rows(rows: Iterable[CaptionRow], max_caption_words: int = 60,
               duplicates: str = "drop") -> tuple[list[CaptionRow], RejectionCounter]:
    """Drop unusable captions, counted: `empty_caption`, `caption_too_long`, `duplicate_caption` (when
    `duplicates="drop"`: the first image of a caption is kept; an LLM would write the same triplet for the rest)."""
    if duplicates not in ("drop", "keep"):
        raise ValueError(f"duplicates must be 'drop' or 'keep', got {duplicates!r}")
    skipped = RejectionCounter()
    seen_captions = set()
    seen_ids = set()
    kept = []
    for row in rows:
        caption = " ".join(str(row.caption or "").split())
        if not normalize(caption):
            skipped["empty_caption"] += 1
            continue
        if len(caption.split()) > max_caption_words:
            skipped["caption_too_long"] += 1
            continue
        if row.id in seen_ids:
            raise ValueError(f"row id {row.id!r} appears twice in the source; ids must be unique (see --id_column)")
        seen_ids.add(row.id)
        key = normalize(caption)
        if duplicates == "drop" and key in seen_captions:
            skipped["duplicate_caption"] += 1
            continue
        seen_captions.add(key)
        kept.append(CaptionRow(row.id, caption, row.key))
    return kept, skipped
