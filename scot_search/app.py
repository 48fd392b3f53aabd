"""The SCOT web demo (Gradio): pick or upload a reference image, type the change, see the top-K and the Combiner's λ.

    scot-search web                                    # scot-demo/ on the demo's colour gallery (after `make demo`)
    scot-search web --index photos-index               # your own gallery (built by `scot-search index`)
    python -m scot_search.app --port 7860              # the same, Spaces-style

Uploads are bounded twice: by size in bytes (Gradio's `max_file_size`, refused before it reaches the model) and by
pixel count (checked before decoding the pixels). Bad input — a corrupt or non-image file, an image over the limits,
an empty text — is shown as a short message in the page, never as a stack trace.
"""

from __future__ import annotations

import argparse
import sys
import logging
import os
from pathlib import Path

from .search import DEFAULT_MODEL

logger = logging.getLogger(__name__)

DEFAULT_INDEX = "outputs/demo/gallery-index"
DEFAULT_GALLERY = "outputs/demo/benchmark/dev"  # the demo's tinted stamps: "this, but in blue" has an answer
DEFAULT_MAX_UPLOAD_MB = 10
DEFAULT_MAX_PIXELS = 25_000_000
MAX_K = 50
UNREADABLE_UPLOAD = ("The uploaded file is not an image this demo can read (PNG, JPEG, WebP, GIF, BMP or TIFF "
                     "expected), or it is damaged.")


def check_reference_image(path, max_pixels: int):
    """Open an uploaded reference image, or raise ValueError with a message fit for the page."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size  # read from the header: the pixels are not decoded yet
            if width * height > max_pixels:
                raise ValueError(f"The image is {width}×{height} = {width * height / 1e6:.1f} megapixels; this demo "
                                 f"accepts at most {max_pixels / 1e6:.1f} megapixels. Please upload a smaller image.")
            image.load()
            return image.copy()
    except Image.DecompressionBombError:
        raise ValueError(f"The image has far more pixels than this demo accepts ({max_pixels / 1e6:.1f} megapixels "
                         "at most).") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise ValueError(UNREADABLE_UPLOAD) from None


def _explain_unreadable(decode):
    """Wrap gr.Image's `preprocess`: Gradio decodes an upload before our handler runs, and PIL's errors would reach
    the page as a bare "Error" (or a temporary path). An instance attribute, not a subclass: Gradio writes a .pyi stub
    beside any file that defines a component class."""
    import gradio as gr

    def decode_or_explain(payload):
        try:
            return decode(payload)
        except Exception:  # noqa: BLE001 - whatever PIL raises, the user needs the same sentence
            raise gr.Error(UNREADABLE_UPLOAD, print_exception=False) from None

    return decode_or_explain


def build_app(searcher, *, max_pixels: int = DEFAULT_MAX_PIXELS, examples: list[str] | None = None,
              title: str | None = None):
    """A `gr.Blocks` page around a `GallerySearcher`. `examples` are image paths offered as references."""
    import gradio as gr

    index = searcher.index
    model_name = index.metadata.get("model_name_or_path") or "SCOT model"
    if Path(model_name).is_dir():
        model_name = Path(model_name).name  # a local folder: its name, not where it lies on this machine
    has_images = any(index.paths) or "dataset" in index.metadata.get("source", {})

    def search(reference_path, text, k):
        if reference_path is None:
            raise gr.Error("Pick or upload a reference image first.", print_exception=False)
        if not text or not text.strip():
            raise gr.Error("Type the change you want, e.g. “in blue”.", print_exception=False)
        try:
            image = check_reference_image(reference_path, max_pixels)
            result = searcher.query(image=image, text=text, k=int(k))
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None
        shown = [(searcher.hit_image(hit), hit) for hit in result.hits] if has_images else []
        gallery = [(image, f"#{hit.rank} {hit.id} · {hit.score:.3f}") for image, hit in shown if image is not None]
        table = [[hit.rank, hit.id, round(hit.score, 4)] for hit in result.hits]
        weight = result.text_weight
        summary = (f"**Combiner weights:** text λ = **{weight:.2f}**, image 1 − λ = **{1 - weight:.2f}** · "
                   f"top {len(result.hits)} of {len(index)} gallery images")
        return gallery, table, summary

    with gr.Blocks(title="SCOT composed image search") as app:
        gr.Markdown(f"# {title or 'SCOT composed image search'}\n"
                    f"An image and a change in words → the gallery images that look like the image, changed as the "
                    f"text says. Model: `{model_name}` · gallery: {len(index)} images ({index.index_type} index).")
        with gr.Row():
            with gr.Column(scale=1):
                reference = gr.Image(label="Reference image", type="filepath", sources=["upload", "clipboard"],
                                     elem_id="reference-image", height=280)
                reference.preprocess = _explain_unreadable(reference.preprocess)
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
        # one queue for both triggers: one search at a time (the model and faiss's thread setting are shared)
        button.click(search, inputs, outputs, api_name="search", concurrency_id="search")
        text.submit(search, inputs, outputs, concurrency_id="search")
    return app


def gallery_folders(index) -> list[str]:
    """Folders Gradio may serve result images from (those of the indexed files only)."""
    folder = index.metadata.get("source", {}).get("folder")
    if folder:
        return [folder]
    return sorted({str(Path(path).parent) for path in index.paths if path})


def load_or_build_searcher(index_dir, model=None, gallery=None, device=None):
    """The searcher of `index_dir`. If there is no index yet, or it was encoded by another encoder (the demo's
    backbone was retrained) and `gallery` is the folder it indexed, `gallery` is indexed (again) first."""
    from transformers import AutoModel, AutoProcessor

    import modeling_scot  # noqa: F401 - registers the Auto classes

    from .index import GalleryIndex, build_gallery_index, list_image_folder
    from .search import GallerySearcher

    index = None
    if (Path(index_dir) / "index.json").is_file():
        index = GalleryIndex.load(index_dir)
        model = model or index.metadata.get("model_name_or_path")
    elif gallery is None or not Path(gallery).is_dir():
        raise FileNotFoundError(f"No gallery index in {str(index_dir)!r} and no gallery folder to build one: run "
                                "`scot-search index FOLDER --output INDEX` (or `make demo` for the default).")
    model = model or DEFAULT_MODEL
    if model == DEFAULT_MODEL and not Path(model).is_dir():
        raise FileNotFoundError(f"The default model folder {DEFAULT_MODEL!r} does not exist: run `make demo` first, "
                                "or pass --model.")
    scot_model = AutoModel.from_pretrained(model)
    processor = AutoProcessor.from_pretrained(model)
    if device:
        scot_model.to(device)
    if index is not None:
        try:
            return GallerySearcher(scot_model, processor, index)
        except ValueError:
            indexed_folder = index.metadata.get("source", {}).get("folder")
            if gallery is None or indexed_folder != str(Path(gallery).resolve()):
                raise
            logger.warning("%s was encoded by another encoder than %s's: indexing %s again.", index_dir, model, gallery)
    items, ignored = list_image_folder(gallery)
    build_gallery_index(scot_model, processor, items, index_dir, model_name_or_path=str(Path(model).resolve()),
                        source={"folder": str(Path(gallery).resolve())}, ignored_files=ignored)
    return GallerySearcher(scot_model, processor, GalleryIndex.load(index_dir))


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", default=DEFAULT_INDEX, help=f"gallery index folder (default {DEFAULT_INDEX})")
    parser.add_argument("--model", default=None, help="model folder (default: the index's; scot-demo to build one)")
    parser.add_argument("--gallery", default=DEFAULT_GALLERY,
                        help=f"folder indexed when --index does not exist yet (default {DEFAULT_GALLERY})")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest upload in MB")
    parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest upload in pixels")
    parser.add_argument("--examples", type=int, default=8, help="gallery images offered as references")
    parser.add_argument("--device", default=None)


def launch_app(app, searcher, *, host="127.0.0.1", port=7860, max_upload_mb=DEFAULT_MAX_UPLOAD_MB,
               prevent_thread_lock=False):
    """Serve the page; only the gallery's own folders are readable through Gradio's file route."""
    return app.launch(server_name=host, server_port=port, max_file_size=f"{int(max_upload_mb * 1024)}kb",
                      allowed_paths=gallery_folders(searcher.index), prevent_thread_lock=prevent_thread_lock,
                      show_error=True, quiet=True)


def example_images(index, count: int) -> list[str]:
    """`count` gallery images spread evenly over the (sorted) gallery, as reference suggestions."""
    paths = [path for path in index.paths if path]
    if not paths or count <= 0:
        return []
    positions = sorted({round(i * (len(paths) - 1) / max(count - 1, 1)) for i in range(min(count, len(paths)))})
    return [paths[position] for position in positions]


def run_app(args) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    searcher = load_or_build_searcher(args.index, args.model, args.gallery, args.device)
    app = build_app(searcher, max_pixels=args.max_pixels, examples=example_images(searcher.index, args.examples))
    print(f"SCOT web demo on http://{args.host}:{args.port} ({len(searcher.index)} gallery images)")
    launch_app(app, searcher, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)


def main(argv=None) -> int:
    from .cli import main as cli_main

    return cli_main(["web", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
