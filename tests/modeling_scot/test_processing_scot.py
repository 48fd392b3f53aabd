"""ScotProcessor: image conversion, clear errors, and the AutoProcessor round trip."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

import modeling_scot  # noqa: F401  (registers the Auto classes)
from modeling_scot import ScotModel, ScotProcessor
from modeling_scot.processing_scot import to_rgb


def _palette_with_transparent_index():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0] + [0, 0, 255] * 255)  # index 0 red, the rest blue
    image.putpixel((0, 0), 1)
    image.info["transparency"] = 0  # red pixels are transparent
    return image


@pytest.mark.parametrize(
    "image, expected_corner",
    [
        (Image.new("L", (8, 8), 77), (77, 77, 77)),
        (Image.new("1", (8, 8), 1), (255, 255, 255)),
        (Image.new("RGBA", (8, 8), (10, 20, 30, 0)), (255, 255, 255)),  # fully transparent -> white, not (10, 20, 30)
        (Image.new("RGBA", (8, 8), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("LA", (8, 8), (0, 0)), (255, 255, 255)),
        (Image.new("CMYK", (8, 8), (0, 0, 0, 0)), (255, 255, 255)),
        (np.full((8, 8), 200, dtype=np.uint8), (200, 200, 200)),
    ],
)
def test_to_rgb_converts_every_mode(image, expected_corner):
    converted = to_rgb(image)
    assert converted.mode == "RGB"
    assert converted.getpixel((7, 7)) == expected_corner


def test_palette_transparency_becomes_white():
    converted = to_rgb(_palette_with_transparent_index())
    assert converted.mode == "RGB"
    assert converted.getpixel((5, 5)) == (255, 255, 255)  # transparent red index
    assert converted.getpixel((0, 0)) == (0, 0, 255)


def test_processor_takes_mixed_modes_and_paths(backbone, tmp_path):
    _, folder = backbone
    processor = ScotProcessor.from_backbone(folder)
    path = tmp_path / "photo.png"
    Image.new("RGB", (20, 30), (1, 2, 3)).save(path)
    images = [Image.new("L", (30, 30)), Image.new("RGBA", (30, 30)), _palette_with_transparent_index(), str(path)]
    inputs = processor(images=images, text=["a", "b c", "make it blue", "red"], return_tensors="pt")
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask"}
    assert inputs["pixel_values"].shape[:2] == (4, 3)
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape and inputs["input_ids"].shape[0] == 4


def test_processor_round_trip(backbone, tmp_path):
    _, folder = backbone
    processor = ScotProcessor.from_backbone(folder)
    processor.save_pretrained(tmp_path)
    ScotModel.from_backbone(folder).config.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is ScotProcessor
    images, texts = [Image.new("RGB", (40, 33), (9, 80, 200))], ["make it green"]
    a = processor(images=images, text=texts, return_tensors="pt")
    b = reloaded(images=images, text=texts, return_tensors="pt")
    for key in a:
        assert torch.equal(a[key], b[key])


@pytest.fixture
def clip_processor(backbone_folders):
    return ScotProcessor.from_backbone(backbone_folders["clip"])


def test_empty_text_list_is_refused(clip_processor):
    with pytest.raises(ValueError, match="text is an empty list"):
        clip_processor(text=[])


def test_blank_text_is_refused(clip_processor):
    with pytest.raises(ValueError, match=r"text\[1\] is empty"):
        clip_processor(text=["make it red", "   "])


def test_non_string_text_is_refused(clip_processor):
    with pytest.raises(ValueError, match="text must be a string or a list of strings"):
        clip_processor(text=[1, 2])


def test_image_and_text_counts_must_match(clip_processor):
    with pytest.raises(ValueError, match="2 image\\(s\\) and 1 text\\(s\\)"):
        clip_processor(images=[Image.new("RGB", (8, 8))] * 2, text=["one"], return_tensors="pt")


def test_empty_image_list_and_nothing_at_all_are_refused(clip_processor):
    with pytest.raises(ValueError, match="images is an empty list"):
        clip_processor(images=[])
    with pytest.raises(ValueError, match=r"images\[0\] is None"):
        clip_processor(images=[None])
    with pytest.raises(ValueError, match="needs images=..., text=... or both"):
        clip_processor()


def test_unreadable_image_file_is_named(clip_processor, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="Could not read the image file .*broken.jpg"):
        clip_processor(images=[str(broken)])


@pytest.mark.parametrize("family", ["clip", "blip2", "dual_encoder"])
def test_long_texts_are_cut_at_the_text_encoders_positions(family, backbone_folders):
    from transformers import AutoConfig

    from modeling_scot import ScotModel
    from modeling_scot.configuration_scot import encoder_text_positions

    folder = backbone_folders[family]
    processor = ScotProcessor.from_backbone(folder)
    positions = encoder_text_positions(AutoConfig.from_pretrained(folder))
    tokens = processor(text=["make it " + "very " * 300 + "blue"], return_tensors="pt")
    assert tokens["input_ids"].shape[1] <= positions
    embeds = ScotModel.from_backbone(folder).get_text_features(**tokens)  # no position overflow
    assert embeds.shape[0] == 1 and torch.isfinite(embeds).all()
