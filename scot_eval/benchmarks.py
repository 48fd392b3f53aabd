"""FashionIQ, CIRR and CIRCO read from their official folder layouts, and a checker for those folders.

Each loader returns one or more `RetrievalTask`s (FashionIQ: one per category, each with its own gallery) holding
image names, image paths and queries; nothing is encoded here. Where every file must be (see docs/evaluation.md):

FashionIQ (`--data_dir fashionIQ_dataset`)::

    images/{image_id}.png               (.jpg / .jpeg accepted; real FashionIQ downloads miss some images)
    captions/cap.{dress,shirt,toptee}.{split}.json     [{"candidate": id, "target": id, "captions": [c1, c2]}, ...]
    image_splits/split.{dress,shirt,toptee}.{split}.json     [id, ...]  (the gallery of that category)

CIRR (`--data_dir cirr_dataset`, or its `cirr/` subfolder)::

    cirr/captions/cap.rc2.{split}.json       [{"pairid", "reference", "target_hard" (not in test1), "caption",
                                               "img_set": {"id", "members": [6 names]}}, ...]
    cirr/image_splits/split.rc2.{split}.json {name: "./dev/name.png", ...}  (paths relative to cirr_dataset/)
    dev/, test1/, train/                     the image folders the split files point into

CIRCO (`--data_dir CIRCO`)::

    annotations/{val,test}.json   [{"id", "reference_img_id", "target_img_id", "relative_caption", "shared_concept",
                                    "gt_img_ids"}, ...]  (target_img_id and gt_img_ids: val only)
    COCO2017_unlabeled/unlabeled2017/{id:012d}.jpg       (or unlabeled2017/ directly under the data dir)
    COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   (optional: defines the gallery; else every .jpg)
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
BENCHMARKS = ("fashioniq", "cirr", "circo")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Splits with public targets; the others can only produce rankings (submission files).
SPLITS = {"fashioniq": ("val", "train", "test"), "cirr": ("val", "test1", "train"), "circo": ("val", "test")}
# What `check` verifies by default: the splits the papers evaluate on (val) and the test splits with submissions.
CHECK_SPLITS = {"fashioniq": ("val",), "cirr": ("val", "test1"), "circo": ("val", "test")}


@dataclass
class CIRQuery:
    """One composed query: a reference image (by name) and its modification text(s).

    `texts` holds the raw annotation: FashionIQ's two relative captions, or CIRR's / CIRCO's single caption.
    `target` is the annotated target (None where the split has no public targets), `ground_truth` CIRCO's full set
    of correct images (target first), `subset` CIRR's image set (`img_set.members`, the reference included).
    """

    query_id: str
    reference: str
    texts: tuple[str, ...]
    target: str | None = None
    ground_truth: tuple[str, ...] | None = None
    subset: tuple[str, ...] | None = None


@dataclass
class RetrievalTask:
    """A gallery plus the queries ranked against it. `gallery` maps image name -> file, in the split file's order.

    `image_paths` covers every image the task needs (gallery and references). `missing_images` lists the names
    whose file does not exist; evaluation leaves them out and counts them.
    """

    benchmark: str
    split: str
    name: str
    gallery: dict[str, Path]
    queries: list[CIRQuery]
    image_paths: dict[str, Path] = field(default_factory=dict)
    missing_images: list[str] = field(default_factory=list)

    @property
    def has_targets(self) -> bool:
        return bool(self.queries) and all(query.target is not None for query in self.queries)


def _read_json(path: Path, expected: type, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected the file {path}.")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({what}): {error}") from error
    if not isinstance(data, expected):
        raise ValueError(f"{path} ({what}) must hold a JSON {expected.__name__}, got {type(data).__name__}.")
    _check_unicode(data, path)
    return data


def _check_unicode(data, path: Path) -> None:
    """Refuse text that is not valid Unicode: JSON's `\\ud800` escapes decode to lone surrogates, which no tokenizer,
    file name or UTF-8 writer accepts (the tokenizer fails with an unrelated TypeError naming nothing)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # one pass over everything; only a failure is located
    except UnicodeEncodeError:
        where, text = _first_invalid_text(data)
        raise ValueError(f"{path}: the text at {where} is not valid Unicode (a lone surrogate escape such as "
                         f"\\ud800): {text!r}") from None


def _first_invalid_text(data, where: str = "") -> tuple[str, str] | None:
    """(location like `[3]['caption']`, text) of the first string in `data` that cannot be encoded as UTF-8."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            return where or "the top level", data
        return None
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        if isinstance(key, str) and _first_invalid_text(key):
            return f"a key of {where or 'the top level'}", key
        found = _first_invalid_text(value, f"{where}[{key!r}]")
        if found:
            return found
    return None


def _field(entry, key: str, types, path: Path, position: int, expected: str):
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: entry {position} must be a JSON object, got {type(entry).__name__}.")
    if key not in entry:
        raise ValueError(f"{path}: entry {position} has no {key!r} (expected {expected}).")
    value = entry[key]
    if not isinstance(value, types) or isinstance(value, bool):
        raise ValueError(f"{path}: entry {position} has {key}={value!r}, expected {expected}.")
    return value


def _check_split(benchmark: str, split: str) -> str:
    if benchmark == "cirr" and split == "test":
        split = "test1"  # CIRR's test split is called test1 in its file names
    if split not in SPLITS[benchmark]:
        raise ValueError(f"{benchmark} has no split {split!r}: choose one of {', '.join(SPLITS[benchmark])}.")
    return split


def _scan_images(folder: Path) -> dict[str, Path]:
    """Image stem -> file for every image in `folder` (one directory listing instead of a stat per image)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            suffix = suffix.lower()
            if suffix in IMAGE_SUFFIXES and (stem not in found or suffix == ".png"):
                found[stem] = Path(entry.path)
    return found


def load_fashioniq(data_dir, split: str = "val", categories=FASHIONIQ_CATEGORIES) -> list[RetrievalTask]:
    """FashionIQ: one task per category; gallery = `image_splits/split.{category}.{split}.json`.

    Each query keeps both relative captions; how they are joined is the evaluation's caption protocol.
    """
    data_dir = Path(data_dir)
    split = _check_split("fashioniq", split)
    image_dir = data_dir / "images"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"FashionIQ images folder not found: expected {image_dir} (images/<id>.png).")
    on_disk = _scan_images(image_dir)
    tasks = []
    for category in categories:
        if category not in FASHIONIQ_CATEGORIES:
            raise ValueError(f"Unknown FashionIQ category {category!r}: choose from "
                             f"{', '.join(FASHIONIQ_CATEGORIES)}.")
        split_path = data_dir / "image_splits" / f"split.{category}.{split}.json"
        gallery_ids = _read_json(split_path, list, f"FashionIQ {category} image split (a list of image ids)")
        for position, image_id in enumerate(gallery_ids):
            if not isinstance(image_id, str) or not image_id:
                raise ValueError(f"{split_path}: item {position} is {image_id!r}, expected an image id string.")
        caption_path = data_dir / "captions" / f"cap.{category}.{split}.json"
        entries = _read_json(caption_path, list, f"FashionIQ {category} captions")
        queries = []
        for position, entry in enumerate(entries):
            reference = _field(entry, "candidate", str, caption_path, position, "the reference image id")
            captions = _field(entry, "captions", list, caption_path, position, "a list of two relative captions")
            if len(captions) != 2 or not all(isinstance(caption, str) for caption in captions):
                raise ValueError(f"{caption_path}: entry {position} has captions={captions!r}, expected two strings.")
            target = entry.get("target")
            if target is not None and not isinstance(target, str):
                raise ValueError(f"{caption_path}: entry {position} has target={target!r}, expected an image id.")
            queries.append(CIRQuery(f"{category}-{position}", reference, tuple(captions), target=target))
        names = list(dict.fromkeys(gallery_ids))
        needed = list(dict.fromkeys(names + [query.reference for query in queries]))
        image_paths = {name: on_disk.get(name, image_dir / f"{name}.png") for name in needed}
        tasks.append(RetrievalTask(
            benchmark="fashioniq", split=split, name=category,
            gallery={name: image_paths[name] for name in names}, queries=queries, image_paths=image_paths,
            missing_images=[name for name in needed if name not in on_disk],
        ))
    return tasks


def _cirr_folders(data_dir: Path) -> tuple[Path, Path]:
    """(annotation folder holding captions/ and image_splits/, image root the split paths are relative to)."""
    if (data_dir / "cirr" / "captions").is_dir():
        return data_dir / "cirr", data_dir
    if (data_dir / "captions").is_dir():
        return data_dir, data_dir
    raise FileNotFoundError(
        f"CIRR annotations not found: expected {data_dir / 'cirr' / 'captions'} (or {data_dir / 'captions'})."
    )


def load_cirr(data_dir, split: str = "val") -> list[RetrievalTask]:
    """CIRR: gallery = every image of `split.rc2.{split}.json`; queries from `cap.rc2.{split}.json`."""
    data_dir = Path(data_dir)
    split = _check_split("cirr", split)
    annotation_dir, image_root = _cirr_folders(data_dir)
    split_path = annotation_dir / "image_splits" / f"split.rc2.{split}.json"
    name_to_relpath = _read_json(split_path, dict, "CIRR image split (image name -> relative path)")
    for name, relpath in name_to_relpath.items():
        if not isinstance(relpath, str) or not relpath:
            raise ValueError(f"{split_path}: {name!r} maps to {relpath!r}, expected "
                             "a relative path like './dev/x.png'.")
    # The split files point into dev/, test1/, train/ beside the cirr/ folder; a data_dir that *is* cirr/ has them
    # one level up.
    first = next(iter(name_to_relpath.values()), None)
    if first is not None and not (image_root / first).exists() and (image_root.parent / first).exists():
        image_root = image_root.parent
    caption_path = annotation_dir / "captions" / f"cap.rc2.{split}.json"
    entries = _read_json(caption_path, list, "CIRR captions")
    queries = []
    for position, entry in enumerate(entries):
        pairid = _field(entry, "pairid", int, caption_path, position, "an integer pair id")
        reference = _field(entry, "reference", str, caption_path, position, "the reference image name")
        caption = _field(entry, "caption", str, caption_path, position, "the modification text")
        image_set = _field(entry, "img_set", dict, caption_path, position, 'an object {"id", "members": [...]}')
        members = image_set.get("members")
        if not isinstance(members, list) or not all(isinstance(member, str) for member in members):
            raise ValueError(f"{caption_path}: entry {position} has "
                             f"img_set.members={members!r}, expected image names.")
        target = entry.get("target_hard")
        if split != "test1":
            target = _field(entry, "target_hard", str, caption_path, position, "the target image name")
        queries.append(CIRQuery(str(pairid), reference, (caption,), target=target, subset=tuple(members)))
    image_paths = {name: image_root / relpath for name, relpath in name_to_relpath.items()}
    for query in queries:
        for name in (query.reference, query.target, *query.subset):
            if name is not None and name not in image_paths:
                raise ValueError(f"{caption_path}: query {query.query_id} names image "
                                 f"{name!r}, which {split_path} lacks.")
    return [RetrievalTask(
        benchmark="cirr", split=split, name="cirr", gallery=dict(image_paths), queries=queries,
        image_paths=image_paths, missing_images=[name for name, path in image_paths.items() if not path.is_file()],
    )]


def _circo_images(data_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """(COCO unlabeled2017 image id -> file, ids whose file is missing)."""
    for image_dir in (data_dir / "COCO2017_unlabeled" / "unlabeled2017", data_dir / "unlabeled2017"):
        if image_dir.is_dir():
            break
    else:
        raise FileNotFoundError(
            f"COCO unlabeled2017 images not found: expected {data_dir / 'COCO2017_unlabeled' / 'unlabeled2017'} "
            f"(or {data_dir / 'unlabeled2017'}) holding <id:012d>.jpg files."
        )
    on_disk = {str(int(stem)): path for stem, path in _scan_images(image_dir).items() if stem.isdigit()}
    info_path = image_dir.parent / "annotations" / "image_info_unlabeled2017.json"
    if not info_path.is_file():
        return dict(sorted(on_disk.items(), key=lambda item: int(item[0]))), []
    # The official gallery is the COCO image list: files absent from disk are reported, not silently dropped.
    info = _read_json(info_path, dict, "COCO unlabeled2017 image info")
    images = info.get("images")
    if not isinstance(images, list):
        raise ValueError(f"{info_path} must hold {{'images': [{{'id', 'file_name'}}, ...]}}.")
    gallery = {}
    for position, image in enumerate(images):
        image_id = _field(image, "id", int, info_path, position, "an integer image id")
        file_name = _field(image, "file_name", str, info_path, position, "the image file name")
        gallery[str(image_id)] = image_dir / file_name
    return gallery, [name for name, path in gallery.items() if name not in on_disk and not path.is_file()]


def load_circo(data_dir, split: str = "val") -> list[RetrievalTask]:
    """CIRCO: gallery = the whole COCO 2017 unlabeled set; queries from `annotations/{split}.json`."""
    data_dir = Path(data_dir)
    split = _check_split("circo", split)
    annotation_path = data_dir / "annotations" / f"{split}.json"
    entries = _read_json(annotation_path, list, f"CIRCO {split} annotations")
    gallery, missing = _circo_images(data_dir)
    queries = []
    for position, entry in enumerate(entries):
        query_id = _field(entry, "id", int, annotation_path, position, "an integer query id")
        reference = _field(entry, "reference_img_id", int, annotation_path, position, "a COCO image id")
        caption = _field(entry, "relative_caption", str, annotation_path, position, "the modification text")
        target = ground_truth = None
        if split == "val":
            target = str(_field(entry, "target_img_id", int, annotation_path, position, "a COCO image id"))
            ids = _field(entry, "gt_img_ids", list, annotation_path, position, "a non-empty list of COCO image ids")
            if not ids or not all(isinstance(image_id, int) and not isinstance(image_id, bool) for image_id in ids):
                raise ValueError(
                    f"{annotation_path}: entry {position} has gt_img_ids={ids!r}, "
                    "expected a non-empty list of COCO image ids."
                )
            ground_truth = tuple(str(image_id) for image_id in ids)
        queries.append(CIRQuery(str(query_id), str(reference), (caption,), target=target, ground_truth=ground_truth))
    image_dir = next(iter(gallery.values())).parent if gallery else data_dir / "unlabeled2017"
    image_paths = dict(gallery)
    for query in queries:
        for name in (query.reference, query.target, *(query.ground_truth or ())):
            if name is not None and name not in image_paths:
                image_paths[name] = image_dir / f"{int(name):012d}.jpg"
                missing.append(name)
    return [RetrievalTask(
        benchmark="circo", split=split, name="circo", gallery=gallery, queries=queries,
        image_paths=image_paths, missing_images=list(dict.fromkeys(missing)),
    )]


LOADERS = {"fashioniq": load_fashioniq, "cirr": load_cirr, "circo": load_circo}


def load_benchmark(benchmark: str, data_dir, split: str = "val") -> list[RetrievalTask]:
    """The retrieval tasks of `benchmark` ("fashioniq", "cirr" or "circo") for `split`, from its official layout."""
    if benchmark not in LOADERS:
        raise ValueError(f"Unknown benchmark {benchmark!r}: choose one of {', '.join(BENCHMARKS)}.")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{benchmark} data folder not found: {data_dir} is not a directory.")
    return LOADERS[benchmark](data_dir, split)


def unreadable_images(paths, show_progress: bool = True) -> list[Path]:
    """The image files among `paths` that the evaluation's image decoder cannot read (truncated downloads, HTML
    error pages, decompression bombs, ...): the check and the evaluation agree on what is skipped."""
    from tqdm.auto import tqdm

    from scot_core import try_load_image

    return [path for path in tqdm(list(paths), desc="reading images", unit="img", disable=not show_progress)
            if try_load_image(path) is None]


SKIP_REASONS = ("reference image missing or unreadable", "target image missing, unreadable or not in the gallery")


def is_submission_split(task: RetrievalTask) -> bool:
    """Whether the task's split has no public targets, so that it is ranked for a submission file; the servers want
    every query in it (CIRCO's asserts it), so none is skipped for a missing reference image."""
    return not any(query.target is not None for query in task.queries)


def skip_reason(query: CIRQuery, reference_usable: bool, target_in_gallery: bool,
                submission_split: bool) -> str | None:
    """Why evaluation skips `query` (one of `SKIP_REASONS`), or None when it is evaluated. On a submission split a
    query without its reference image is ranked by its text alone instead; a CIRCO query is scored against all its
    ground truths (its target among them), so a missing target does not skip it."""
    if not reference_usable and not submission_split:
        return SKIP_REASONS[0]
    if query.ground_truth is None and query.target is not None and not target_in_gallery:
        return SKIP_REASONS[1]
    return None


def affected_queries(task: RetrievalTask, unusable: set[str]) -> int:
    """How many of the task's queries evaluation must skip because an image they need is unusable (`skip_reason`)."""
    submission_split = is_submission_split(task)
    return sum(skip_reason(query, query.reference not in unusable, query.target not in unusable, submission_split)
               is not None for query in task.queries)


def check_benchmark(benchmark: str, data_dir, splits=None, read_images: bool = True,
                    show_progress: bool = True) -> dict:
    """Verify a benchmark folder: JSON files and their schema, missing and unreadable images. Returns counts per task.

    Splits whose files are absent are reported as such (a folder rarely holds every split); a schema error raises.
    """
    report = {"benchmark": benchmark, "data_dir": str(data_dir), "splits": {}}
    for split in splits or CHECK_SPLITS[benchmark]:
        try:
            tasks = load_benchmark(benchmark, data_dir, split)
        except FileNotFoundError as error:
            report["splits"][split] = {"error": str(error)}
            continue
        for task in tasks:
            missing = set(task.missing_images)
            present = {path: name for name, path in task.image_paths.items() if name not in missing}
            unreadable = unreadable_images(present, show_progress) if read_images else []
            unreadable_names = {present[path] for path in unreadable}
            unusable = missing | unreadable_names
            report["splits"][f"{task.split}/{task.name}" if task.name != benchmark else task.split] = {
                "queries": len(task.queries),
                "queries_with_targets": sum(query.target is not None for query in task.queries),
                "gallery_images": len(task.gallery),
                "images_needed": len(task.image_paths),
                "missing_images": len(task.missing_images),
                "unreadable_images": len(unreadable_names),
                "queries_to_skip": affected_queries(task, unusable),
                "examples_missing": task.missing_images[:5],
                "examples_unreadable": sorted(unreadable_names)[:5],
            }
    return report


def format_check_report(report: dict) -> str:
    lines = [f"{report['benchmark']} at {report['data_dir']}"]
    for name, counts in report["splits"].items():
        if "error" in counts:
            lines.append(f"  {name:<14} not available: {counts['error']}")
            continue
        lines.append(
            f"  {name:<14} {counts['queries']:>6} queries ({counts['queries_with_targets']} with targets), "
            f"{counts['gallery_images']:>7} gallery images, {counts['missing_images']} missing, "
            f"{counts['unreadable_images']} unreadable -> {counts['queries_to_skip']} queries would be skipped"
        )
        for kind in ("missing", "unreadable"):
            if counts[f"examples_{kind}"]:
                lines.append(f"  {'':<14} {kind}: {', '.join(counts[f'examples_{kind}'])}")
    return "\n".join(lines)


__all__ = [
    "BENCHMARKS",
    "CIRQuery",
    "FASHIONIQ_CATEGORIES",
    "RetrievalTask",
    "SKIP_REASONS",
    "SPLITS",
    "check_benchmark",
    "format_check_report",
    "is_submission_split",
    "load_benchmark",
    "load_circo",
    "load_cirr",
    "load_fashioniq",
    "skip_reason",
    "unreadable_images",
]
