"""`scot-search`: index a gallery once, then query it with (image, text) from the shell or in a browser.

    scot-search index photos/ --model scot-demo --output photos-index          # encode the folder (resumable)
    scot-search query --index photos-index --image shoe.jpg --text "in blue" -k 10
    scot-search query --index photos-index --text "a red car" --json            # text-only, machine-readable
    scot-search web --index photos-index                                        # the Gradio demo

Errors in the input (a missing file, an empty text, an index built with another model) are one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .search import DEFAULT_MODEL


def _add_index_parser(subparsers) -> None:
    parser = subparsers.add_parser("index", help="encode a gallery of images into a searchable index",
                                   description="Encode every image of a folder (recursively) or of a datasets "
                                               "dataset once, and save embeddings, ids and a faiss index.")
    parser.add_argument("gallery", help="a folder of images, or with --dataset a dataset name / folder")
    parser.add_argument("--output", "-o", required=True, help="index folder to write (re-running resumes)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"SCOT model folder or hub id (default {DEFAULT_MODEL})")
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
    from .app import add_app_arguments

    parser = subparsers.add_parser("web", help="the Gradio web demo")
    add_app_arguments(parser)


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def run_index(args) -> dict:
    from transformers import AutoModel, AutoProcessor

    import modeling_scot  # noqa: F401 - registers the Auto classes

    from .index import build_gallery_index, check_index_options, list_dataset_images, list_image_folder

    if args.dataset:
        from datasets import load_dataset

        dataset = load_dataset(args.gallery, split=args.split)
        items, ignored = list_dataset_images(dataset, args.image_column, args.id_column), 0
        source = {"dataset": args.gallery, "split": args.split, "image_column": args.image_column}
    else:
        items, ignored = list_image_folder(args.gallery)
        source = {"folder": str(Path(args.gallery).resolve())}
    options = {"nlist": args.nlist, "nprobe": args.nprobe, "hnsw_m": args.hnsw_m, "ef_search": args.ef_search}
    check_index_options(args.index_type, len(items), options)  # before loading a model and encoding for hours
    if args.model == DEFAULT_MODEL and not Path(args.model).is_dir():
        raise FileNotFoundError(f"The default model folder {DEFAULT_MODEL!r} does not exist here: run `make demo` "
                                "first, or pass --model.")
    model = AutoModel.from_pretrained(args.model).to(_device(args.device))
    processor = AutoProcessor.from_pretrained(args.model)
    model_path = str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model
    index = build_gallery_index(model, processor, items, args.output, index_type=args.index_type,
                                batch_size=args.batch_size, chunk_size=args.chunk_size, model_name_or_path=model_path,
                                source=source, ignored_files=ignored, **options)
    summary = {"index": str(args.output), "images": len(index), "index_type": index.index_type,
               "skipped": index.metadata["skipped"]}
    build = index.metadata["last_build"]
    print(f"indexed {len(index)} images into {args.output} ({index.index_type}); encoded {build['encoded']}, "
          f"reused {build['reused']} unchanged, dropped {build['removed']} gone; skipped "
          f"{summary['skipped']['unreadable_image']} unreadable image(s), ignored "
          f"{summary['skipped']['not_an_image_file']} non-image file(s)")
    return summary


def format_table(result) -> str:
    lines = []
    if result.text_weight is not None:
        lines.append(f"composed query: text weight λ = {result.text_weight:.3f}, image weight 1-λ = "
                     f"{1 - result.text_weight:.3f}")
    else:
        lines.append(f"{result.mode}-only query")
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
            from .app import run_app

            run_app(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, ImportError, OSError) as error:
        print(f"scot-search {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
