"""`scot-search`: index a gallery once, then query it with (image, text) from the shell or in a browser.

    scot-search index photos/ --model MODEL --output photos-index              # encode the folder (resumable)
    scot-search query --index photos-index --image shoe.jpg --text "in blue" -k 10
    scot-search query --index photos-index --text "a red car" --json            # text-only, machine-readable
    scot-search web --index photos-index                                        # the Gradio demo
    python -m scot_search.cli web --index photos-index --port 7860              # the same (e.g. a Space's app.py)

Errors in the input (a missing file, an empty text or one that is not valid Unicode, an index built with another
model, a truncated weights or embeddings file, index options that do not fit the gallery) are one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from safetensors import SafetensorError

from .app import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB


def _add_index_parser(subparsers) -> None:
    parser = subparsers.add_parser("index", help="encode a gallery of images into a searchable index",
                                   description="Encode every image of a folder (recursively) or of a datasets "
                                               "dataset once, and save embeddings, ids and a faiss index.")
    parser.add_argument("gallery", help="a folder of images, or with --dataset a dataset name / folder")
    parser.add_argument("--output", "-o", required=True, help="index folder to write (re-running resumes)")
    parser.add_argument("--model", required=True,
                        help="SCOT model folder or hub id (e.g. scot-demo, which `make demo` writes)")
    parser.add_argument("--dataset", action="store_true", help="GALLERY is a datasets dataset (load_dataset)")
    parser.add_argument("--split", default="train", help="dataset split (with --dataset)")
    parser.add_argument("--image_column", default="image", help="dataset image column (with --dataset)")
    parser.add_argument("--id_column", default=None, help="dataset column of unique ids (default: row number)")
    parser.add_argument("--index_type", choices=("flat", "ivf", "hnsw"), default="flat",
                        help="flat: exact inner product (default); ivf / hnsw: approximate, for millions of images")
    parser.add_argument("--nlist", type=int, default=None, help="ivf: number of lists (default ≈ 4·√N)")
    parser.add_argument("--nprobe", type=int, default=None, help="ivf: lists searched per query (default 16)")
    parser.add_argument("--hnsw_m", type=int, default=None, help="hnsw: neighbours per node (default 32)")
    parser.add_argument("--ef_search", type=int, default=None, help="hnsw: search breadth (default 128)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--chunk_size", type=int, default=1024, help="images per saved chunk (the resume unit)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def _add_query_parser(subparsers) -> None:
    parser = subparsers.add_parser("query", help="top-K gallery images for a reference image and/or a text")
    parser.add_argument("--index", required=True, help="index folder written by `scot-search index`")
    parser.add_argument("--image", default=None, help="reference image file")
    parser.add_argument("--text", default=None, help="the change, e.g. 'in blue, without the logo'")
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--model", default=None, help="model folder (default: the one the index was built with)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--keep_reference", action="store_true",
                        help="keep gallery copies of the reference image in the results (left out by default)")
    parser.add_argument("--nprobe", type=int, default=None, help="ivf: lists searched (overrides the index's)")
    parser.add_argument("--ef_search", type=int, default=None, help="hnsw: search breadth (overrides the index's)")
    parser.add_argument("--device", default=None)


def _add_web_parser(subparsers) -> None:
    parser = subparsers.add_parser("web", help="the Gradio web demo",
                                   description="Serve a gallery index as a web page (Gradio); with --gallery, index "
                                               "that folder first if the index does not exist yet.")
    parser.add_argument("--index", required=True, help="gallery index folder (written by `scot-search index`)")
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the one the index records; "
                                                      "needed to build a new index from --gallery)")
    parser.add_argument("--gallery", default=None,
                        help="image folder indexed into --index when that does not exist yet (or was encoded by "
                             "another encoder than --model's)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest upload in MB")
    parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest upload in pixels")
    parser.add_argument("--examples", type=int, default=8, help="gallery images offered as references")
    parser.add_argument("--device", default=None)


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def run_index(args) -> dict:
    from .index import build_gallery_index, check_index_options, list_dataset_images, list_image_folder
    from .search import load_search_model, recorded_model_name

    if args.dataset:
        from datasets import load_dataset

        dataset = load_dataset(args.gallery, split=args.split)
        items, skipped = list_dataset_images(dataset, args.image_column, args.id_column), {}
        source = {"dataset": args.gallery, "split": args.split, "image_column": args.image_column}
    else:
        items, skipped = list_image_folder(args.gallery)
        source = {"folder": str(Path(args.gallery).resolve())}
    options = {"nlist": args.nlist, "nprobe": args.nprobe, "hnsw_m": args.hnsw_m, "ef_search": args.ef_search}
    check_index_options(args.index_type, len(items), options)  # before loading a model and encoding for hours
    model, processor = load_search_model(args.model, _device(args.device))
    index = build_gallery_index(model, processor, items, args.output, index_type=args.index_type,
                                batch_size=args.batch_size, chunk_size=args.chunk_size,
                                model_name_or_path=recorded_model_name(args.model), source=source,
                                skipped_files=skipped, **options)
    summary = {"index": str(args.output), "images": len(index), "index_type": index.index_type,
               "skipped": index.metadata["skipped"]}
    build, skipped = index.metadata["last_build"], summary["skipped"]
    links = skipped["link_outside_gallery"]
    print(f"indexed {len(index)} images into {args.output} ({index.index_type}); encoded {build['encoded']}, "
          f"reused {build['reused']} unchanged, dropped {build['removed']} gone; skipped "
          f"{skipped['unreadable_image']} unreadable image(s), ignored {skipped['not_an_image_file']} non-image "
          f"file(s)" + (f" and {links} link(s) to files outside the gallery" if links else ""))
    return summary


def format_table(result) -> str:
    lines = []
    if result.text_weight is not None:
        anchor = ("" if result.image_anchor_weight is None
                  else f", image anchor β = {result.image_anchor_weight:g}")
        lines.append(f"composed query: text weight λ = {result.text_weight:.3f}, image weight 1-λ = "
                     f"{1 - result.text_weight:.3f}{anchor}")
    else:
        lines.append("composed query" if result.mode == "composed" else f"{result.mode}-only query")
    if result.familiar_text is False:
        lines.append("novelty gate: the text is unlike the modifications the model was trained on, so the image "
                     "alone answers")
    if result.grounded is False:
        lines.append("grounding gate: the text picks out none of the reference's look-alikes in this gallery, so the "
                     "image alone answers")
    width = max([len("id"), *(len(hit.id) for hit in result.hits)])
    lines.append(f"{'rank':>4}  {'score':>7}  {'id':<{width}}")
    lines.extend(f"{hit.rank:>4}  {hit.score:>7.4f}  {hit.id:<{width}}" for hit in result.hits)
    return "\n".join(lines)


def run_query(args):
    from .search import GallerySearcher

    if args.image is None and args.text is None:
        raise ValueError("give --image, --text or both")
    options = {name: value for name, value in (("nprobe", args.nprobe), ("ef_search", args.ef_search)) if value}
    searcher = GallerySearcher.from_pretrained(args.index, args.model, device=_device(args.device), **options)
    result = searcher.query(image=args.image, text=args.text, k=args.k, exclude_reference=not args.keep_reference)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_table(result))
    return result


def run_web(args) -> None:
    from .app import build_app, example_images, launch_app, load_or_build_searcher

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    searcher = load_or_build_searcher(args.index, args.model, args.gallery, _device(args.device))
    app = build_app(searcher, max_pixels=args.max_pixels, max_upload_mb=args.max_upload_mb,
                    examples=example_images(searcher.index, args.examples))
    print(f"SCOT web demo on http://{args.host}:{args.port} ({len(searcher.index)} gallery images)")
    launch_app(app, host=args.host, port=args.port)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scot-search", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_index_parser(subparsers)
    _add_query_parser(subparsers)
    _add_web_parser(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "index":
            run_index(args)
        elif args.command == "query":
            run_query(args)
        else:
            run_web(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, ImportError, OSError, SafetensorError) as error:
        # SafetensorError: what reads name their file; this catches the rest (e.g. a write on a full disk)
        print(f"scot-search {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
