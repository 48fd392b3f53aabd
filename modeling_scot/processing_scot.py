"""Processor class for SCOT: the encoder's own image processor and tokenizer behind one call."""

import os

from transformers import AutoImageProcessor, AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

# What the processor accepts as one image, for error messages.
_IMAGE_TYPES = "PIL images, numpy arrays, torch tensors or paths to image files"


def to_rgb(image, background=(255, 255, 255)):
    """Return `image` as an RGB PIL image when it is a PIL image, an image file path or a 2-D / 4-channel uint8
    array; other arrays and tensors are returned unchanged for the image processor.

    Grayscale, palette and CMYK images are converted; transparent pixels (RGBA, LA, palettes with a transparent
    index) are composited onto a white `background` rather than dropped, because a plain `convert("RGB")` keeps
    whatever colour the invisible pixels happen to hold (often black)."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                opened.load()
                image = opened.copy()
        except (OSError, ValueError) as error:
            raise ValueError(f"Could not read the image file {str(image)!r}: {error}") from error
    elif type(image).__module__ == "numpy" and image.dtype == "uint8" and (image.ndim == 2 or image.shape[-1] in (2, 4)):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        return image

    if image.mode == "P":
        image = image.convert("RGBA")  # applies the palette's transparent index, if any
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


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
        """The processor for a model built with `ScotModel.from_backbone(backbone)`, from the same folder or hub id."""
        return cls(
            image_processor=AutoImageProcessor.from_pretrained(backbone, **kwargs),
            tokenizer=AutoTokenizer.from_pretrained(backbone, **kwargs),
        )

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
            image_list = [to_rgb(image) for image in image_list]
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


__all__ = ["ScotProcessor", "to_rgb"]
