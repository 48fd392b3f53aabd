"""Issue 14's eighth ablation round: the text novelty gate (`ScotConfig.novelty_gate_*`), calibrated on the triplets'
validation slice, its rule applied there, then every kind of the demo benchmark with and without it, over seeds.

    python -m demo.novelty_gate [--output_dir outputs/demo] [--variant scot+text+image_ref+anchor+floor]

Needs a finished `make ablations` run of `--variant` with its seeds (as `demo.grounding_gate`): the gate is applied at
inference only, so the same Combiner weights are scored with and without it. For each seed: the bank from that seed's
training split, θ the `--alpha` quantile (the eighth round's `ALPHA` by default) of its validation rows' familiarity
(`trainers.novelty_gate`), and the composed -> floor image R@1 over all the training images without and with the
gate. The rule (docs/ablations.md, eighth round): the gate joins the default if its mean validation R@1 is at least
the ungated mean minus `TOLERANCE` (the ninth round, `demo.kind_transfer`, chooses α by another rule; `--alpha`
reports its choice). Writes `{output_dir}/ablations/novelty_gate.json` and `novelty_gate.md`
(`novelty_gate-alpha<α>.*` for another α).
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from demo.grounding_gate import GateArguments, benchmark_table, seed_models, validation_view

logger = logging.getLogger("demo.novelty_gate")

ALPHA = 0.05  # fixed before the runs: 95% of validation texts kept
NEIGHBOURS = 10
TOLERANCE = 1.0  # validation floor R@1 points the gate may cost (the fourth and fifth rounds' tolerance)


@dataclass
class NoveltyGateArguments(GateArguments):
    alpha: float = field(default=ALPHA, metadata={
        "help": "θ is this quantile of the validation familiarity (the eighth round's 0.05; another α writes "
                "novelty_gate-alpha<α>.{json,md}, leaving the eighth round's files)."})


def gated_shares(model, prepared: dict) -> dict[str, float]:
    """The share (%) of each kind's queries the novelty gate answers with the image alone (a diagnostic)."""
    shares = {}
    for kind, tasks in prepared.items():
        familiarity = [model.text_familiarity(task.text_embeds[:, 0]) for task in tasks]
        gated = sum(int((values < model.config.novelty_gate_threshold).sum()) for values in familiarity)
        shares[kind] = 100 * gated / sum(len(values) for values in familiarity)
    return shares


def run(args: NoveltyGateArguments) -> dict:
    from demo.ablations import REPORT_METRICS, AblationArguments, prepare_kinds
    from modeling_scot import ScotModel
    from scot_eval.evaluation import evaluate_prepared
    from trainers.novelty_gate import calibrate_novelty_gate

    prepared, processor, baselines = prepare_kinds(AblationArguments(output_dir=args.output_dir))

    def benchmark(model) -> dict:
        return {kind: {key: round(evaluate_prepared(model, task, "scot", processor=processor).metrics[key], 2)
                       for key in REPORT_METRICS} for kind, task in prepared.items()}

    results = {"variant": args.variant, "alpha": args.alpha, "neighbours": NEIGHBOURS, "tolerance": TOLERANCE,
               "baselines": baselines, "seeds": {}}
    for seed, folder in seed_models(args).items():
        model = ScotModel.from_pretrained(folder).eval()
        line = {"model": str(folder), "benchmark_ungated": benchmark(model)}
        train_dataset, eval_dataset = validation_view(args, seed)
        line["validation"] = calibrate_novelty_gate(model, train_dataset, eval_dataset, args.alpha, NEIGHBOURS,
                                                    seed=seed)
        line["benchmark_gated"] = benchmark(model)
        line["gated_share"] = gated_shares(model, prepared)
        results["seeds"][str(seed)] = line
        logger.warning("seed %d: %s; gated %s", seed, line["validation"], line["gated_share"])
    results["adopted"] = adopt(results["seeds"])
    root = Path(args.output_dir) / "ablations"
    name = "novelty_gate" if args.alpha == ALPHA else f"novelty_gate-alpha{args.alpha:g}"
    (root / f"{name}.json").write_text(json.dumps(results, indent=2))
    (root / f"{name}.md").write_text(format_report(results))
    return results


def adopt(seeds: dict) -> bool:
    """The eighth round's rule: the mean validation floor R@1 with the gate is at least the ungated mean minus
    `TOLERANCE`."""
    lines = [line["validation"] for line in seeds.values()]
    return (statistics.mean(line["floor_R@1_gated"] for line in lines)
            >= statistics.mean(line["floor_R@1_ungated"] for line in lines) - TOLERANCE)


def format_report(results: dict) -> str:
    seeds = list(results["seeds"].values())
    validations = [line["validation"] for line in seeds]

    def mean(values) -> float:
        return statistics.mean(values)

    lines = [f"Text novelty gate on `{results['variant']}` (k = {results['neighbours']}, θ the {results['alpha']} "
             f"quantile of the validation familiarity), seeds {', '.join(results['seeds'])}.", "",
             "Validation (means of the seeds): θ (cosine), bank size, validation rows gated, composed -> floor image "
             "R@1 over all training images without and with the gate:", "",
             f"θ {mean(v['threshold'] for v in validations):.3f}; bank "
             f"{mean(v['bank_size'] for v in validations):.0f} texts; gated "
             f"{100 * mean(v['gated_fraction'] for v in validations):.1f}%; floor R@1 "
             f"{mean(v['floor_R@1_ungated'] for v in validations):.2f} ungated, "
             f"{mean(v['floor_R@1_gated'] for v in validations):.2f} gated.", "",
             f"By the rule (gated ≥ ungated − {results['tolerance']:g}): "
             + ("**adopted**." if results["adopted"] else "**not adopted**."), ""]
    kinds = list(seeds[0]["benchmark_ungated"])
    lines += benchmark_table(results, kinds, [("ungated", "benchmark_ungated"), ("novelty gate", "benchmark_gated")])
    lines += ["", "Share of each kind's queries answered by the image alone (%, mean of the seeds; a diagnostic):", "",
              "| " + " | ".join(kinds) + " |", "|" + " ---: |" * len(kinds),
              "|" + "".join(f" {mean(line['gated_share'][kind] for line in seeds):.0f} |" for kind in kinds)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    (args,) = HfArgumentParser(NoveltyGateArguments).parse_args_into_dataclasses(argv)
    print(format_report(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
