"""A small triplet dataset (coloured shapes) written as parquet, the way `load_dataset(folder)` reads it, and a
callback that interrupts a run (the resume tests)."""

import itertools

from PIL import Image, ImageDraw
from transformers import TrainerCallback

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (235, 210, 40)}
SHAPES = ("square", "circle", "triangle", "bar")


def draw(shape: str, colour: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    box = (4, 4, size - 4, size - 4)
    fill = COLOURS[colour]
    if shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "triangle":
        pen.polygon([(size // 2, 4), (size - 4, size - 4), (4, size - 4)], fill=fill)
    else:
        pen.rectangle((4, size // 2 - 4, size - 4, size // 2 + 4), fill=fill)
    return image


def triplet_rows():
    """64 rows: every (shape, colour, new colour) with new colour != colour, plus 16 'add a border' rows."""
    rows = []
    for shape, colour, new_colour in itertools.product(SHAPES, COLOURS, COLOURS):
        if colour == new_colour:
            continue
        rows.append({"image": draw(shape, colour), "caption": f"a {colour} {shape}",
                     "modification": f"make it {new_colour}", "modified_caption": f"a {new_colour} {shape}"})
    for shape, colour in itertools.product(SHAPES, COLOURS):
        rows.append({"image": draw(shape, colour), "caption": f"a {colour} {shape}",
                     "modification": "make it bigger", "modified_caption": f"a big {colour} {shape}"})
    return rows


def save_triplet_dataset(folder, rows=None, with_kinds: bool = False):
    """`rows` (default `triplet_rows()`) as parquet; `with_kinds` adds the generator's `kind` column: "colour" for
    the recolourings, "size" for the 'make it bigger' rows."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    rows = triplet_rows() if rows is None else rows
    columns = {"image": ImageFeature(), "caption": Value("string"), "modification": Value("string"),
               "modified_caption": Value("string")}
    if with_kinds:
        rows = [{**row, "kind": "size" if row["modification"] == "make it bigger" else "colour"} for row in rows]
        columns["kind"] = Value("string")
    features = Features(columns)
    dataset = Dataset.from_list(rows, features=features)
    folder.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(folder / "train.parquet"))
    return folder


class StopAt(TrainerCallback):
    """Save a checkpoint and stop at global step `step`, as a killed run would have left it."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True
