"""Issue 14's sixth and seventh ablation rounds: the grounding gate (`ScotConfig.grounding_gate_*`), its statistic
and α chosen on the triplets' validation slice, then reported on every kind of the demo benchmark, with and without
it, over seeds.

    python -m demo.grounding_gate [--output_dir outputs/demo] [--variant scot+text+image_ref+anchor+floor]

Needs a finished `make ablations` run of `--variant` with its seeds (the fifth round's default by default): the gate
is applied at inference only, so the same Combiner weights are scored with and without it. For each seed: the
validation slice of that seed (its own 5% of the triplets), the training images as the gallery; for each statistic
of `STATISTICS` its AUC against the permutation null, θ for each α of `ALPHAS` (`trainers.grounding_gate`), and the
composed -> floor image R@1 over all the training images with the gate at that θ. The rules (docs/ablations.md,
sixth and seventh rounds), on the means over the seeds: the statistic with the higher AUC; for each statistic, α =
the strictest candidate whose validation R@1 is not below the ungated one. Then every kind of the benchmark,
ungated and gated by each statistic at its α (θ calibrated per seed), with the share of each kind's queries gated.
Writes `{output_dir}/ablations/grounding_gate.json` and `grounding_gate.md`.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trainers.grounding_gate import GROUNDING_GATE_ALPHAS as ALPHAS
from trainers.grounding_gate import GROUNDING_GATE_STATISTICS as STATISTICS

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


def floor_recall(model, train_dataset, eval_dataset, threshold: float | None,
                 statistic: str | None = None) -> tuple[float, float]:
    """Composed -> floor image R@1 (%) of the validation rows over all the training images (the reference left out),
    gated at `threshold` by `statistic` (None: no gate), and the share of rows gated (%):
    `trainers.grounding_gate.floor_recall`."""
    from trainers.grounding_gate import floor_recall as gate_floor_recall

    return gate_floor_recall(model, eval_dataset, train_dataset.cache.image_embeds, NEIGHBOURS, threshold, statistic)


def validation_line(model, train_dataset, eval_dataset, seed: int) -> dict:
    """One seed's validation: the ungated floor R@1, and for each statistic its AUC and, for each α, θ, the floor
    R@1 gated at θ and the share of rows gated."""
    import torch

    from trainers.grounding_gate import calibrate_grounding_threshold, validation_embeds

    images, texts = validation_embeds(eval_dataset)
    gallery = torch.nn.functional.normalize(train_dataset.cache.image_embeds.float(), dim=-1)
    line = {"ungated": floor_recall(model, train_dataset, eval_dataset, None)[0]}
    for statistic in STATISTICS:
        entry = line[statistic] = {}
        for alpha in ALPHAS:
            calibration = calibrate_grounding_threshold(images, texts, gallery, NEIGHBOURS, alpha, seed=seed,
                                                        statistic=statistic)
            recall, gated = floor_recall(model, train_dataset, eval_dataset, calibration["threshold"], statistic)
            entry["auc"] = calibration["auc"]  # the same null for every α
            entry[str(alpha)] = {"threshold": calibration["threshold"], "R@1": recall, "gated": gated}
    return line


def gated_shares(model, prepared: dict, statistic: str) -> dict[str, float]:
    """The share (%) of each kind's queries the model's gate answers with the image alone (a diagnostic)."""
    import torch

    from modeling_scot import GalleryStatistics, nearest_gallery_images, text_grounding

    normalize = torch.nn.functional.normalize
    shares = {}
    for kind, tasks in prepared.items():
        gated = total = 0
        for task in tasks:
            gallery = normalize(task.gallery_embeds.float(), dim=-1)
            references = normalize(task.reference_embeds.float(), dim=-1)
            grounding = text_grounding(normalize(task.text_embeds.float(), dim=-1),
                                       nearest_gallery_images(references, gallery, NEIGHBOURS),
                                       GalleryStatistics.from_embeds(gallery), references, statistic)
            gated += int((grounding < model.config.grounding_gate_threshold).sum())
            total += len(grounding)
        shares[kind] = 100 * gated / total
    return shares


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
        results["seeds"][str(seed)] = {"model": str(folder),
                                       "validation": validation_line(model, train_dataset, eval_dataset, seed)}
        logger.warning("seed %d: %s", seed, results["seeds"][str(seed)]["validation"])
    results["selected_statistic"] = select_statistic(results["seeds"])
    results["selected_alpha"] = {statistic: select_alpha(results["seeds"], statistic) for statistic in STATISTICS}

    def benchmark(model) -> dict:
        return {kind: {key: round(evaluate_prepared(model, task, "scot", processor=processor).metrics[key], 2)
                       for key in REPORT_METRICS} for kind, task in prepared.items()}

    for seed, folder in seed_models(args).items():
        line = results["seeds"][str(seed)]
        line["benchmark_ungated"] = benchmark(ScotModel.from_pretrained(folder).eval())
        for statistic, alpha in results["selected_alpha"].items():
            if alpha is None:
                continue
            model = ScotModel.from_pretrained(folder).eval()
            train_dataset, eval_dataset = validation_view(args, seed)
            calibrate_model_gate(model, eval_dataset, train_dataset.cache.image_embeds, alpha, NEIGHBOURS, seed=seed,
                                 statistic=statistic)
            line[f"benchmark_gated_{statistic}"] = benchmark(model)
            line[f"gated_share_{statistic}"] = gated_shares(model, prepared, statistic)
    root = Path(args.output_dir) / "ablations"
    (root / "grounding_gate.json").write_text(json.dumps(results, indent=2))
    (root / "grounding_gate.md").write_text(format_report(results))
    return results


def select_statistic(seeds: dict) -> str:
    """The seventh round's rule (`trainers.grounding_gate.select_statistic`) on the AUCs averaged over the seeds."""
    from trainers.grounding_gate import select_statistic as select_by_rule

    lines = [line["validation"] for line in seeds.values()]
    return select_by_rule({statistic: statistics.mean(line[statistic]["auc"] for line in lines)
                           for statistic in STATISTICS})


def select_alpha(seeds: dict, statistic: str) -> float | None:
    """The sixth round's rule (`trainers.grounding_gate.select_alpha`) for `statistic`, on the validation R@1
    averaged over the seeds: the strictest α of `ALPHAS` not below the ungated mean; None when every α loses."""
    from trainers.grounding_gate import select_alpha as select_by_rule

    lines = [line["validation"] for line in seeds.values()]
    return select_by_rule(statistics.mean(line["ungated"] for line in lines),
                          {alpha: statistics.mean(line[statistic][str(alpha)]["R@1"] for line in lines)
                           for alpha in ALPHAS})


def benchmark_table(results: dict, kinds: list[str], rows: list[tuple[str, str]]) -> list[str]:
    """The lines of the benchmark's R@1 table of a gate report: the baselines, then one row per (name, key of the
    seeds' results) as mean ± std over the seeds."""
    seeds = list(results["seeds"].values())
    lines = ["Benchmark R@1 per kind (mean ± std over the seeds):", "",
             "| method | " + " | ".join(kinds) + " | average |", "| --- |" + " ---: |" * (len(kinds) + 1)]
    for method, values in results["baselines"].items():
        cells = [values[kind]["R@1"] for kind in kinds]
        lines.append(f"| {method} only |" if method != "sum" else "| image + text |")
        lines[-1] += "".join(f" {cell:.1f} |" for cell in cells) + f" {statistics.mean(cells):.1f} |"
    for name, key in rows:
        per_seed = [[line[key][kind]["R@1"] for kind in kinds] for line in seeds]
        cells = [[row[i] for row in per_seed] for i in range(len(kinds))]
        cells.append([statistics.mean(row) for row in per_seed])
        lines.append(f"| {results['variant']}, {name} |"
                     + "".join(f" {statistics.mean(c):.1f} ± {statistics.pstdev(c):.1f} |" for c in cells))
    return lines


def format_report(results: dict) -> str:
    seeds = list(results["seeds"].values())
    validations = [line["validation"] for line in seeds]

    def mean(values) -> float:
        return statistics.mean(values)

    lines = [f"Grounding gate on `{results['variant']}` (k = {results['neighbours']}), seeds "
             f"{', '.join(results['seeds'])}.", "",
             "Validation, means of the seeds: the AUC of each statistic (own texts against the permutation null) and "
             "the composed -> floor image R@1 over all training images:", "",
             "| statistic | AUC | α | θ (mean) | gated (%) | validation R@1 |",
             "| --- | ---: | ---: | ---: | ---: | ---: |",
             f"| no gate | | | — | 0 | {mean(line['ungated'] for line in validations):.2f} |"]
    for statistic in STATISTICS:
        auc = mean(line[statistic]["auc"] for line in validations)
        for alpha in ALPHAS:
            entries = [line[statistic][str(alpha)] for line in validations]
            lines.append(f"| {statistic} | {auc:.3f} | {alpha} | {mean(e['threshold'] for e in entries):.2f} | "
                         f"{mean(e['gated'] for e in entries):.1f} | {mean(e['R@1'] for e in entries):.2f} |")
    lines += ["", f"Selected by the rules: the statistic `{results['selected_statistic']}` (the higher AUC); α per "
              "statistic: " + ", ".join(f"{statistic} {alpha if alpha is not None else 'none (no gate)'}"
                                        for statistic, alpha in results["selected_alpha"].items()) + ".", ""]
    kinds = list(seeds[0]["benchmark_ungated"])
    rows = [("ungated", "benchmark_ungated")] + [
        (f"gated, {statistic} (α {alpha})", f"benchmark_gated_{statistic}")
        for statistic, alpha in results["selected_alpha"].items() if alpha is not None]
    lines += benchmark_table(results, kinds, rows)
    shares = [statistic for statistic in STATISTICS if f"gated_share_{statistic}" in seeds[0]]
    if shares:
        lines += ["", "Share of each kind's queries answered by the image alone (%, mean of the seeds; a diagnostic):",
                  "", "| gate | " + " | ".join(kinds) + " |", "| --- |" + " ---: |" * len(kinds)]
        for statistic in shares:
            lines.append(f"| {statistic} (α {results['selected_alpha'][statistic]}) |" + "".join(
                f" {mean(line[f'gated_share_{statistic}'][kind] for line in seeds):.0f} |" for kind in kinds))
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
