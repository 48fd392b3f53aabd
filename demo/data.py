"""
Demo data: captioned images built from Debian packages, for the offline demo backbone and SCOT training.

Sources (each is optional; a missing one is skipped with a message saying which `apt-get install` adds it):

- `tuxpaint-stamps-default`: PNG stamps with English descriptions (first line of the sibling `.txt`) and flags in the
  `.dat` files (`colorable` / `tintable` mark recolourable stamps; `nomirror` forbids horizontal flips);
- `openclipart-png` (+ `openclipart-svg` for the SVGs' `dc:title`): titled clip art, noisy and in series of
  near-identical titles;
- `fonts-noto-color-emoji` (+ `unicode-data` for the CLDR names in `emoji-test.txt`): single emoji code points.

Every image is composited on white, cropped to its content, padded square and stored at `image_size` px (PNG bytes
embedded in parquet). Recolourable stamps also give captioned tinted variants ("a blue fedora"): without them a
contrastive backbone does not learn colour words (DESIGN.md).

Splits are by title *series* (a hash of the series name), never random: near-identical titles on both sides of a
random split inflate held-out recall. A fixed set of recolourable stamps ([`benchmark_stamps`]) is reserved for the
demo CIR benchmark and left out of every split.

    python -m demo.data --output_dir outputs/demo/data            # full build (cached by a fingerprint)
    python -m demo.data --output_dir /tmp/demo-data --limit 50    # a quick subset
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shutil
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TUXPAINT_STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
OPENCLIPART_PNG_DIR = Path("/usr/share/openclipart/png")
OPENCLIPART_SVG_DIR = Path("/usr/share/openclipart/svg")
NOTO_EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST_FILE = Path("/usr/share/unicode/emoji/emoji-test.txt")

SOURCES = ("tuxpaint", "openclipart", "emoji")
LICENSES = {
    "tuxpaint": "GPL-2.0 (Tux Paint stamps, Debian tuxpaint-stamps-default)",
    "openclipart": "public domain (Open Clip Art Library 0.18, Debian openclipart-png)",
    "emoji": "OFL-1.1 / Apache-2.0 (Noto Color Emoji, Debian fonts-noto-color-emoji)",
}
APT_PACKAGES = {
    "tuxpaint": "tuxpaint-stamps-default",
    "openclipart": "openclipart-png openclipart-svg",
    "emoji": "fonts-noto-color-emoji unicode-data",
}

# The tints of recolourable stamps, in training and in the demo CIR benchmark (which reuses `tint`).
TINT_COLOURS = {
    "red": (215, 25, 30),
    "orange": (245, 125, 15),
    "yellow": (250, 215, 20),
    "green": (35, 160, 50),
    "blue": (25, 75, 215),
    "purple": (130, 45, 180),
}
# Colour words removed from a caption before a tint's colour is put in ("a brown hat" -> "a blue hat").
_COLOUR_WORDS = set(TINT_COLOURS) | {"black", "white", "brown", "pink", "grey", "gray", "colorful", "colourful"}

NUM_BENCHMARK_STAMPS = 40
CACHE_DIR = ".arrow_cache"  # load_demo_dataset's Arrow cache, inside the dataset folder
DARK_STAMP_LIGHTNESS = 0.25  # below this (95th percentile of visible lightness) a stamp is filled, not shaded
DATA_FORMAT_VERSION = 2  # bump when the output of the builder changes, so cached folders are rebuilt


# -- captions -------------------------------------------------------------------------------------------------------


def _normalise_text(text: str) -> str:
    text = text.replace("’", "'").replace("‘", "'")
    text = re.sub(r"[“”\"«»]", "", text)
    text = re.sub(r"\s+", " ", text)
    return text.strip().lower()


def clean_caption(description: str) -> str:
    """A short lowercase caption from a Tux Paint description.

    Keeps the first sentence, drops parentheses and quotes and the final full stop:
    `"A US 25 cent piece ($.25) called a quarter."` -> `"a us 25 cent piece called a quarter"`.
    """
    text = description.strip().splitlines()[0] if description.strip() else ""
    text = re.sub(r"\([^)]*\)", " ", text)  # "($.25)", "(“PED XING”)"
    # first sentence: a full stop, "!" or "?" followed by a space (not "st. bernard" style abbreviations, which
    # are rare here) or an em dash clause
    text = re.split(r"(?<=[a-z)”\"’])[.!?](?:\s|$)|\s*—\s*", text, maxsplit=1)[0]
    text = _normalise_text(text)
    text = re.sub(r"\s+([,;:])", r"\1", text)
    return text.strip(" .,;:!?-")


def clean_title(title: str) -> str:
    """A lowercase caption from a clip-art title or file name: underscores and dashes become spaces, camelCase is
    split, numbers and other symbols are dropped (`"SoftBlueCouch_02"` -> `"soft blue couch"`)."""
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", title)  # camelCase
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", text)  # "SVGIcon" -> "SVG Icon"
    text = re.sub(r"[_\-./+]", " ", text)
    text = re.sub(r"\d+", " ", text)  # series numbers ("pantyhose10", "card 03")
    text = re.sub(r"[^A-Za-zÀ-ÿ' ]", " ", text)
    return _normalise_text(text).strip(" '")


def tint_caption(caption: str, colour: str) -> str:
    """The caption of a tinted stamp: `"a brown hat"`, `"blue"` -> `"a blue hat"` (article and old colour dropped)."""
    words = [word for word in caption.split() if word not in _COLOUR_WORDS]
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    return " ".join(["a", colour, *words])


def series_of(caption: str) -> str:
    """The title series a caption belongs to: the caption without numbers and single letters, so that "card 3",
    "card 10" and "the letter q" / "the letter r" fall in one series each."""
    words = [w for w in re.sub(r"\d+", " ", caption).split() if len(w) > 1 or w in ("a",)]
    return " ".join(words) or caption


def split_of(series: str, heldout_fraction: float) -> str:
    """`"test"` for a fixed hash-chosen `heldout_fraction` of the series, else `"train"` (stable across runs)."""
    bucket = int(hashlib.sha1(series.encode("utf-8")).hexdigest()[:8], 16) % 10_000
    return "test" if bucket < heldout_fraction * 10_000 else "train"


# -- images ---------------------------------------------------------------------------------------------------------


def prepare_image(image: Image.Image, size: int = 96) -> Image.Image:
    """Composite on white, crop to the content, pad square (white) and resize to `size` px. Returns RGB."""
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    # content = not white (alpha alone misses opaque white margins)
    content = np.asarray(rgb, dtype=np.int16).min(axis=-1) < 245
    ys, xs = np.nonzero(content)
    if len(xs):
        rgb = rgb.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    return square.resize((size, size), Image.Resampling.LANCZOS)


def tint(image: Image.Image, colour: str) -> Image.Image:
    """Recolour a stamp to one of `TINT_COLOURS`, keeping its shape and shading. Returns RGBA.

    The alpha channel is kept as is (the shape); each visible pixel becomes `colour × lightness`, with the lightness
    rescaled so the stamp's brightest visible tones (95th percentile) get the full colour and dark outlines stay dark.
    Most of Tux Paint's "colorable" stamps (letters, hands, symbols) are drawn in black, to be filled with the chosen
    colour: when even their brightest tones are dark, every visible pixel gets the full colour instead (shading by
    lightness would leave them black in every tint). An image without alpha is treated as fully opaque.
    """
    if colour not in TINT_COLOURS:
        raise ValueError(f"Unknown tint colour {colour!r}; expected one of {sorted(TINT_COLOURS)}.")
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    lightness = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    visible = alpha > 0.5
    reference = np.percentile(lightness[visible], 95) if visible.any() else 1.0
    if reference < DARK_STAMP_LIGHTNESS:  # a black stamp made to be filled with colour
        shading = np.ones_like(lightness)
    else:
        shading = np.clip(lightness / float(reference), 0.0, 1.0)
    target = np.array(TINT_COLOURS[colour], dtype=np.float32) / 255.0
    tinted = shading[..., None] * target
    out = np.concatenate([tinted, alpha[..., None]], axis=-1)
    return Image.fromarray((out * 255.0 + 0.5).astype(np.uint8), mode="RGBA")


# -- sources --------------------------------------------------------------------------------------------------------


@dataclass
class Stamp:
    """A Tux Paint stamp: `path` (PNG), English `caption`, flags from its `.dat` file, and its `series` (folder)."""

    path: str
    caption: str
    colorable: bool
    tintable: bool
    mirrorable: bool
    series: str

    @property
    def recolourable(self) -> bool:
        return self.colorable or self.tintable


def tints_differ(stamp_path: str | Path, threshold: float = 8.0) -> bool:
    """Whether the stamp's tints can be told apart: mean absolute pixel difference (0-255) between its red and blue
    tints at 64 px above `threshold`. A benchmark answer must be visible, whatever the method."""
    with Image.open(stamp_path) as raw:
        red = np.asarray(prepare_image(tint(raw, "red"), 64), dtype=np.float32)
        blue = np.asarray(prepare_image(tint(raw, "blue"), 64), dtype=np.float32)
    return float(np.abs(red - blue).mean()) > threshold


def _missing(source: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path} not found: the {source} demo images come from Debian. "
        f"Install them with `apt-get install -y --no-install-recommends {APT_PACKAGES[source]}`."
    )


def tuxpaint_stamps(root: str | Path = TUXPAINT_STAMPS_DIR) -> list[Stamp]:
    """All captioned PNG stamps under `root`, sorted by path (hand-drawn `*_mirror.png` duplicates skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise _missing("tuxpaint", root)
    stamps = []
    for png in sorted(root.rglob("*.png")):
        if png.stem.endswith("_mirror"):
            continue
        description_file = png.with_suffix(".txt")
        if not description_file.is_file():
            continue
        caption = clean_caption(description_file.read_text(encoding="utf-8", errors="replace"))
        if not caption:
            continue
        dat_file = png.with_suffix(".dat")
        flags = set(dat_file.read_text(errors="replace").split()) if dat_file.is_file() else set()
        stamps.append(
            Stamp(
                path=str(png),
                caption=caption,
                colorable="colorable" in flags,
                tintable="tintable" in flags,
                mirrorable="nomirror" not in flags,
                series="tuxpaint/" + str(png.parent.relative_to(root)),
            )
        )
    return stamps


def benchmark_stamps(root: str | Path = TUXPAINT_STAMPS_DIR, num_stamps: int = NUM_BENCHMARK_STAMPS) -> list[Stamp]:
    """The recolourable stamps reserved for the demo CIR benchmark: never in the demo dataset (any split), so
    neither the demo backbone nor SCOT trains on them or their tints.

    Chosen by a fixed hash of each stamp's path relative to `root`, so the same stamps on every machine with the same
    Debian package. Only stamps whose caption no other stamp shares are eligible (a benchmark target must be
    unambiguous), and at most half are letters: most of the ~250 recolourable stamps are letters or sign-language
    hands, the objects (clothes, shapes, coins, ...) make the better benchmark. Returns [`Stamp`]s (path, caption,
    colorable, tintable), sorted by that hash.
    """
    root = Path(root)
    stamps = tuxpaint_stamps(root)
    caption_counts: dict[str, int] = {}
    for stamp in stamps:
        caption_counts[stamp.caption] = caption_counts.get(stamp.caption, 0) + 1

    def path_hash(stamp: Stamp) -> str:
        return hashlib.sha1(str(Path(stamp.path).relative_to(root)).encode("utf-8")).hexdigest()

    eligible = sorted((s for s in stamps
                       if s.recolourable and caption_counts[s.caption] == 1 and tints_differ(s.path)), key=path_hash)

    def is_letter(stamp: Stamp) -> bool:
        return "/alphabets" in stamp.series or "sign language" in stamp.caption

    letters = [s for s in eligible if is_letter(s)]
    objects = [s for s in eligible if not is_letter(s)]
    num_objects = min(len(objects), num_stamps - min(len(letters), num_stamps // 2))
    chosen = objects[:num_objects] + letters[: num_stamps - num_objects]
    return sorted(chosen, key=path_hash)


def _svg_titles(svg_file: Path) -> tuple[str, str]:
    """(work title, creator) from an SVG's RDF metadata; empty strings when absent."""
    try:
        head = svg_file.read_text(encoding="utf-8", errors="replace")[:300_000]
    except OSError:
        return "", ""
    work = re.search(r"<cc:Work.*?</cc:Work>", head, re.S)
    block = work.group(0) if work else head
    title = re.search(r"<dc:title>([^<]*)</dc:title>", block)
    creator = re.search(r"<dc:creator>.*?<dc:title>([^<]*)</dc:title>", block, re.S)
    return (title.group(1).strip() if title else ""), (creator.group(1).strip() if creator else "")


# titles that name a collection, not the picture: fall back to the file name
_GENERIC_TITLE = re.compile(r"collection|theme|icons?\b|library|clip ?art|\bsvg\b|part of|untitled|various", re.I)


def _title_from_file_name(stem: str, creator: str) -> str:
    """A caption from a file name such as `acquila_architetto_franc_01` (creator "Architetto Francesco Rollandin"):
    file names end with a truncated creator name, whose words are dropped."""
    creator_words = [w for w in clean_title(creator).split() if len(w) > 1]
    words = clean_title(stem).split()
    while len(words) > 1 and any(c.startswith(words[-1]) for c in creator_words):
        words.pop()
    return " ".join(words)


def openclipart_items(png_root: str | Path = OPENCLIPART_PNG_DIR, svg_root: str | Path = OPENCLIPART_SVG_DIR):
    """(png path, caption) for the titled clip art. Titles come from the SVG's `dc:title` when `openclipart-svg` is
    installed and the title names the picture; otherwise from the file name."""
    png_root, svg_root = Path(png_root), Path(svg_root)
    if not png_root.is_dir():
        raise _missing("openclipart", png_root)
    pngs = sorted(png_root.rglob("*.png"))
    titles = {png: _svg_titles(svg_root / png.relative_to(png_root).with_suffix(".svg")) for png in pngs}
    # a title shared by many files is a collection name ("Lemon SVG theme", "gramastar")
    title_counts: dict[str, int] = {}
    for title, _ in titles.values():
        title_counts[title] = title_counts.get(title, 0) + 1
    items = []
    for png in pngs:
        title, creator = titles[png]
        caption = clean_title(title) if title and not _GENERIC_TITLE.search(title) and title_counts[title] < 20 else ""
        if len(caption.replace(" ", "")) < 3:
            caption = _title_from_file_name(png.stem, creator)
        if len(caption.replace(" ", "")) >= 3:
            items.append((png, caption))
    return items


def emoji_items(font_path: str | Path = NOTO_EMOJI_FONT, emoji_test: str | Path = EMOJI_TEST_FILE,
                sequences: bool = False):
    """(emoji string, caption) pairs. With `unicode-data`'s emoji-test.txt: its fully-qualified emoji with their CLDR
    names (single code points only unless `sequences=True`); without it, `unicodedata.name` of the code points the
    font covers."""
    if not Path(font_path).is_file():
        raise _missing("emoji", Path(font_path))
    items = []
    if Path(emoji_test).is_file():
        for line in Path(emoji_test).read_text(encoding="utf-8").splitlines():
            match = re.match(r"^([0-9A-F ]+?)\s*;\s*fully-qualified\s*#\s*\S+\s+E[\d.]+\s+(.+)$", line)
            if not match:
                continue
            code_points = [int(cp, 16) for cp in match.group(1).split() if cp != "FE0F"]
            if len(code_points) > 1 and not sequences:
                continue
            name = match.group(2).lower()
            name = re.sub(r"^flag: ", "flag of ", name).replace(": ", ", ")
            items.append(("".join(map(chr, code_points)), name))
    else:
        for code_point in [*range(0x2600, 0x27C0), *range(0x1F300, 0x1FB00)]:
            name = unicodedata.name(chr(code_point), "")
            if name:
                items.append((chr(code_point), name.lower()))
    return items


def render_emoji(text: str, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """The emoji drawn in colour on a transparent canvas, or None when the font has no glyph for it."""
    canvas = Image.new("RGBA", (320, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((8, 8), text, font=font, embedded_color=True)
    if canvas.getbbox() is None:
        return None
    return canvas


# -- the dataset ----------------------------------------------------------------------------------------------------


def _subset(items: list, limit: int | None) -> list:
    """`limit` items spread evenly over the sorted list (a quick build still sees every kind), or all of them."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _record(image, caption, source, series, stamp_path="", recolourable=False, tint_colour="", mirrorable=True):
    return {
        "image": {"bytes": _png_bytes(image), "path": None},
        "caption": caption,
        "source": source,
        "license": LICENSES[source],
        "series": series,
        "recolourable": recolourable,
        "tint": tint_colour,
        "stamp_path": stamp_path,
        "mirrorable": mirrorable,
    }


def _features():
    from datasets import Features, Value
    from datasets import Image as ImageFeature

    return Features(
        {
            "image": ImageFeature(),
            "caption": Value("string"),
            "source": Value("string"),
            "license": Value("string"),
            "series": Value("string"),
            "recolourable": Value("bool"),
            "tint": Value("string"),
            "stamp_path": Value("string"),
            "mirrorable": Value("bool"),
        }
    )


def _tree_fingerprint(root: Path) -> str:
    """A hash of the names, sizes and modification times of the files under `root` (cheap, catches upgrades)."""
    digest = hashlib.sha1()
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}:{stat.st_size}:{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()


def data_fingerprint(settings: dict) -> str:
    """The cache key of a build: the settings, the builder's format version and the installed source files."""
    trees = [TUXPAINT_STAMPS_DIR, OPENCLIPART_PNG_DIR, OPENCLIPART_SVG_DIR, NOTO_EMOJI_FONT.parent,
             EMOJI_TEST_FILE.parent]
    payload = json.dumps(
        {"settings": settings, "version": DATA_FORMAT_VERSION, "trees": [_tree_fingerprint(t) for t in trees]},
        sort_keys=True,
    )
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def build_demo_dataset(
    output_dir: str | Path,
    image_size: int = 96,
    sources: tuple[str, ...] = SOURCES,
    limit: int | None = None,
    heldout_fraction: float = 0.1,
    num_benchmark_stamps: int = NUM_BENCHMARK_STAMPS,
    tinted_variants: bool = True,
    emoji_sequences: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Build (or reuse) the demo dataset in `output_dir` and return its statistics (also in `demo_data.json`).

    Writes `data/{train,test}-00000-of-00001.parquet` and a README.md whose YAML `configs:` lets
    `datasets.load_dataset(output_dir)` read it (columns: image, caption, source, license, series, recolourable,
    tint, stamp_path, mirrorable). `limit` keeps N items of each source, spread evenly (tests, quick runs). A folder
    built from the same settings and the same installed Debian files is reused unless `overwrite=True`.
    A source whose Debian package is missing is skipped with a warning; if none is installed this raises.
    """
    output_dir = Path(output_dir)
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"Unknown demo data sources {sorted(unknown)}; expected a subset of {SOURCES}.")
    settings = dict(image_size=image_size, sources=sorted(sources), limit=limit, heldout_fraction=heldout_fraction,
                    num_benchmark_stamps=num_benchmark_stamps, tinted_variants=tinted_variants,
                    emoji_sequences=emoji_sequences)
    fingerprint = data_fingerprint(settings)
    reused = None if overwrite else _reusable_stats(output_dir, fingerprint)
    if reused is not None:
        print(f"Reusing the demo dataset in {output_dir} (fingerprint {fingerprint}).")
        return reused
    records, skipped_sources = collect_records(settings, progress)
    return save_demo_dataset(output_dir, records, settings, fingerprint, skipped_sources)


def _reusable_stats(output_dir: Path, fingerprint: str) -> dict | None:
    """The statistics of a dataset already built in `output_dir` with this fingerprint and all its files, else None."""
    stats_file = output_dir / "demo_data.json"
    if not stats_file.is_file():
        return None
    stats = json.loads(stats_file.read_text())
    if stats.get("fingerprint") == fingerprint and all((output_dir / f).is_file() for f in stats["files"].values()):
        return stats
    return None


def collect_records(settings: dict, progress: bool) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """The rows of every selected source, by split (`{"train": [...], "test": [...]}`), and `{source: why}` for the
    sources skipped because their Debian package is missing. Raises when no source gave a training row."""
    records: dict[str, list[dict]] = {"train": [], "test": []}
    skipped_sources = {}
    for source in SOURCES:
        if source not in settings["sources"]:
            continue
        items_of, records_of = _SOURCE_BUILDERS[source]
        try:
            items = items_of(settings)
        except FileNotFoundError as error:
            skipped_sources[source] = str(error)
            continue
        for split, record in records_of(items, settings, progress):
            records[split].append(record)
    for source, message in skipped_sources.items():
        print(f"Skipping the {source} images: {message}")
    if not records["train"]:
        raise FileNotFoundError(
            "No demo images could be built: " + " | ".join(skipped_sources.values() or ["no source selected"])
        )
    return records, skipped_sources


def _tuxpaint_items(settings: dict) -> list[Stamp]:
    reserved = {stamp.path for stamp in benchmark_stamps(num_stamps=settings["num_benchmark_stamps"])}
    return _subset([stamp for stamp in tuxpaint_stamps() if stamp.path not in reserved], settings["limit"])


def _tuxpaint_records(stamps: list[Stamp], settings: dict, progress: bool) -> Iterator[tuple[str, dict]]:
    from tqdm.auto import tqdm

    for stamp in tqdm(stamps, desc="tuxpaint stamps", disable=not progress):
        raw = Image.open(stamp.path)
        split = split_of(stamp.series, settings["heldout_fraction"])
        common = dict(source="tuxpaint", series=stamp.series, stamp_path=stamp.path,
                      recolourable=stamp.recolourable, mirrorable=stamp.mirrorable)
        yield split, _record(prepare_image(raw, settings["image_size"]), stamp.caption, **common)
        if settings["tinted_variants"] and stamp.recolourable:
            for colour in TINT_COLOURS:
                tinted = prepare_image(tint(raw, colour), settings["image_size"])
                yield split, _record(tinted, tint_caption(stamp.caption, colour), tint_colour=colour, **common)


def _openclipart_items(settings: dict) -> list[tuple[Path, str]]:
    return _subset(openclipart_items(), settings["limit"])


def _openclipart_records(clipart: list[tuple[Path, str]], settings: dict,
                         progress: bool) -> Iterator[tuple[str, dict]]:
    from tqdm.auto import tqdm

    if not OPENCLIPART_SVG_DIR.is_dir():
        print(f"{OPENCLIPART_SVG_DIR} not found: clip-art captions come from file names only "
              "(apt-get install -y --no-install-recommends openclipart-svg gives the real titles).")
    for png, caption in tqdm(clipart, desc="openclipart", disable=not progress):
        try:
            raw = Image.open(png)
            if raw.width * raw.height > 25_000_000:
                continue  # a few posters are >100 Mpx: slow to decode and no use at 96 px
            raw.load()
        except (OSError, Image.DecompressionBombError):
            continue  # a handful of the PNGs are truncated
        series = "openclipart/" + series_of(caption)
        image = prepare_image(raw, settings["image_size"])
        yield split_of(series, settings["heldout_fraction"]), _record(image, caption, "openclipart", series)


def _emoji_items(settings: dict) -> list[tuple[str, str]]:
    return _subset(emoji_items(sequences=settings["emoji_sequences"]), settings["limit"])


def _emoji_records(emoji: list[tuple[str, str]], settings: dict, progress: bool) -> Iterator[tuple[str, dict]]:
    from tqdm.auto import tqdm

    font = ImageFont.truetype(str(NOTO_EMOJI_FONT), 109)  # Noto Color Emoji's bitmaps exist only at 109
    for text, caption in tqdm(emoji, desc="emoji", disable=not progress):
        drawn = render_emoji(text, font)
        if drawn is None:
            continue
        series = "emoji/" + caption.split(",")[0]  # skin tones of one emoji form one series
        image = prepare_image(drawn, settings["image_size"])
        yield split_of(series, settings["heldout_fraction"]), _record(image, caption, "emoji", series)


# source -> (its items, raising FileNotFoundError when its Debian package is missing; the rows made from them)
_SOURCE_BUILDERS = {
    "tuxpaint": (_tuxpaint_items, _tuxpaint_records),
    "openclipart": (_openclipart_items, _openclipart_records),
    "emoji": (_emoji_items, _emoji_records),
}


def save_demo_dataset(output_dir: Path, records: dict[str, list[dict]], settings: dict, fingerprint: str,
                      skipped_sources: dict[str, str]) -> dict:
    """One parquet file per split, the card and `demo_data.json`; returns the statistics written there."""
    from datasets import Dataset

    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(output_dir / CACHE_DIR, ignore_errors=True)  # Arrow cache of a previous build
    files, counts = {}, {}
    for split, rows in records.items():
        if not rows:
            continue
        files[split] = f"data/{split}-00000-of-00001.parquet"
        Dataset.from_list(rows, features=_features()).to_parquet(str(output_dir / files[split]))
        counts[split] = {source: sum(r["source"] == source for r in rows) for source in SOURCES}
        counts[split]["tinted"] = sum(bool(r["tint"]) for r in rows)
        counts[split]["total"] = len(rows)
        counts[split]["series"] = len({r["series"] for r in rows})
    built_sources = [source for source in settings["sources"] if source not in skipped_sources]
    write_card(output_dir, files, counts, built_sources, settings["image_size"])
    reserved = benchmark_stamps(num_stamps=settings["num_benchmark_stamps"]) if "tuxpaint" in built_sources else []
    stats = {"fingerprint": fingerprint, "settings": settings, "files": files, "counts": counts,
             "skipped_sources": skipped_sources, "benchmark_stamps": [stamp.path for stamp in reserved]}
    (output_dir / "demo_data.json").write_text(json.dumps(stats, indent=2))
    return stats


def write_card(output_dir: Path, files: dict[str, str], counts: dict[str, dict[str, int]], sources: list[str],
               image_size: int) -> None:
    """README.md (`hub_cards`): its YAML `configs` tell `load_dataset(output_dir)` which parquet file is which
    split."""
    from hub_cards import render_image_dataset_card

    card = render_image_dataset_card(
        pretty_name="SCOT demo images",
        description="Captioned images from Debian packages (Tux Paint stamps, Open Clip Art, Noto Color Emoji), "
                    "built by `python -m demo.data`. Splits are by title series. See `demo_data.json` for the counts "
                    "and the stamps reserved for the demo CIR benchmark (absent from every split).",
        data_files=files, counts=counts, sources={source: LICENSES[source] for source in sources},
        num_bytes={split: (output_dir / path).stat().st_size for split, path in files.items()},
        repo_or_folder=str(output_dir),
        limitations=[f"Clip art, emoji and stamps on white at {image_size} px, not photographs: what a backbone "
                     "learns from them is a demonstration of the pipeline, not a general image encoder.",
                     "Captions come from descriptions, titles, file names and Unicode names: short, and noisy "
                     "where a title names a series or a collection rather than the picture."],
    )
    card.save(output_dir / "README.md")


def load_demo_dataset(folder: str | Path):
    """The `DatasetDict` (train, test) written by [`build_demo_dataset`]."""
    from datasets import load_dataset

    folder = Path(folder)
    if not (folder / "demo_data.json").is_file():
        raise FileNotFoundError(
            f"{folder} holds no demo dataset: build it with `python -m demo.data --output_dir {folder}`.")
    # the Arrow cache lives in the folder: the shared ~/.cache/huggingface/datasets names a local dataset after its
    # folder name and a hash that does not see the files' contents, so two builds in folders named "data" collide
    return load_dataset(str(folder), cache_dir=str(folder / CACHE_DIR))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build the demo captioned-image dataset from Debian packages.")
    parser.add_argument("--output_dir", default="outputs/demo/data")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--limit", type=int, default=None, help="keep N items of each source, spread evenly")
    parser.add_argument("--heldout_fraction", type=float, default=0.1)
    parser.add_argument("--no_tints", action="store_true", help="leave out the tinted variants of recolourable stamps")
    parser.add_argument("--emoji_sequences", action="store_true", help="also skin-tone / ZWJ emoji sequences")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--list_benchmark_stamps", action="store_true",
                        help="print the reserved stamps as JSON and exit")
    args = parser.parse_args(argv)
    if args.list_benchmark_stamps:
        print(json.dumps([asdict(stamp) for stamp in benchmark_stamps()], indent=1))
        return
    stats = build_demo_dataset(
        args.output_dir, image_size=args.image_size, sources=tuple(args.sources), limit=args.limit,
        heldout_fraction=args.heldout_fraction, tinted_variants=not args.no_tints,
        emoji_sequences=args.emoji_sequences, overwrite=args.overwrite,
    )
    print(json.dumps(stats["counts"], indent=1))


if __name__ == "__main__":
    main()
