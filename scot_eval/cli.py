"""Evaluate a SCOT model (or a baseline on its encoder) on FashionIQ, CIRR or CIRCO, as the papers report them.

    scot-evaluate --model MODEL --benchmark {fashioniq,cirr,circo} --data_dir DIR [--split val]
        [--method {scot,image,text,sum,raw_sum}] [--fashioniq_captions {clip4cir,searle}] [--output_dir DIR]
        [--update_model_card]
    scot-evaluate check --benchmark cirr --data_dir DIR [--split val] [--no_read_images]

(`python -m scot_eval` and `python -m trainers.evaluate` are the same command.) `--model` is a saved SCOT model, or
a bare CLIP / BLIP-2 / dual-encoder one (then `scot` uses an untrained Combiner; the baselines need no Combiner), as
a folder or a hub id. Methods, all scored by cosine against the gallery's image embeddings: `scot` = the model's
composed query; `image` = the reference image embedding; `text` = the modification text embedding;
`sum` = normalize(normalize(image) + normalize(text)); `raw_sum` = normalize(image + text) of the projected features
before normalisation (CLIP4Cir's `element_wise_sum`).

The command prints the paper-style table and writes `metrics.json` to `--output_dir`; on a test split (no public
targets) it writes the submission files instead: CIRR `cirr_test1_recall.json` / `cirr_test1_recall_subset.json`,
CIRCO `circo_test_submission.json`. `--update_model_card` also records the numbers (method `scot` only) in the
model-index and Results section of the SCOT folder's README.md. Image and text embeddings depend only on the frozen
encoder, so they are computed once per model and split and cached as safetensors under `--cache_dir`.

`check` verifies a benchmark folder without a model: the JSON files and their schema, missing and unreadable images.

Errors in the input (a damaged model or benchmark file, a folder that is not a model this package loads, a full
disk) are one line on stderr and exit status 2, never a traceback. Models load with `trust_remote_code=False`: a
folder whose code would have to run is refused, never run and never asked about.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .benchmarks import BENCHMARKS, check_benchmark, format_check_report
from .protocols import FASHIONIQ_CAPTION_MODES
from .ranking import METHODS
from .results import EvaluationResult
from .tasks import default_cache_dir

logger = logging.getLogger(__name__)

COMMANDS = ("evaluate", "check")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="evaluate", choices=COMMANDS,
                        help="evaluate a model (the default), or check a benchmark folder")
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--data_dir", required=True, help="the benchmark's folder in its official layout")
    parser.add_argument("--split", help="evaluate: val (default); CIRR test1 / CIRCO test write submissions. "
                                        "check: default the evaluation splits (val, and test where there is one)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")

    evaluation = parser.add_argument_group("evaluate")
    evaluation.add_argument("--model", help="saved SCOT model, or a CLIP / BLIP-2 / dual-encoder one (folder or hub "
                                            "id)")
    evaluation.add_argument("--method", default="scot", choices=METHODS)
    evaluation.add_argument("--fashioniq_captions", default="clip4cir", choices=FASHIONIQ_CAPTION_MODES,
                            help="clip4cir: 'C1 and c2'; searle: average of both orders")
    evaluation.add_argument("--output_dir", help="default: outputs/evaluation/{benchmark}-{split}-{method}")
    evaluation.add_argument("--cache_dir", help=f"embedding cache (default {default_cache_dir()}, or $SCOT_CACHE_DIR)")
    evaluation.add_argument("--batch_size", type=int, default=64)
    evaluation.add_argument("--num_workers", type=int, default=0, help="image loading processes")
    evaluation.add_argument("--device", help="default: cuda when available, else cpu")
    evaluation.add_argument("--update_model_card", action="store_true",
                            help="record the result in the README.md model card of --model (a saved SCOT folder)")

    check = parser.add_argument_group("check")
    check.add_argument("--no_read_images", action="store_true", help="test existence only, not decoding")
    return parser


def run_check(args: argparse.Namespace) -> int:
    report = check_benchmark(args.benchmark, args.data_dir, [args.split] if args.split else None,
                             read_images=not args.no_read_images, show_progress=not args.no_progress)
    print(format_check_report(report))
    return 1 if all("error" in counts for counts in report["splits"].values()) else 0


def load_model(name_or_path, device: str | None = None):
    """`(model, processor, is_trained)` of `--model` (`scot_core.load_scot_or_backbone`, which never runs a folder's
    code: `trust_remote_code=False`), on `device` (default: cuda when available)."""
    import torch
    from safetensors import SafetensorError

    from scot_core import load_scot_or_backbone

    try:
        return load_scot_or_backbone(name_or_path, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except SafetensorError as error:  # safetensors' own message names no file
        raise ValueError(f"{name_or_path}: its weights are not a readable safetensors file (a truncated or damaged "
                         f"download?): {error}") from None


def record_in_model_card(folder, result: EvaluationResult) -> bool:
    """Record `result` in the model card (README.md) of the saved SCOT model in `folder`; True when it changed.

    Opt-in (`--update_model_card`), never the default: the folder evaluated may be someone else's download, and an
    evaluation should not edit its input unasked. Only the model's own numbers are recorded, as the model-index the
    Hub shows: method `scot` on a split with public targets. A baseline (`image`, `text`, `sum`, `raw_sum`) measures
    the encoder, and a test split gives submission files, not metrics; both leave the card alone."""
    from hub_cards import update_model_card

    if result.method != "scot" or not result.metric_values:
        reason = "a baseline measures the encoder, not this model" if result.method != "scot" else \
            "a test split has no metrics (submission files only)"
        logger.warning("Model card of %s not updated: %s.", folder, reason)
        return False
    update_model_card(folder, result)
    print(f"updated {Path(folder) / 'README.md'}")
    return True


def run_evaluation(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .evaluation import evaluate_benchmark

    if not args.model:
        parser.error("--model is required to evaluate (the `check` command needs none)")
    if args.update_model_card and not Path(args.model).is_dir():
        parser.error(f"--update_model_card: {args.model} is not a local folder whose model card could be updated")
    if args.no_progress:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its "Loading weights" bar too
    model, processor, trained = load_model(args.model, args.device)
    if args.update_model_card and not trained:
        parser.error(f"--update_model_card: {args.model} is a bare encoder, not a saved SCOT model with a card")
    if args.method == "scot" and not trained:
        logger.warning("%s is a bare encoder: method 'scot' uses an untrained, random Combiner.", args.model)
    result = evaluate_benchmark(
        model, processor, args.benchmark, args.data_dir, args.split or "val", args.method,
        fashioniq_captions=args.fashioniq_captions, cache_dir=args.cache_dir, batch_size=args.batch_size,
        num_workers=args.num_workers, show_progress=not args.no_progress,
    )
    result.model = str(args.model)
    default_output = Path("outputs", "evaluation", f"{args.benchmark}-{result.split}-{args.method}")
    output_dir = Path(args.output_dir or default_output)
    print(result.format_table())
    print(result.format_counts())
    for path in result.write_outputs(output_dir):
        print(f"wrote {path}")
    if args.update_model_card:
        record_in_model_card(args.model, result)
    return 0


def _one_line(error: BaseException) -> str:
    """The error's message on one line (transformers' and safetensors' messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from safetensors import SafetensorError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return run_check(args)
        return run_evaluation(parser, args)
    # Bad input (malformed or non-Unicode JSON, a model folder this package cannot load, damaged weights) and a
    # full disk: what the user must fix, said in one line. Anything else is a bug and keeps its traceback.
    except (ValueError, OSError, SafetensorError) as error:
        print(f"{parser.prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
