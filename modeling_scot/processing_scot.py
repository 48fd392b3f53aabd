"""Processor class for SCOT: the encoder's own image processor and tokenizer behind one call."""

import os

from transformers import AutoImageProcessor, AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)

# What the processor accepts as one image, for error messages.
_IMAGE_TYPES = "PIL images, numpy arrays, torch tensors or paths to image files"


# PIL's own decompression-bomb limit; callers that take uploads pass a smaller one.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageLoadError(ValueError):
    """An image that cannot be decoded, or has more pixels than allowed; the message names the image."""


class ImageTooLargeError(ImageLoadError):
    """An image with more pixels than allowed, refused from its header (nothing decoded)."""


def _is_image_source(value) -> bool:
    """Whether `load_image` reads `value` (a file, bytes, an Image cell or a PIL image), not an array or tensor."""
    from PIL import Image

    return isinstance(value, (str, os.PathLike, bytes, bytearray, dict, Image.Image))


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(str(source))
    if isinstance(source, dict) and source.get("path") and not source.get("bytes"):
        return repr(str(source["path"]))
    return "(image bytes)" if isinstance(source, (bytes, bytearray, dict)) else f"({type(source).__name__})"


def _to_8bit(image):
    """16-bit and 32-bit integer images scaled to 8 bits (not clipped: a plain `convert` saturates them to white);
    float images read as [0, 1] when their values lie there, else as [0, 255]."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
    elif image.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    else:  # "I": 32-bit ints, which PIL also uses for 16-bit PNGs
        peak = values.max() if values.size else 0
        scale = 1.0 if peak <= 255 else 255.0 / 65535.0 if peak <= 65535 else 255.0 / 4294967295.0
    return Image.fromarray(np.clip(np.nan_to_num(values) * scale + 0.5, 0, 255).astype(np.uint8), mode="L")


def to_rgb(image, background=(255, 255, 255)):
    """Return `image` as an RGB PIL image when it is a PIL image, an image file or bytes (decoded by `load_image`) or a
    2-D / 4-channel uint8 array; other arrays and tensors are returned unchanged for the image processor.

    Grayscale, palette and CMYK images are converted; 16-bit, 32-bit and float images are scaled to 8 bits;
    transparent pixels (RGBA, LA, palettes with a transparent index) are composited onto a white `background` rather
    than dropped, because a plain `convert("RGB")` keeps whatever colour the invisible pixels happen to hold."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike, bytes, bytearray, dict)):
        return load_image(image, background=background)
    if type(image).__module__ == "numpy" and image.dtype == "uint8" and (image.ndim == 2 or image.shape[-1] in (2, 4)):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        return image

    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")  # applies the palette's transparent index, if any
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(source, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, background=(255, 255, 255)):
    """The one image decoder of the package: an RGB PIL image from a file path, encoded bytes, a `datasets` Image cell
    (`{"bytes", "path"}`) or a PIL image.

    When decoding a file or bytes, the EXIF orientation is applied (as `datasets` and transformers' `load_image` do: a
    phone photo stored sideways embeds as it is shown); a PIL image is taken as the caller decoded it. Then `to_rgb`
    normalises the mode. The pixel count is read from the header and checked
    against `max_pixels` *before* the pixels are decoded, so a small file that would expand to gigabytes is refused
    cheaply. Raises `ImageLoadError` (a `ValueError`) naming the image when it cannot be read or is too large."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, Image.Image):  # decoded by the caller, who owns its orientation (as image processors do)
        return to_rgb(source, background)
    name = _describe(source)
    if isinstance(source, dict):
        if source.get("bytes"):
            source = source["bytes"]
        elif source.get("path"):
            source = source["path"]
        else:
            raise ImageLoadError(f"The image cell {source!r} holds neither bytes nor a path.")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif not isinstance(source, (str, os.PathLike)):
        raise ImageLoadError(f"Cannot read an image from a value of type {type(source).__name__}: expected "
                             f"{_IMAGE_TYPES}, encoded bytes or a datasets Image cell.")
    try:
        with Image.open(source) as opened:
            width, height = opened.size  # from the header: nothing is decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(f"The image {name} is {width}x{height} = {width * height / 1e6:.1f} "
                                         f"megapixels; at most {max_pixels / 1e6:.1f} megapixels are accepted.")
            opened.load()
            image = ImageOps.exif_transpose(opened)
            image = image.copy() if image is opened else image
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(f"The image file {name} does not exist.") from None
    except Image.DecompressionBombError:  # PIL refuses at open, before our check, above twice its own limit
        limit = max_pixels if max_pixels is not None else DEFAULT_MAX_PIXELS
        raise ImageTooLargeError(f"The image {name} has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.1f} "
                                 f"megapixels (a decompression bomb); at most {limit / 1e6:.1f} megapixels are "
                                 "accepted.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        what = "image file" if isinstance(source, (str, os.PathLike)) else "image"
        raise ImageLoadError(f"Could not read the {what} {name}: {error}") from None
    return to_rgb(image, background)


class ScotProcessor(ProcessorMixin):
    r"""
    Wraps the encoder's image processor and tokenizer. `processor(images=..., text=..., return_tensors="pt")`
    returns `pixel_values`, `input_ids` and `attention_mask`, ready for `ScotModel`.

    Args:
        image_processor: the encoder's image processor (e.g. `CLIPImageProcessor`, `BlipImageProcessor`).
        tokenizer: the encoder's tokenizer.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_backbone(cls, backbone: str | os.PathLike, **kwargs) -> "ScotProcessor":
        """The processor for a model built with `ScotModel.from_backbone(backbone)`, from the same folder or hub id.

        The tokenizer's `model_max_length` is capped at the text encoder's position limit (CLIP: 77), so long
        modification texts are truncated instead of overflowing the position embeddings; saved with the processor."""
        from transformers import AutoConfig

        from .configuration_scot import encoder_text_positions

        tokenizer = AutoTokenizer.from_pretrained(backbone, **kwargs)
        positions = encoder_text_positions(AutoConfig.from_pretrained(backbone, **kwargs))
        if positions is not None and tokenizer.model_max_length > positions:
            logger.info("Texts are truncated at the text encoder's %d positions (the tokenizer said %s).", positions,
                        tokenizer.model_max_length)
            tokenizer.model_max_length = positions
        return cls(image_processor=AutoImageProcessor.from_pretrained(backbone, **kwargs), tokenizer=tokenizer)

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        return_tensors: str | None = None,
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Args:
            images: one image or a list of them (PIL, numpy, torch, or file paths). Converted to RGB.
            text (`str` or `list[str]`): one text or a list of non-empty texts.
            return_tensors (`str`, *optional*): `"pt"` for PyTorch tensors.
            padding, truncation, max_length: passed to the tokenizer (texts are cut at the encoder's maximum length).
            kwargs: passed to the image processor.
        """
        if images is None and text is None:
            raise ValueError("ScotProcessor needs images=..., text=... or both.")
        outputs = {}
        num_images = num_texts = None

        if images is not None:
            image_list = list(images) if isinstance(images, (list, tuple)) else [images]
            if not image_list:
                raise ValueError(f"images is an empty list: pass one or more {_IMAGE_TYPES}.")
            for position, image in enumerate(image_list):
                if image is None:
                    raise ValueError(f"images[{position}] is None: expected one of {_IMAGE_TYPES}.")
            image_list = [load_image(image) if _is_image_source(image) else to_rgb(image) for image in image_list]
            num_images = len(image_list)
            outputs.update(self.image_processor(image_list, return_tensors=return_tensors, **kwargs))

        if text is not None:
            text_list = [text] if isinstance(text, str) else text
            if not isinstance(text_list, (list, tuple)) or not all(isinstance(t, str) for t in text_list):
                raise ValueError(f"text must be a string or a list of strings, got {type(text).__name__}.")
            if not text_list:
                raise ValueError("text is an empty list: pass one or more non-empty strings.")
            empty = [position for position, t in enumerate(text_list) if not t.strip()]
            if empty:
                raise ValueError(f"text[{empty[0]}] is empty: every modification text must contain words.")
            num_texts = len(text_list)
            if max_length is None and truncation:
                max_length = min(self.tokenizer.model_max_length, 512)
            tokens = self.tokenizer(
                list(text_list),
                padding=padding,
                truncation=truncation,
                max_length=max_length,
                return_tensors=return_tensors,
                return_token_type_ids=False,
            )
            outputs.update(tokens)

        if num_images is not None and num_texts is not None and num_images != num_texts:
            raise ValueError(
                f"ScotProcessor got {num_images} image(s) and {num_texts} text(s): a composed query needs one "
                "modification text per reference image."
            )
        return BatchFeature(data=dict(outputs), tensor_type=return_tensors)

    @property
    def model_input_names(self):
        return ["pixel_values", "input_ids", "attention_mask"]


__all__ = ["DEFAULT_MAX_PIXELS", "ImageLoadError", "ImageTooLargeError", "ScotProcessor", "load_image", "to_rgb"]
