"""The demo CIR benchmark: recolour held-out stamps and ask for the other colours, in the CIRR folder format.

Every held-out recolourable stamp is tinted to each demo colour; the gallery is every tint of every stamp. A query is
(the stamp in colour a, "make it b") and its one right answer is the same stamp in colour b. Because the answers are
known by construction, the benchmark measures composition directly: the image says *which* object, the text says
*which colour*, and neither alone can find the target. Written in CIRR's layout (val split) so that
`scot_eval` runs on it unchanged:

    {root}/cirr/captions/cap.rc2.val.json        pairid, reference, target_hard, caption, img_set (the 6 tints)
    {root}/cirr/image_splits/split.rc2.val.json  name -> ./dev/{name}.png
    {root}/dev/{name}.png

CIRR's protocol removes the reference from each ranking (R@K), and Rsubset@K ranks only the query's img_set: the
stamp's other tints, a pure colour test. The stamps come from `demo.data`'s held-out list, which never enters the
backbone's training or the SCOT triplets.
"""

import hashlib
from pathlib import Path

from scot_core import atomic_write_json

# Phrasings of a colour change; each query gets one, chosen by a hash so the benchmark is the same on every machine.
REQUEST_TEMPLATES = ("make it {colour}", "change the colour to {colour}", "the same but {colour}", "in {colour}")


def _stable_choice(options, key: str):
    return options[int(hashlib.sha1(key.encode()).hexdigest(), 16) % len(options)]


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
                    "caption": _stable_choice(REQUEST_TEMPLATES, key).format(colour=target_colour),
                    "img_set": {"id": len(split) // len(colours), "members": members},
                })
    for relative, payload in (("cirr/image_splits/split.rc2.val.json", split),
                              ("cirr/captions/cap.rc2.val.json", queries)):
        atomic_write_json(root / relative, payload, indent=1)
    return root
