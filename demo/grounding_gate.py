"""Issue 14's sixth ablation round: the grounding gate (`ScotConfig.grounding_gate_*`), chosen on the triplets'
validation slice and then reported on every kind of the demo benchmark, with and without it, over seeds.

    python -m demo.grounding_gate [--output_dir outputs/demo] [--variant scot+text+image_ref+anchor+floor]

Needs a finished `make ablations` run of `--variant` with its seeds (the fifth round's default by default): the gate
is applied at inference only, so the same Combiner weights are scored with and without it. For each seed: the
validation slice of that seed (its own 5% of the triplets), the training images as the gallery; θ for each α of
`ALPHAS` from the permutation null (`trainers.grounding_gate`), and the composed -> floor image R@1 over all the
training images with the gate at that θ. The rule (docs/ablations.md, sixth round): α = the strictest candidate
whose mean validation R@1 is not below the ungated one. Then every kind of the benchmark, gated at that α (θ
calibrated per seed) and ungated. Writes `{output_dir}/ablations/grounding_gate.json` and `grounding_gate.md`.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trainers.grounding_gate import GROUNDING_GATE_ALPHAS as ALPHAS

logger = logging.getLogger("demo.grounding_gate")

NEIGHBOURS = 10


@dataclass
class GateArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "The folder `make demo` wrote."})
    triplets_dir: str = field(default="scot-triplets", metadata={"help": "The demo's triplets."})
    variant: str = field(default="scot+text+image_ref+anchor+floor", metadata={
        "help": "The ablation variant whose selected setting and seeds are gated."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Its seeds (0: the search's)."})


def seed_models(args: GateArguments) -> dict[int, Path]:
    """`{seed: model folder}` of the variant's selected setting: seed 0 is the search's run, the others the final
    runs of `demo.ablations`."""
    from demo.ablations import grid

    root = Path(args.output_dir) / "ablations"
    results = json.loads((root / "results.json").read_text())
    if args.variant not in results["selected"]:
        raise ValueError(f"{root / 'results.json'} has no selected setting for {args.variant!r}: run "
                         f"`python -m demo.ablations --variants {args.variant} --seeded_variants {args.variant}`.")
    number = grid(args.variant).index(results["selected"][args.variant])
    folders = {seed: root / "final" / args.variant / f"seed-{seed}" for seed in args.seeds if seed}
    folders[0] = root / "search" / args.variant / f"setting-{number}"
    missing = [str(folder) for folder in folders.values() if not (folder / "model.safetensors").is_file()]
    if missing:
        raise FileNotFoundError(f"Missing trained Combiners {missing}: run `make ablations` for {args.variant}.")
    return dict(sorted(folders.items()))


def validation_view(args: GateArguments, seed: int):
    """The training and validation datasets (cached embeddings, with probes) of `seed`, as `demo.ablations` trained
    the variant on them."""
    from demo.ablations import VARIANTS

    loss_type, target, _, fixed = VARIANTS[args.variant]
    with tempfile.TemporaryDirectory() as scratch:  # the trainer is built for its datasets, never trained
        trainer = _trainer(args, seed, loss_type, target, fixed, scratch)
    return trainer.train_dataset, trainer.eval_dataset


def _trainer(args: GateArguments, seed: int, loss_type: str, target: str, fixed: dict, output_dir: str):
    from trainers.train import build_trainer
    from trainers.training_args import DataArguments, ModelArguments, ScotTrainingArguments

    return build_trainer(
        ModelArguments(model_name_or_path=str(Path(args.output_dir) / "backbone"), text_pooling="mean",
                       loss_type=loss_type),
        DataArguments(eval_fraction=0.05, embedding_cache_dir=str(Path(args.output_dir) / "embedding-cache"),
                      target=target, retrieval_reference_weight=fixed.get("retrieval_reference_weight", 0.0)),
        ScotTrainingArguments(output_dir=output_dir, dataset_name=args.triplets_dir, seed=seed, report_to="none",
                              disable_tqdm=True, retrieved_image_weight=fixed.get("retrieved_image_weight", 0.0)),
    )


def floor_recall(model, train_dataset, eval_dataset, threshold: float | None) -> tuple[float, float]:
    """Composed -> floor image R@1 (%) of the validation rows over all the training images (the reference left out),
    gated at `threshold` (None: no gate), and the share of rows gated (%): `trainers.grounding_gate.floor_recall`."""
    from trainers.grounding_gate import floor_recall as gate_floor_recall

    return gate_floor_recall(model, eval_dataset, train_dataset.cache.image_embeds, NEIGHBOURS, threshold)


def run(args: GateArguments) -> dict:
    from demo.ablations import REPORT_METRICS, AblationArguments, prepare_kinds
    from modeling_scot import ScotModel
    from scot_eval.evaluation import evaluate_prepared
    from trainers.grounding_gate import calibrate_model_gate

    prepared, processor, baselines = prepare_kinds(AblationArguments(output_dir=args.output_dir))
    results = {"variant": args.variant, "neighbours": NEIGHBOURS, "baselines": baselines, "seeds": {}}
    for seed, folder in seed_models(args).items():
        model = ScotModel.from_pretrained(folder).eval()
        train_dataset, eval_dataset = validation_view(args, seed)
        line = {"model": str(folder), "validation": {"ungated": floor_recall(model, train_dataset, eval_dataset,
                                                                             None)[0]}}
        for alpha in ALPHAS:
            calibration = calibrate_model_gate(copy.deepcopy(model), eval_dataset, train_dataset.cache.image_embeds,
                                               alpha, NEIGHBOURS, seed=seed)
            recall, gated = floor_recall(model, train_dataset, eval_dataset, calibration["threshold"])
            line["validation"][str(alpha)] = {"threshold": calibration["threshold"], "R@1": recall, "gated": gated}
        results["seeds"][str(seed)] = line
        logger.warning("seed %d: %s", seed, line["validation"])
    alpha = results["selected_alpha"] = select_alpha(results["seeds"])
    for seed, folder in seed_models(args).items():
        line = results["seeds"][str(seed)]
        model = ScotModel.from_pretrained(folder).eval()
        line["benchmark_ungated"] = {kind: {key: round(evaluate_prepared(model, task, "scot", processor=processor)
                                                       .metrics[key], 2) for key in REPORT_METRICS}
                                     for kind, task in prepared.items()}
        if alpha is not None:
            train_dataset, eval_dataset = validation_view(args, seed)
            calibrate_model_gate(model, eval_dataset, train_dataset.cache.image_embeds, alpha, NEIGHBOURS, seed=seed)
            line["benchmark_gated"] = {kind: {key: round(evaluate_prepared(model, task, "scot", processor=processor)
                                                         .metrics[key], 2) for key in REPORT_METRICS}
                                       for kind, task in prepared.items()}
    root = Path(args.output_dir) / "ablations"
    (root / "grounding_gate.json").write_text(json.dumps(results, indent=2))
    (root / "grounding_gate.md").write_text(format_report(results))
    return results


def select_alpha(seeds: dict) -> float | None:
    """The sixth round's rule (`trainers.grounding_gate.select_alpha`) on the validation R@1 averaged over the seeds:
    the strictest α of `ALPHAS` not below the ungated mean; None when every α loses."""
    from trainers.grounding_gate import select_alpha as select_by_rule

    lines = list(seeds.values())
    return select_by_rule(statistics.mean(line["validation"]["ungated"] for line in lines),
                          {alpha: statistics.mean(line["validation"][str(alpha)]["R@1"] for line in lines)
                           for alpha in ALPHAS})


def format_report(results: dict) -> str:
    seeds = list(results["seeds"].values())

    def mean(values) -> float:
        return statistics.mean(values)

    lines = [f"Grounding gate on `{results['variant']}` (k = {results['neighbours']}), seeds "
             f"{', '.join(results['seeds'])}.", "",
             "Validation (composed -> floor image R@1 over all training images, mean of the seeds):", "",
             "| α | θ (mean) | gated (%) | validation R@1 |", "| ---: | ---: | ---: | ---: |",
             f"| no gate | — | 0 | {mean(line['validation']['ungated'] for line in seeds):.2f} |"]
    for alpha in ALPHAS:
        entries = [line["validation"][str(alpha)] for line in seeds]
        lines.append(f"| {alpha} | {mean(e['threshold'] for e in entries):.2f} | "
                     f"{mean(e['gated'] for e in entries):.1f} | {mean(e['R@1'] for e in entries):.2f} |")
    lines += ["", f"Selected by the rule: α = {results['selected_alpha']}.", ""]
    kinds = list(seeds[0]["benchmark_ungated"])
    lines += ["Benchmark R@1 per kind (mean ± std over the seeds):", "",
              "| method | " + " | ".join(kinds) + " | average |", "| --- |" + " ---: |" * (len(kinds) + 1)]
    for method, values in results["baselines"].items():
        cells = [values[kind]["R@1"] for kind in kinds]
        lines.append(f"| {method} only |" if method != "sum" else "| image + text |")
        lines[-1] += "".join(f" {cell:.1f} |" for cell in cells) + f" {mean(cells):.1f} |"
    for name, key in (("ungated", "benchmark_ungated"), ("gated", "benchmark_gated")):
        if key not in seeds[0]:
            continue
        per_seed = [[line[key][kind]["R@1"] for kind in kinds] for line in seeds]
        cells = [[row[i] for row in per_seed] for i in range(len(kinds))] + [[mean(row) for row in per_seed]]
        spread = [f" {mean(c):.1f} ± {statistics.pstdev(c):.1f} |" for c in cells]
        lines.append(f"| {results['variant']}, {name} |" + "".join(spread))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    (args,) = HfArgumentParser(GateArguments).parse_args_into_dataclasses(argv)
    results = run(args)
    print(format_report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
