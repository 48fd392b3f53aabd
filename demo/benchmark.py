"""The demo CIR benchmark: five kinds of change on held-out stamps, each kind in its own CIRR folder.

Every answer is known by construction (the target image is made from the reference by the change the text names), so
the benchmark measures composition directly. The kinds and their phrasings were written before any result was seen,
and are not tuned to any model:

- `colour`: the stamp tinted a → b ("make it blue"), the benchmark of the first round;
- `count`: one, two or three copies of the stamp ("two of them");
- `add_object`: the stamp alone → the stamp beside another held-out object ("add a kangaroo");
- `background`: on white ↔ on a coloured background ("on a green background");
- `orientation`: the stamp ↔ its mirror image or upside-down copy ("mirror it", "turn it upside down").

Which of them the training data teaches: the demo backbone sees tinted stamps captioned with their colour (so colour
is grounded); the triplets' templates and the LLM write colour, object, count and other changes of *captions*, never
of these images. Count, added objects, backgrounds and orientation are a transfer test.

Layout, one CIRR `data_dir` per kind, so `scot_eval` runs on each unchanged (val split):

    {root}/{kind}/cirr/captions/cap.rc2.val.json        pairid, reference, target_hard, caption, img_set
    {root}/{kind}/cirr/image_splits/split.rc2.val.json  name -> ./dev/{name}.png
    {root}/{kind}/dev/{name}.png
    {root}/kinds.json                                    the kinds, their folders and query counts

CIRR's protocol removes the reference from each ranking (R@K); Rsubset@K ranks only the query's `img_set`, here the
variants of the same stamp for that kind (its tints, its counts, ...): a pure test of the change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from scot_core import atomic_write_json

KINDS = ("colour", "count", "add_object", "background", "orientation")

# Phrasings, several per kind; each query gets one, chosen by a hash of the query so every machine builds the same
# benchmark. Written before looking at any result.
COLOUR_PHRASINGS = ("make it {colour}", "change the colour to {colour}", "the same but {colour}", "in {colour}")
COUNT_PHRASINGS = {
    1: ("just one", "only a single one", "make it one", "one of them only"),
    2: ("two of them", "make it two", "a pair of them", "show two"),
    3: ("three of them", "make it three", "show three", "three copies"),
}
ADD_OBJECT_PHRASINGS = ("add {object}", "put {object} next to it", "with {object} beside it", "and {object} too")
BACKGROUND_PHRASINGS = ("on a {colour} background", "put it on {colour}", "make the background {colour}",
                        "against a {colour} backdrop")
ORIENTATION_PHRASINGS = {
    "mirrored": ("mirror it", "flip it horizontally", "make it face the other way",
                 "turn it to face the opposite way"),
    "upside_down": ("turn it upside down", "flip it vertically", "upside down", "put it on its head"),
    "upright": ("turn it back the right way", "the normal way round", "undo the flip", "make it upright"),
}
PARTNERS_PER_STAMP = 3  # add_object: how many other objects each stamp is shown beside
MIN_VARIANT_DIFFERENCE = 8.0  # mean |pixel| difference (0-255) a variant must have from the original to be a query


def _stable_choice(options, key: str):
    return options[int(hashlib.sha1(key.encode()).hexdigest(), 16) % len(options)]


def object_phrase(caption: str) -> str:
    """"a kangaroo" stays, "dollar sign" becomes "a dollar sign": the added object as a noun phrase."""
    caption = caption.strip()
    if caption.split(" ", 1)[0] in ("a", "an", "the"):
        return caption
    return ("an " if caption[:1] in "aeiou" else "a ") + caption


# -- colour: the first round's benchmark, unchanged ------------------------------------------------------------


def build_colour_benchmark(stamps, tint, colours, root) -> Path:
    """Write the benchmark folder and return it.

    Args:
        stamps: `(stamp_id, image)` pairs (PIL images with transparency), the held-out recolourable stamps.
        tint: `tint(image, colour) -> PIL.Image`, the same recolouring the demo data uses.
        colours: the colour names, e.g. ("red", "orange", "yellow", "green", "blue", "purple").
        root: the folder to write (the CIRR `data_dir`).
    """
    root = Path(root)
    image_dir = root / "dev"
    image_dir.mkdir(parents=True, exist_ok=True)
    split, queries = {}, []
    for stamp_id, image in stamps:
        names = {colour: f"{stamp_id}-{colour}" for colour in colours}
        for colour, name in names.items():
            path = image_dir / f"{name}.png"
            if not path.exists():
                tint(image, colour).convert("RGB").save(path)
            split[name] = f"./dev/{name}.png"
        members = list(names.values())
        for reference_colour in colours:
            for target_colour in colours:
                if target_colour == reference_colour:
                    continue
                key = f"{stamp_id}:{reference_colour}:{target_colour}"
                queries.append({
                    "pairid": len(queries),
                    "reference": names[reference_colour],
                    "target_hard": names[target_colour],
                    "target_soft": {names[target_colour]: 1.0},
                    "caption": _stable_choice(COLOUR_PHRASINGS, key).format(colour=target_colour),
                    "img_set": {"id": len(split) // len(colours), "members": members},
                })
    for relative, payload in (("cirr/image_splits/split.rc2.val.json", split),
                              ("cirr/captions/cap.rc2.val.json", queries)):
        atomic_write_json(root / relative, payload, indent=1)
    return root


# -- images -----------------------------------------------------------------------------------------------------------


def _content(image: Image.Image) -> Image.Image:
    """The stamp cropped to its visible pixels (RGBA)."""
    rgba = image.convert("RGBA")
    box = rgba.getchannel("A").point(lambda alpha: 255 if alpha > 8 else 0).getbbox()
    return rgba.crop(box) if box else rgba


def _square(rgba: Image.Image, size: int, background=(255, 255, 255)) -> Image.Image:
    """Pad to a square with a margin, composite on `background`, resize to `size` px. Returns RGB."""
    side = int(max(rgba.size) * 1.1) + 1
    canvas = Image.new("RGBA", (side, side), background + (255,))
    canvas.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    return canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def arrange(parts: list[Image.Image]) -> Image.Image:
    """Stamps side by side on one transparent canvas (three: two above, one below), each scaled to the same height."""
    height = max(part.height for part in parts)
    parts = [part.resize((max(1, round(part.width * height / part.height)), height)) for part in parts]
    gap = height // 8
    rows = [parts] if len(parts) < 3 else [parts[:2], parts[2:]]
    widths = [sum(part.width for part in row) + gap * (len(row) - 1) for row in rows]
    canvas = Image.new("RGBA", (max(widths), height * len(rows) + gap * (len(rows) - 1)), (0, 0, 0, 0))
    for row_number, (row, width) in enumerate(zip(rows, widths)):
        x, y = (canvas.width - width) // 2, row_number * (height + gap)
        for part in row:
            canvas.alpha_composite(part, (x, y))
            x += part.width + gap
    return canvas


def _differs(first: Image.Image, second: Image.Image) -> bool:
    difference = np.abs(np.asarray(first, dtype=np.float32) - np.asarray(second, dtype=np.float32))
    return float(difference.mean()) > MIN_VARIANT_DIFFERENCE


# -- one kind: its variants and queries -------------------------------------------------------------------------------


class _KindWriter:
    """Collects one kind's gallery images and queries, then writes its CIRR folder."""

    def __init__(self, root: Path):
        self.root = root
        (root / "dev").mkdir(parents=True, exist_ok=True)
        self.split: dict[str, str] = {}
        self.queries: list[dict] = []
        self.num_sets = 0

    def add_image(self, name: str, image: Image.Image) -> str:
        path = self.root / "dev" / f"{name}.png"
        if not path.exists():
            image.save(path)
        self.split[name] = f"./dev/{name}.png"
        return name

    def add_queries(self, members: list[str], pairs: list[tuple[str, str, str]]) -> None:
        """`pairs`: (reference name, target name, modification text) within one img_set `members`."""
        for reference, target, caption in pairs:
            self.queries.append({
                "pairid": len(self.queries), "reference": reference, "target_hard": target,
                "target_soft": {target: 1.0}, "caption": caption,
                "img_set": {"id": self.num_sets, "members": members},
            })
        self.num_sets += 1

    def write(self) -> dict:
        atomic_write_json(self.root / "cirr" / "image_splits" / "split.rc2.val.json", self.split, indent=1)
        atomic_write_json(self.root / "cirr" / "captions" / "cap.rc2.val.json", self.queries, indent=1)
        return {"folder": self.root.name, "num_queries": len(self.queries), "num_images": len(self.split)}


def _count_kind(writer: _KindWriter, stamp_id: str, image, size: int) -> None:
    content = _content(image)
    names = {count: writer.add_image(f"{stamp_id}-x{count}", _square(arrange([content] * count), size))
             for count in COUNT_PHRASINGS}
    writer.add_queries(list(names.values()), [
        (names[a], names[b], _stable_choice(COUNT_PHRASINGS[b], f"{stamp_id}:{a}:{b}"))
        for a in COUNT_PHRASINGS for b in COUNT_PHRASINGS if a != b
    ])


def _add_object_kind(writer: _KindWriter, stamp_id: str, image, partners, size: int) -> None:
    """`partners`: (partner id, partner image, partner caption) of other held-out objects."""
    content = _content(image)
    alone = writer.add_image(f"{stamp_id}-alone", _square(content, size))
    members, pairs = [alone], []
    for partner_id, partner_image, partner_caption in partners:
        name = writer.add_image(f"{stamp_id}-with-{partner_id}", _square(arrange([content, _content(partner_image)]),
                                                                         size))
        members.append(name)
        phrase = object_phrase(partner_caption)
        pairs.append((alone, name, _stable_choice(ADD_OBJECT_PHRASINGS, f"{stamp_id}:{partner_id}").format(
            object=phrase)))
    writer.add_queries(members, pairs)


def _background_kind(writer: _KindWriter, stamp_id: str, image, colour_values: dict, size: int) -> None:
    content = _content(image)
    backgrounds = {"white": (255, 255, 255), **colour_values}
    names = {colour: writer.add_image(f"{stamp_id}-on-{colour}", _square(content, size, tuple(value)))
             for colour, value in backgrounds.items()}
    pairs = [(names["white"], names[colour], _stable_choice(BACKGROUND_PHRASINGS, f"{stamp_id}:white:{colour}")
              .format(colour=colour)) for colour in colour_values]
    pairs += [(names[colour], names["white"], _stable_choice(BACKGROUND_PHRASINGS, f"{stamp_id}:{colour}:white")
               .format(colour="white")) for colour in colour_values]
    writer.add_queries(list(names.values()), pairs)


def _orientation_kind(writer: _KindWriter, stamp_id: str, image, size: int) -> None:
    content = _content(image)
    variants = {
        "upright": content,
        "mirrored": content.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "upside_down": content.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    }
    squares = {name: _square(variant, size) for name, variant in variants.items()}
    # a symmetric stamp looks the same flipped: such a query would have two right answers
    turned = [name for name in ("mirrored", "upside_down") if _differs(squares[name], squares["upright"])]
    if not turned:
        return
    names = {name: writer.add_image(f"{stamp_id}-{name}", squares[name]) for name in ["upright", *turned]}
    pairs = []
    for name in turned:
        there = _stable_choice(ORIENTATION_PHRASINGS[name], f"{stamp_id}:{name}")
        pairs.append((names["upright"], names[name], there))
        pairs.append((names[name], names["upright"],
                      _stable_choice(ORIENTATION_PHRASINGS["upright"], f"{stamp_id}:{name}:back")))
    writer.add_queries(list(names.values()), pairs)


# -- the benchmark ----------------------------------------------------------------------------------------------------


def choose_partners(objects: list[tuple[str, Image.Image, str]], stamp_id: str,
                    count: int = PARTNERS_PER_STAMP) -> list[tuple[str, Image.Image, str]]:
    """The other held-out objects a stamp is shown beside, by a fixed hash."""
    candidates = [item for item in objects if item[0] != stamp_id]
    candidates.sort(key=lambda item: hashlib.sha1(f"{stamp_id}+{item[0]}".encode()).hexdigest())
    return candidates[:count]


def is_addable_object(caption: str) -> bool:
    """Whether a stamp's caption names an object one can ask to add ("a kangaroo", "an alien tree"), rather than a
    letter, a sign, a number or a word ("the sign for the letter b ...", "nine", "excited")."""
    return caption.split(" ", 1)[0] in ("a", "an")


def build_kinds_benchmark(stamps: list[tuple[str, Image.Image, str]], tinted: Callable, colour_values: dict,
                          root: str | Path, size: int = 96) -> dict[str, dict]:
    """Write one CIRR folder per kind under `root` and `kinds.json`; return {kind: {folder, num_queries, num_images}}.

    Args:
        stamps: `(stamp_id, RGBA image, caption)` of the held-out stamps (never in the backbone's data or the
            triplets).
        tinted: `tinted(image, colour) -> RGB image`, the recoloured benchmark image exactly as the colour benchmark
            of the first round made it (`demo.benchmark.build_colour_benchmark` writes the colour kind).
        colour_values: colour name -> RGB, the tint colours (also the background colours).
        root: the benchmark folder.
        size: image side in pixels.
    """
    root = Path(root)
    colour = build_colour_benchmark([(stamp_id, image) for stamp_id, image, _ in stamps], tinted, tuple(colour_values),
                                    root / "colour")
    summary = {"colour": _count_folder(colour)}
    partner_pool = [stamp for stamp in stamps if is_addable_object(stamp[2])]
    writers = {kind: _KindWriter(root / kind) for kind in KINDS if kind != "colour"}
    for stamp_id, image, _ in stamps:
        _count_kind(writers["count"], stamp_id, image, size)
        _add_object_kind(writers["add_object"], stamp_id, image, choose_partners(partner_pool, stamp_id), size)
        _background_kind(writers["background"], stamp_id, image, colour_values, size)
        _orientation_kind(writers["orientation"], stamp_id, image, size)
    # a kind that asks nothing (every stamp symmetric, say) is left out rather than written empty
    summary.update({kind: writer.write() for kind, writer in writers.items() if writer.queries})
    summary = {kind: summary[kind] for kind in KINDS if kind in summary}
    atomic_write_json(root / "kinds.json", summary)
    return summary


def _count_folder(folder: Path) -> dict:
    captions = json.loads((folder / "cirr" / "captions" / "cap.rc2.val.json").read_text())
    split = json.loads((folder / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    return {"folder": folder.name, "num_queries": len(captions), "num_images": len(split)}


def load_kinds(root: str | Path) -> dict[str, Path]:
    """{kind: CIRR data_dir} of a benchmark `build_kinds_benchmark` wrote, in `KINDS` order."""
    root = Path(root)
    summary = json.loads((root / "kinds.json").read_text())
    return {kind: root / summary[kind]["folder"] for kind in KINDS if kind in summary}
