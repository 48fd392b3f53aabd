"""Tiny FashionIQ, CIRR and CIRCO folders in the exact official layouts and JSON formats, built inside the tests.

Images are 32 px squares of random colours (a few dozen in all). Each builder returns the folder that
`--data_dir` takes and deliberately includes the traps the loaders must handle: FashionIQ images referenced but
absent and a .jpg among .png files, CIRR image sets that contain the reference, CIRCO queries with several ground
truths.
"""

import json
import random
from pathlib import Path

from PIL import Image

IMAGE_SIZE = 32


def make_image(path: Path, seed: int) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), tuple(rng.randrange(256) for _ in range(3)))
    # a second colour block so images differ in structure, not only in colour
    image.paste(tuple(rng.randrange(256) for _ in range(3)), (rng.randrange(16), rng.randrange(16), 24, 24))
    image.save(path)
    return path


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


# FashionIQ -----------------------------------------------------------------------------------------------------------
# listed in split.dress.val.json and used as a target, but no file: real FashionIQ has such
FASHIONIQ_MISSING = "B00MISSING"


def build_fashioniq(root: Path) -> Path:
    """fashionIQ_dataset/{images, captions, image_splits}: 6 gallery images and 4 queries per category."""
    data_dir = Path(root) / "fashionIQ_dataset"
    seed = 0
    for category in ("dress", "shirt", "toptee"):
        ids = [f"B00{category.upper()}{number}" for number in range(6)]
        for position, image_id in enumerate(ids):
            # one .jpg among the .png files: peers' copies of FashionIQ use either
            make_image(data_dir / "images" / f"{image_id}.{'jpg' if position == 5 else 'png'}", seed)
            seed += 1
        gallery = ids + ([FASHIONIQ_MISSING] if category == "dress" else [])
        _write_json(data_dir / "image_splits" / f"split.{category}.val.json", gallery)
        captions = [
            {"candidate": ids[0], "target": ids[1], "captions": ["is red.", "Has Short Sleeves?"]},
            {"candidate": ids[2], "target": ids[3], "captions": [" is longer ,", "is blue and white"]},
            {"candidate": ids[4], "target": ids[5], "captions": ["has a cat print", "is darker."]},
            {"candidate": ids[1], "target": FASHIONIQ_MISSING if category == "dress" else ids[0],
             "captions": ["is green", "has no logo"]},
        ]
        _write_json(data_dir / "captions" / f"cap.{category}.val.json", captions)
    return data_dir


# CIRR ----------------------------------------------------------------------------------------------------------------
CIRR_CAPTIONS = ["show three bottles of soft drink", "Fewer paper towels per pack", "make the dog run on the beach",
                 "change to a red car", "add a hat", "remove the cat"]


def _cirr_split(data_dir: Path, split: str, folder: str, with_targets: bool, first_pairid: int) -> None:
    names = [f"{folder}-{group}-{pair}-img{side}" for group in range(2) for pair in range(3) for side in range(2)]
    for position, name in enumerate(names):
        make_image(data_dir / folder / f"{name}.png", 1000 + first_pairid + position)
    _write_json(data_dir / "cirr" / "image_splits" / f"split.rc2.{split}.json",
                {name: f"./{folder}/{name}.png" for name in names})
    entries = []
    for position in range(6):
        set_members = names[:6] if position < 3 else names[6:]  # two image sets of six, as in CIRR
        reference = set_members[position % 3]
        target = set_members[position % 3 + 2]
        entry = {"pairid": first_pairid + position, "reference": reference}
        if with_targets:
            entry.update({"target_hard": target, "target_soft": {target: 1.0}})
        entry.update({"caption": CIRR_CAPTIONS[position],
                      "img_set": {"id": position // 3, "members": list(set_members)}})
        if with_targets:
            entry["img_set"].update({"reference_rank": position % 3, "target_rank": position % 3 + 2})
        entries.append(entry)
    _write_json(data_dir / "cirr" / "captions" / f"cap.rc2.{split}.json", entries)


def build_cirr(root: Path) -> Path:
    """cirr_dataset/{cirr/captions, cirr/image_splits, dev, test1}: val (with targets) and test1 (without)."""
    data_dir = Path(root) / "cirr_dataset"
    _cirr_split(data_dir, "val", "dev", with_targets=True, first_pairid=12060)
    _cirr_split(data_dir, "test1", "test1", with_targets=False, first_pairid=100)
    return data_dir


# CIRCO ---------------------------------------------------------------------------------------------------------------
CIRCO_IMAGE_IDS = [2097, 9761, 23082, 57541, 85932, 119203, 119881, 185509, 271520, 355099, 375057, 489535]


def build_circo(root: Path, image_info: bool = True) -> Path:
    """CIRCO/{annotations/{val,test}.json, COCO2017_unlabeled/{unlabeled2017, annotations}}."""
    data_dir = Path(root) / "CIRCO"
    image_dir = data_dir / "COCO2017_unlabeled" / "unlabeled2017"
    for position, image_id in enumerate(CIRCO_IMAGE_IDS):
        make_image(image_dir / f"{image_id:012d}.jpg", 2000 + position)
    if image_info:
        _write_json(data_dir / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json",
                    {"images": [{"id": image_id, "file_name": f"{image_id:012d}.jpg"}
                                for image_id in CIRCO_IMAGE_IDS]})
    val = [
        {"reference_img_id": 85932, "target_img_id": 9761, "relative_caption": "is held by a little girl on a chair",
         "shared_concept": "a teddy bear", "gt_img_ids": [9761, 489535, 57541, 375057, 119881], "id": 0,
         "semantic_aspects": ["spatial_relations_background"]},
        {"reference_img_id": 23082, "target_img_id": 119203, "relative_caption": "has plants instead of plungers",
         "shared_concept": "a toilet placed outdoors", "gt_img_ids": [119203, 185509], "id": 1,
         "semantic_aspects": ["compare_change"]},
        {"reference_img_id": 271520, "target_img_id": 355099, "relative_caption": "shows two people",
         "shared_concept": "a girl with an umbrella", "gt_img_ids": [355099], "id": 2,
         "semantic_aspects": ["cardinality"]},
    ]
    test = [{"reference_img_id": reference, "relative_caption": caption, "shared_concept": "a thing", "id": query_id}
            for query_id, (reference, caption) in enumerate([
                (2097, "are being used by a person"), (119881, "is redder"), (355099, "is taken from the top")
            ])]
    _write_json(data_dir / "annotations" / "val.json", val)
    _write_json(data_dir / "annotations" / "test.json", test)
    return data_dir
