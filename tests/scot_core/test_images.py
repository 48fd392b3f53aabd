"""The one image decoder: EXIF orientation, 16-bit and float modes, alpha, and the pixel limit read from the header."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_scot import ScotModel, ScotProcessor
from scot_core import DEFAULT_MAX_PIXELS, ImageLoadError, encode_images, load_image, try_load_image

# EXIF tag 0x0112; value 6 = "the stored pixels must be rotated 90° clockwise to be shown upright"
ORIENTATION_TAG = 0x0112


def _pattern(width=48, height=32, seed=0) -> Image.Image:
    """An upright, non-square image whose rotations all differ."""
    generator = np.random.default_rng(seed)
    pixels = generator.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 3] = (250, 20, 20)  # a red block in the top-left corner
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def tiny_clip(backbone_folders):
    return (
        ScotModel.from_backbone(backbone_folders["clip"]).eval(),
        ScotProcessor.from_backbone(backbone_folders["clip"]),
    )


def _embed(tiny_clip, images) -> torch.Tensor:
    model, processor = tiny_clip
    embeds, readable = encode_images(model, processor, images, show_progress=False)
    assert readable.all()
    return embeds


def test_exif_rotated_jpeg_embeds_as_its_upright_self(tmp_path, tiny_clip):
    upright = _pattern()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a phone writes when held sideways
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())

    loaded = load_image(path)
    assert loaded.size == upright.size  # shown upright: 48 wide, 32 high
    with Image.open(path) as raw:  # the file's pixels as stored, turned upright by hand
        by_hand = raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(loaded), np.asarray(by_hand))

    sideways, upright_by_decoder, upright_by_hand = _embed(tiny_clip, [stored, path, by_hand])
    torch.testing.assert_close(upright_by_decoder, upright_by_hand, atol=1e-5, rtol=0)
    # the orientation matters to the encoder: ignoring it gives another embedding
    assert (upright_by_decoder - sideways).abs().max() > 1e-3


def test_16_bit_png_equals_its_8_bit_version(tmp_path, tiny_clip):
    eight_bit = np.asarray(_pattern().convert("L"))
    sixteen_bit = eight_bit.astype(np.uint16) * 257  # the same picture on the full 16-bit range
    path16, path8 = tmp_path / "deep.png", tmp_path / "plain.png"
    Image.fromarray(sixteen_bit).save(path16)
    Image.fromarray(eight_bit).save(path8)
    with Image.open(path16) as opened:
        assert opened.mode.startswith("I")  # PIL reads it as a 16/32-bit integer image, not 8-bit

    loaded16, loaded8 = load_image(path16), load_image(path8)
    assert np.abs(np.asarray(loaded16, dtype=int) - np.asarray(loaded8, dtype=int)).max() <= 1  # quantisation
    assert np.asarray(loaded16).mean() < 250  # not saturated to white, as a plain convert("RGB") does
    embed16, embed8 = _embed(tiny_clip, [path16, path8])
    torch.testing.assert_close(embed16, embed8, atol=1e-5, rtol=0)


def test_float_image_in_unit_range_is_scaled_not_collapsed():
    values = np.linspace(0.0, 1.0, 64 * 16, dtype=np.float32).reshape(16, 64)
    loaded = np.asarray(load_image(Image.fromarray(values, mode="F")))
    assert loaded.shape == (16, 64, 3)
    assert loaded[..., 0].min() == 0 and loaded[..., 0].max() == 255
    assert len(np.unique(loaded[..., 0])) > 200  # a ramp, not two values


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert np.asarray(load_image(rgba)).min() == 255


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels but which holds no pixel data at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_from_the_header_and_names_the_file(tmp_path):
    # The files hold no pixel data: a refusal naming the size can only come from the header, before decoding.
    large = tmp_path / "large.png"
    large.write_bytes(_png_header_only(2_000, 1_500))
    with pytest.raises(ImageLoadError, match=r"large\.png.* 2000x1500 = 3\.0 megapixels; at most 1\.0 megapixels"):
        load_image(large, max_pixels=1_000_000)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20_000, 20_000))  # 400 MP claimed in 60 bytes
    assert 20_000 * 20_000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageLoadError, match=r"bomb\.png.*megapixels"):
        load_image(bomb)
    with pytest.raises(ImageLoadError, match=r"bomb\.png.*megapixels"):
        load_image(bomb, max_pixels=None)  # no limit of ours: PIL's own bomb check still names the file
    assert try_load_image(str(bomb)) is None  # datasets and galleries skip it, counted


def test_unreadable_inputs_are_named(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageLoadError, match=r"notes\.txt"):
        load_image(text)
    with pytest.raises(ImageLoadError, match=r"missing\.png.*does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="neither bytes nor a path"):
        load_image({"bytes": None, "path": None})
    with pytest.raises(ImageLoadError, match="type int"):
        load_image(3)


def test_image_cells_and_bytes_decode_like_files(tmp_path):
    path = tmp_path / "picture.png"
    _pattern().save(path)
    from_file = np.asarray(load_image(path))
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), from_file)
    assert np.array_equal(np.asarray(load_image({"bytes": path.read_bytes(), "path": None})), from_file)
    assert np.array_equal(np.asarray(load_image({"bytes": None, "path": str(path)})), from_file)
