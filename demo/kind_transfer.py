"""Issue 14's ninth ablation round: kind-held-out validation on the triplets themselves, and the text novelty gate's α
chosen on it (docs/ablations.md, ninth round).

    python -m demo.kind_transfer [--output_dir outputs/demo]      # = make kind-transfer

The benchmark measures transfer to kinds of change the Combiner was not built around; the triplets' own validation
slice cannot, since every validation text is of a kind it trained on. This holds each kind of change out in turn:
for every kind with at least `MIN_ROWS` triplets, the default's Combiner setting (`demo.run.COMBINERS["scot"]`, the
demo's epochs, seed 0, without the grounding gate) is trained on the triplets of the other kinds
(`DataArguments.exclude_kinds`), then the composed -> floor image R@1 over the fold's training images is measured on
the held-out kind's triplets ("unseen") and on the fold's own validation slice ("seen"), with the reference image
alone, the composed query, and the composed query behind the novelty gate at each α of `ALPHAS` (θ the α quantile of
the fold's validation familiarity, the bank its training modifications, k `NEIGHBOURS`: as a trained model would
calibrate it). The rule (`select_alpha`): the option, no gate or an α, with the highest mean of the unseen and seen
R@1 (each the mean over the folds), the first listed on a tie. The benchmark plays no part. Each fold is saved in
`{output_dir}/ablations/kind_transfer/<kind>/` (a killed run resumes at its first unfinished fold); writes
`{output_dir}/ablations/kind_transfer.json` and `kind_transfer.md`.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("demo.kind_transfer")

ALPHAS = (0.01, 0.05, 0.1, 0.25, 0.5)  # candidate gates, from the most lenient (fewest texts gated)
NEIGHBOURS = 10  # the eighth round's k
MIN_ROWS = 50  # a kind with fewer triplets is never held out (its R@1 would move by 2 points a row)
NO_GATE = "no gate"


@dataclass
class KindTransferArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "The folder `make demo` wrote."})
    triplets_dir: str = field(default="scot-triplets", metadata={"help": "The demo's triplets."})
    epochs: int = field(default=20, metadata={"help": "The Combiner's epochs (the demo's scot_epochs)."})
    kinds: list[str] = field(default_factory=list, metadata={
        "help": "Kinds to hold out (default: every kind with at least MIN_ROWS triplets)."})


def held_out_kinds(triplets_dir: str | Path, min_rows: int = MIN_ROWS) -> dict[str, int]:
    """`{kind: triplets}` of the kinds of change with at least `min_rows` triplets in the train split, the largest
    first."""
    from collections import Counter

    from datasets import load_dataset

    counts = Counter(kind for kind in load_dataset(str(triplets_dir), split="train")["kind"] if kind)
    return {kind: count for kind, count in counts.most_common() if count >= min_rows}


def _fold_trainer(args: KindTransferArguments, kind: str, run_dir: Path):
    from demo.run import COMBINERS
    from trainers.train import build_trainer
    from trainers.training_args import DataArguments, ModelArguments, ScotTrainingArguments

    setting = COMBINERS["scot"]
    data_args = DataArguments(eval_fraction=0.05, embedding_cache_dir=str(Path(args.output_dir) / "embedding-cache"),
                              retrieval_reference_weight=setting.reference_weight, exclude_kinds=[kind])
    trainer = build_trainer(
        ModelArguments(model_name_or_path=str(Path(args.output_dir) / "backbone"), text_pooling="mean",
                       loss_type=setting.loss_type, image_anchor_weight=setting.image_anchor_weight),
        data_args,
        ScotTrainingArguments(output_dir=str(run_dir), dataset_name=args.triplets_dir, per_device_train_batch_size=256,
                              per_device_eval_batch_size=256, num_train_epochs=args.epochs, learning_rate=1e-4,
                              logging_steps=50, eval_strategy="no", save_strategy="no", report_to="none",
                              dataloader_pin_memory=False, seed=0, disable_tqdm=True,
                              retrieved_image_weight=setting.retrieved_image_weight,
                              image_floor_weight=setting.image_floor_weight),
    )
    return trainer, data_args


def gate_recalls(model, bank, validation_texts, datasets: dict, gallery) -> dict:
    """For each of `datasets` (name -> cached rows with their floor probe): the floor R@1 of the reference alone, of
    the ungated composed query, and behind the novelty gate at each α (θ the α quantile of `validation_texts`'
    familiarity against `bank`), with the share of rows gated."""
    from modeling_scot import text_familiarity
    from trainers.grounding_gate import floor_recall, reference_floor_recall, validation_embeds

    thresholds = {alpha: float(text_familiarity(validation_texts, bank, NEIGHBOURS).quantile(alpha))
                  for alpha in ALPHAS}
    results = {"thresholds": {str(alpha): value for alpha, value in thresholds.items()}}
    for name, dataset in datasets.items():
        familiarity = text_familiarity(validation_embeds(dataset)[1], bank, NEIGHBOURS)
        model.config.novelty_gate_neighbours = 0
        entry = {"rows": len(dataset), "reference": reference_floor_recall(dataset, gallery),
                 NO_GATE: floor_recall(model, dataset, gallery)[0]}
        for alpha, threshold in thresholds.items():
            model.set_novelty_gate(bank, NEIGHBOURS, threshold)
            entry[str(alpha)] = {"R@1": floor_recall(model, dataset, gallery)[0],
                                 "gated": 100 * float((familiarity < threshold).float().mean())}
        model.config.novelty_gate_neighbours = 0
        results[name] = entry
    return results


def run_fold(args: KindTransferArguments, kind: str) -> dict:
    """One held-out kind: train without it (or reuse the saved fold), then `gate_recalls` on it and on the fold's
    validation slice."""
    from datasets import load_dataset

    from trainers.grounding_gate import validation_embeds
    from trainers.novelty_gate import novelty_gate_bank
    from trainers.train import cached_held_out_dataset

    run_dir = Path(args.output_dir) / "ablations" / "kind_transfer" / kind
    results_file = run_dir / "fold.json"
    if results_file.is_file():
        return json.loads(results_file.read_text())
    started = time.perf_counter()
    trainer, data_args = _fold_trainer(args, kind, run_dir)
    trainer.train()
    trainer.save_model(str(run_dir))
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    rows = load_dataset(args.triplets_dir, split="train").filter(lambda value: value == kind, input_columns="kind")
    unseen = cached_held_out_dataset(trainer, rows, data_args, f"The {kind!r} triplets of {args.triplets_dir}")
    bank = novelty_gate_bank(trainer.train_dataset)
    fold = {"kind": kind, "train_rows": len(trainer.train_dataset), "bank_size": len(bank),
            **gate_recalls(model, bank, validation_embeds(trainer.eval_dataset)[1],
                           {"unseen": unseen, "seen": trainer.eval_dataset}, trainer.train_dataset.cache.image_embeds),
            "seconds": round(time.perf_counter() - started, 1)}
    results_file.write_text(json.dumps(fold, indent=2))
    return fold


def options() -> list[str]:
    return [NO_GATE, *(str(alpha) for alpha in ALPHAS)]


def _recall(entry: dict, option: str) -> float:
    return entry[option] if option == NO_GATE else entry[option]["R@1"]


def option_scores(folds: list[dict]) -> dict[str, dict[str, float]]:
    """`{option: {"unseen", "seen", "score"}}`: the mean floor R@1 over the folds on the held-out kinds and on the
    folds' validation slices, and the mean of the two (the rule's score)."""
    scores = {}
    for option in options():
        unseen = statistics.mean(_recall(fold["unseen"], option) for fold in folds)
        seen = statistics.mean(_recall(fold["seen"], option) for fold in folds)
        scores[option] = {"unseen": unseen, "seen": seen, "score": (unseen + seen) / 2}
    return scores


def select_alpha(folds: list[dict]) -> str:
    """The ninth round's rule: the option with the highest score (`option_scores`), the first listed on a tie (no
    gate before any α, a lenient α before a stricter one)."""
    scores = option_scores(folds)
    best = max(score["score"] for score in scores.values())
    return next(option for option in options() if scores[option]["score"] == best)


def run(args: KindTransferArguments) -> dict:
    kinds = held_out_kinds(args.triplets_dir)
    unknown = sorted(set(args.kinds) - set(kinds))
    if unknown:
        raise ValueError(f"--kinds: {unknown} are not kinds with at least {MIN_ROWS} triplets; expected some of "
                         f"{', '.join(kinds)}.")
    folds = []
    for number, kind in enumerate(args.kinds or kinds, 1):
        fold = run_fold(args, kind)
        folds.append(fold)
        logger.warning("fold %d/%d, %s held out (%.0f s): unseen reference %.1f, ungated %.1f; seen %.1f, %.1f",
                       number, len(args.kinds or kinds), kind, fold["seconds"], fold["unseen"]["reference"],
                       fold["unseen"][NO_GATE], fold["seen"]["reference"], fold["seen"][NO_GATE])
    results = {"alphas": list(ALPHAS), "neighbours": NEIGHBOURS, "min_rows": MIN_ROWS, "epochs": args.epochs,
               "kind_counts": kinds, "folds": folds, "scores": option_scores(folds), "selected": select_alpha(folds)}
    root = Path(args.output_dir) / "ablations"
    (root / "kind_transfer.json").write_text(json.dumps(results, indent=2))
    (root / "kind_transfer.md").write_text(format_report(results))
    return results


def format_report(results: dict) -> str:
    folds = results["folds"]
    alphas = [str(alpha) for alpha in results["alphas"]]
    lines = [f"Kind-held-out validation: {len(folds)} folds, each kind of change with at least "
             f"{results['min_rows']} triplets held out of training in turn ({results['epochs']} epochs, seed 0); "
             "composed -> floor image R@1 (%) over the fold's training images. Novelty gate: k = "
             f"{results['neighbours']}, θ the α quantile of the fold's validation familiarity.", "",
             "Per fold, on the held-out kind (unseen) and on the fold's validation slice (seen):", "",
             "| held out | rows | reference | composed | " + " | ".join(f"α {alpha}" for alpha in alphas)
             + " | seen: reference | seen: composed | " + " | ".join(f"seen: α {alpha}" for alpha in alphas) + " |",
             "| --- |" + " ---: |" * (4 + 2 * len(alphas) + 1)]
    for fold in folds:
        unseen, seen = fold["unseen"], fold["seen"]
        lines.append(f"| {fold['kind']} | {unseen['rows']} | {unseen['reference']:.1f} | {unseen[NO_GATE]:.1f} |"
                     + "".join(f" {unseen[alpha]['R@1']:.1f} |" for alpha in alphas)
                     + f" {seen['reference']:.1f} | {seen[NO_GATE]:.1f} |"
                     + "".join(f" {seen[alpha]['R@1']:.1f} |" for alpha in alphas))
    lines += ["", "Share of rows gated (%), per fold, unseen / seen:", "",
              "| held out | " + " | ".join(f"α {alpha}" for alpha in alphas) + " |",
              "| --- |" + " ---: |" * len(alphas)]
    for fold in folds:
        lines.append(f"| {fold['kind']} |" + "".join(
            f" {fold['unseen'][alpha]['gated']:.0f} / {fold['seen'][alpha]['gated']:.0f} |" for alpha in alphas))
    reference = {name: statistics.mean(fold[name]["reference"] for fold in folds) for name in ("unseen", "seen")}
    lines += ["", "Means over the folds, and the rule's score (the mean of unseen and seen):", "",
              "| option | unseen | seen | score |", "| --- | ---: | ---: | ---: |",
              f"| (reference image alone) | {reference['unseen']:.2f} | {reference['seen']:.2f} | "
              f"{(reference['unseen'] + reference['seen']) / 2:.2f} |"]
    for option, score in results["scores"].items():
        name = option if option == NO_GATE else f"novelty gate α {option}"
        lines.append(f"| {name} | {score['unseen']:.2f} | {score['seen']:.2f} | {score['score']:.2f} |")
    selected = results["selected"]
    lines += ["", "Selected by the rule: " + ("**no gate**." if selected == NO_GATE
                                             else f"**the novelty gate at α {selected}**.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    (args,) = HfArgumentParser(KindTransferArguments).parse_args_into_dataclasses(argv)
    print(format_report(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
