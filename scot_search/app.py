"""The SCOT web demo (Gradio): pick or upload a reference image, type the change, see the top-K and the Combiner's λ.

    scot-search web --index photos-index                                  # a gallery indexed by `scot-search index`
    scot-search web --index photos-index --gallery photos/ --model MODEL  # indexes photos/ first if needed
    make web-demo                                                         # scot-demo/ on the demo's colour gallery

This module builds and serves the page; the command line is `scot-search web` (`cli.py`).

Uploads are bounded twice, for every way an image reaches the search: by size in bytes (Gradio's `max_file_size`
refuses a larger upload; the handler checks the file it is given again, and a base64 `data:` URL sent to the API by
its length, before decoding it) and by pixel count (read from the header by the package's image decoder, before
decoding the pixels). Gradio's own image decoding is bypassed: the reference input hands the handler the uploaded
file untouched (its `gr.Image` would decode and convert a grey, 1-bit, palette or CMYK image before any check). Bad
input — a corrupt or non-image file, an image over the limits, an empty text — is shown as a short message in the
page, never as a stack trace. The page serves no file of the gallery folder by its path: result images are decoded
from the indexed files (looked up by their row in the index) and handed to Gradio as images, which it serves from its
own cache.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path

from modeling_scot.processing_scot import ImageTooLargeError
from scot_core import ImageLoadError, load_image

from .index import GalleryIndex, build_gallery_index, list_image_folder
from .search import GallerySearcher, SearchHit, load_search_model, recorded_model_name

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 10
DEFAULT_MAX_PIXELS = 25_000_000
MAX_K = 50
# result images are shown this large at most (their longest side, in pixels): the page needs no more
THUMBNAIL_SIDE = 512
UNREADABLE_UPLOAD = ("The uploaded file is not an image this demo can read (PNG, JPEG, WebP, GIF, BMP or TIFF "
                     "expected), or it is damaged.")
NOT_UPLOADED = "Only uploaded images are searched: upload the reference image (no file of the server is read)."


def upload_limit_bytes(max_upload_mb: float) -> int:
    """`max_upload_mb` in bytes (whole KiB): Gradio's upload limit and the handler's."""
    return int(max_upload_mb * 1024) * 1024


def _too_large_message(max_upload_mb: float) -> str:
    return (f"The file is larger than this demo accepts: at most {max_upload_mb:g} MB. Please upload a smaller "
            "image.")


def check_reference_image(source: str | os.PathLike | bytes, max_pixels: int,
                          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
    """The uploaded reference image (a file, or the bytes of a `data:` URL), decoded by the package's one decoder
    once its size in bytes and its pixel count (from the header) are within the limits; else ValueError with a
    message fit for the page (the upload's temporary path is not shown)."""
    try:
        size = len(source) if isinstance(source, (bytes, bytearray)) else Path(source).stat().st_size
    except OSError:  # the upload is gone from Gradio's cache
        raise ValueError(UNREADABLE_UPLOAD) from None
    if size > upload_limit_bytes(max_upload_mb):
        raise ValueError(_too_large_message(max_upload_mb))
    try:
        return load_image(source, max_pixels=max_pixels)
    except ImageTooLargeError:
        raise ValueError(f"The image has more pixels than this demo accepts: at most {max_pixels / 1e6:.1f} "
                         "megapixels. Please upload a smaller image.") from None
    except ImageLoadError:
        raise ValueError(UNREADABLE_UPLOAD) from None


def _undecoded_upload(component, max_upload_mb: float):
    """A `preprocess` for the reference `gr.Image`: the upload as it came, for `check_reference_image` — the path of
    the uploaded file in Gradio's cache, or the bytes of a base64 `data:` URL (refused by its length before it is
    decoded). Gradio's own `preprocess` decodes the image (converting any mode but RGB, and every `data:` URL, before
    our checks run), and opens any server path an API call names without Gradio's file metadata; this one decodes
    nothing and reads only files in Gradio's cache (uploads, examples). An instance attribute, not a subclass: Gradio
    writes a .pyi stub beside any file that defines a component class."""
    import gradio as gr

    cache = Path(component.GRADIO_CACHE).resolve()

    def preprocess(payload) -> str | bytes | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            header, _, encoded = payload.url.partition(",")
            if len(encoded) * 3 // 4 > upload_limit_bytes(max_upload_mb):  # base64: 4 characters per 3 bytes
                raise gr.Error(_too_large_message(max_upload_mb), print_exception=False)
            if not header.endswith(";base64"):  # URL-encoded text: no image
                raise gr.Error(UNREADABLE_UPLOAD, print_exception=False)
            try:
                return base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise gr.Error(UNREADABLE_UPLOAD, print_exception=False) from None
        if not payload.path:  # e.g. a bare URL: never fetched
            raise gr.Error(UNREADABLE_UPLOAD, print_exception=False)
        if not Path(payload.path).resolve().is_relative_to(cache):
            raise gr.Error(NOT_UPLOADED, print_exception=False)
        return payload.path

    return preprocess


def result_thumbnail(searcher: GallerySearcher, hit: SearchHit):
    """The hit's image, decoded from the indexed file or dataset row and shrunk for the page; None if unreadable."""
    image = searcher.hit_image(hit)
    if image is not None:
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return image


def build_app(searcher: GallerySearcher, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, examples: list[str] | None = None,
              title: str | None = None):
    """A `gr.Blocks` page around a `GallerySearcher`, refusing reference images over `max_pixels` pixels or
    `max_upload_mb` MB (`launch_app` gives Gradio's upload route the same limit). `examples` are image paths offered
    as references."""
    import gradio as gr

    index = searcher.index
    model_name = index.metadata.get("model_name_or_path") or "SCOT model"
    if Path(model_name).is_dir():
        model_name = Path(model_name).name  # a local folder: its name, not where it lies on this machine
    has_images = any(index.paths) or "dataset" in index.metadata.get("source", {})

    def search(reference, text, k):
        if reference is None:
            raise gr.Error("Pick or upload a reference image first.", print_exception=False)
        if not text or not text.strip():
            raise gr.Error("Type the change you want, e.g. “in blue”.", print_exception=False)
        try:
            image = check_reference_image(reference, max_pixels, max_upload_mb)
            result = searcher.query(image=image, text=text, k=int(k))
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None
        shown = [(result_thumbnail(searcher, hit), hit) for hit in result.hits] if has_images else []
        gallery = [(image, f"#{hit.rank} {hit.id} · {hit.score:.3f}") for image, hit in shown if image is not None]
        table = [[hit.rank, hit.id, round(hit.score, 4)] for hit in result.hits]
        weight = result.text_weight
        anchor = "" if result.image_anchor_weight is None else f", image anchor β = **{result.image_anchor_weight:g}**"
        weights = "" if weight is None else (f"**Combiner weights:** text λ = **{weight:.2f}**, image 1 − λ = "
                                             f"**{1 - weight:.2f}**{anchor} · ")
        gate = ("**Grounding gate:** the text picks out none of the reference's look-alikes here, so the image "
                "alone answers · " if result.grounded is False else "")
        if result.familiar_text is False:
            gate = ("**Novelty gate:** the text is unlike the modifications the model was trained on, so the image "
                    "alone answers · ") + gate
        summary = f"{weights}{gate}top {len(result.hits)} of {len(index)} gallery images"
        return gallery, table, summary

    with gr.Blocks(title="SCOT composed image search") as app:
        gr.Markdown(f"# {title or 'SCOT composed image search'}\n"
                    f"An image and a change in words → the gallery images that look like the image, changed as the "
                    f"text says. Model: `{model_name}` · gallery: {len(index)} images ({index.index_type} index).")
        with gr.Row():
            with gr.Column(scale=1):
                reference = gr.Image(label="Reference image", type="filepath", sources=["upload", "clipboard"],
                                     elem_id="reference-image", height=280)
                reference.preprocess = _undecoded_upload(reference, max_upload_mb)
                if examples:
                    gr.Examples(examples=[[path] for path in examples], inputs=[reference], label="or pick one")
                text = gr.Textbox(label="Change", placeholder="e.g. make it blue", elem_id="change-text", lines=1)
                k = gr.Slider(1, min(MAX_K, len(index)), value=min(10, len(index)), step=1, label="Results (K)")
                button = gr.Button("Search", variant="primary", elem_id="search-button")
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="result-summary")
                gallery = gr.Gallery(label="Top-K", columns=5, height="auto", elem_id="result-gallery",
                                     visible=has_images)
                table = gr.Dataframe(headers=["rank", "id", "score"], label="Scores", elem_id="result-table",
                                     interactive=False)
        inputs, outputs = [reference, text, k], [gallery, table, summary]
        # one queue for both triggers: one search at a time (the model is shared)
        button.click(search, inputs, outputs, api_name="search", concurrency_id="search")
        text.submit(search, inputs, outputs, concurrency_id="search")
    app.max_upload_mb = max_upload_mb  # launch_app gives Gradio's upload route the handler's limit
    return app


def load_or_build_searcher(index_dir, model: str | None = None, gallery=None, device: str | None = None):
    """The searcher of `index_dir` with `model` (default: the index's). If there is no index yet, or it was encoded
    by another encoder (the demo's backbone was retrained) and `gallery` is the folder it indexed, `gallery` is
    indexed (again) first, with `model`."""
    index = None
    if (Path(index_dir) / "index.json").is_file():
        index = GalleryIndex.load(index_dir)
        model = model or index.metadata.get("model_name_or_path")
    elif gallery is None or not Path(gallery).is_dir():
        raise FileNotFoundError(f"No gallery index in {str(index_dir)!r} and no gallery folder to build one: run "
                                "`scot-search index FOLDER --model MODEL --output INDEX` first, or pass --gallery.")
    if not model:
        raise ValueError(f"No model given, and none recorded in {str(index_dir)!r}: pass --model (a SCOT model folder "
                         "or hub id).")
    scot_model, processor = load_search_model(model, device)
    if index is not None:
        try:
            return GallerySearcher(scot_model, processor, index)
        except ValueError:
            indexed_folder = index.metadata.get("source", {}).get("folder")
            if gallery is None or indexed_folder != str(Path(gallery).resolve()):
                raise
            logger.warning("%s was encoded by another encoder than %s's: indexing %s again.", index_dir, model,
                           gallery)
    items, skipped = list_image_folder(gallery)
    index = build_gallery_index(scot_model, processor, items, index_dir, model_name_or_path=recorded_model_name(model),
                                source={"folder": str(Path(gallery).resolve())}, skipped_files=skipped)
    return GallerySearcher(scot_model, processor, index)


def launch_app(app, *, host: str = "127.0.0.1", port: int = 7860, prevent_thread_lock: bool = False):
    """Serve a page of `build_app`, Gradio refusing uploads over the byte limit the page was built with. No folder is
    added to Gradio's allowed paths: its file route serves only what Gradio itself stored (uploads, the result and
    example images it was handed), never the gallery folder."""
    return app.launch(server_name=host, server_port=port, max_file_size=upload_limit_bytes(app.max_upload_mb),
                      prevent_thread_lock=prevent_thread_lock, show_error=True, quiet=True)


def example_images(index: GalleryIndex, count: int) -> list[str]:
    """`count` gallery images spread evenly over the (sorted) gallery, as reference suggestions."""
    paths = [path for path in index.paths if path]
    if not paths or count <= 0:
        return []
    positions = sorted({round(i * (len(paths) - 1) / max(count - 1, 1)) for i in range(min(count, len(paths)))})
    return [paths[position] for position in positions]
