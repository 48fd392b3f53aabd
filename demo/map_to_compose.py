"""Map-to-Compose (issue 15) on the outputs of `make demo`: both stages, the per-kind table beside the baselines and
SCOT's Combiner, and the data-efficiency curve. `make map-to-compose` runs this (a second command: `make demo` is at
its time budget).

    python -m demo.map_to_compose [--output_dir outputs/demo] [--triplets_dir scot-triplets] [--seeds 0 1 2]

Needs a finished `make demo`: its backbone (`{output_dir}/backbone`), data (`{output_dir}/data`, the image-caption
pairs), benchmark (`{output_dir}/benchmark`, five kinds) and triplets. Writes under `{output_dir}/map-to-compose/`:
`stage-1/` and `stage-2/` (the two models, AutoModel folders; stage 2's adapters merged), `report.json`, `report.md`
and `data_efficiency.png`.

1. stage 1 (mapping): the mapping network on the demo data's image-caption pairs (train split; its test split is the
   held-out set whose prompt -> image recall is logged), `stage_1_epochs` epochs;
2. the curve: for each number of triplets N (100, 300, 1000, all) and each seed, a random N-row subset of the triplets
   (drawn with that seed; "all" is the whole set) trains both a SCOT Combiner (loss_type scot, text targets, lr 1e-4,
   batch 256: `demo.run.train_scot`'s settings) and Map-to-Compose's stage 2 (LoRA on the text tower from the stage-1
   model, lr 1e-3, batch 64). **Budget rule, the same for both methods at every N**: every run sees
   `examples_per_run` training examples (default: as many as there are triplets), so epochs = examples_per_run / N
   (1 at all). Why not the demo's 8 epochs: stage 2 runs the text tower forward and backward on every example, ~25
   examples a second on the shared 2-core CPU, 12 runs of it must fit in the command's ~25 minutes;
3. every model on every kind of the benchmark (CIRR protocol), R@1 averaged over kinds for the curve. The stage-2
   model on all triplets with the first seed is saved as `stage-2/`.

Nothing is selected on the benchmark: every setting above was fixed before any benchmark result was seen.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from demo.run import fresh_folder, mark_fresh, stage

logger = logging.getLogger("demo.map_to_compose")

REPORT_METRICS = ("R@1", "R@5", "R@10", "Rsubset@1")
METHOD_NAMES = {
    "image": "Image only (reference image embedding)",
    "text": "Text only (modification text embedding)",
    "sum": "Image + text (normalised sum)",
    "scot_demo": "SCOT Combiner of `make demo` (its own run)",
    "scot": "SCOT Combiner, all triplets (mean over seeds)",
    "map_to_compose_stage_1": "Map-to-Compose stage 1 only (no triplets)",
    "map_to_compose": "Map-to-Compose stages 1 + 2, all triplets (mean over seeds)",
}
CURVE_METHODS = ("scot", "map_to_compose")


@dataclass
class MapToComposeArguments:
    """The options of `python -m demo.map_to_compose`."""

    output_dir: str = field(default="outputs/demo", metadata={"help": "The folder `make demo` wrote."})
    triplets_dir: str = field(default="scot-triplets", metadata={"help": "The demo's triplets."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds of the curve's runs."})
    sizes: list[int] = field(default_factory=lambda: [100, 300, 1000, 0], metadata={
        "help": "Numbers of training triplets of the curve (0 = all)."})
    stage_1_epochs: float = field(default=1.0, metadata={"help": "Epochs of stage 1 over the demo data's pairs."})
    stage_1_learning_rate: float = field(default=1e-3, metadata={"help": "Stage 1 (a new network from scratch)."})
    stage_1_batch_size: int = field(default=128, metadata={"help": "Stage 1's batch."})
    composing_learning_rate: float = field(default=1e-3, metadata={"help": "Stage 2's LoRA learning rate."})
    composing_batch_size: int = field(default=64, metadata={"help": "Stage 2's batch (the Combiner's: 256)."})
    examples_per_run: int = field(default=0, metadata={
        "help": "Training examples each curve run sees, both methods (0 = once the number of triplets)."})


# -- training ---------------------------------------------------------------------------------------------------------


def _training_arguments(run_dir: Path, dataset: Path | str, seed: int, epochs: float, learning_rate: float,
                        batch_size: int, **extra):
    from trainers.training_args import ScotTrainingArguments

    return ScotTrainingArguments(output_dir=str(run_dir), dataset_name=str(dataset), num_train_epochs=epochs,
                                 learning_rate=learning_rate, per_device_train_batch_size=batch_size,
                                 per_device_eval_batch_size=256, eval_strategy="no", save_strategy="no",
                                 report_to="none", logging_steps=10, dataloader_pin_memory=False, seed=seed,
                                 disable_tqdm=True, **extra)


def train_stage_1(args: MapToComposeArguments, root: Path, key: str) -> Path:
    """Stage 1 on the demo data's image-caption pairs; the saved model (reused when already there)."""
    from trainers.train import build_trainer, finish_training
    from trainers.training_args import DataArguments, ModelArguments

    run_dir = root / "stage-1"
    if fresh_folder(run_dir, key) and (run_dir / "train_results.json").is_file():
        return run_dir
    mark_fresh(run_dir, key)
    output_dir = Path(args.output_dir)
    trainer = build_trainer(
        ModelArguments(model_name_or_path=str(output_dir / "backbone"), text_pooling="mean", composer="pseudo_word"),
        DataArguments(eval_split="test", embedding_cache_dir=str(output_dir / "embedding-cache")),
        _training_arguments(run_dir, output_dir / "data", 0, args.stage_1_epochs, args.stage_1_learning_rate,
                            batch_size=args.stage_1_batch_size, composer_stage="mapping"),
    )
    finish_training(trainer, trainer.train())
    return run_dir


def subset_rows(total: int, size: int, seed: int) -> list[int] | None:
    """The `size` training rows drawn with `seed` (None: all of them, for size 0 or a size not below `total`). The
    rows index the trainer's cached dataset, so every subset reuses the one embedding cache of the whole set."""
    import torch

    if size <= 0 or size >= total:
        return None
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:size].tolist()


def train_curve_run(args: MapToComposeArguments, method: str, size: int, seed: int, stage_1_dir: Path,
                    run_dir: Path, prepared: dict, processor, save: bool = False) -> dict:
    """One run of the curve: train `method` (`scot` or `map_to_compose`) on `size` triplets drawn with `seed` (0:
    all), evaluate it on every kind; `{kind: {metric: value}, "_run": ...}`, kept in `run_dir/benchmark.json` (a rerun
    reads it back)."""
    import torch

    from trainers.train import build_trainer, finish_training
    from trainers.training_args import DataArguments, ModelArguments

    results = run_dir / "benchmark.json"
    if results.is_file():
        return json.loads(results.read_text())
    output_dir = Path(args.output_dir)
    total = len_triplets(args)
    rows = min(size, total) if size > 0 else total
    epochs = examples_per_run(args) / rows  # the budget rule: as many examples seen by both methods at every size
    dataset = args.triplets_dir
    data_args = DataArguments(eval_fraction=0.0, embedding_cache_dir=str(output_dir / "embedding-cache"))
    if method == "scot":
        model_args = ModelArguments(model_name_or_path=str(output_dir / "backbone"), text_pooling="mean",
                                    loss_type="scot")
        training_args = _training_arguments(run_dir, dataset, seed, epochs, 1e-4, batch_size=256)
    else:
        model_args = ModelArguments(model_name_or_path=str(stage_1_dir))
        training_args = _training_arguments(run_dir, dataset, seed, epochs, args.composing_learning_rate,
                                            batch_size=args.composing_batch_size, composer_stage="composing")
    trainer = build_trainer(model_args, data_args, training_args)
    chosen = subset_rows(len(trainer.train_dataset), size, seed)
    if chosen is not None:
        trainer.train_dataset = torch.utils.data.Subset(trainer.train_dataset, chosen)
    train_result = trainer.train()
    if save:
        finish_training(trainer, train_result)  # merges stage 2's adapters, then saves
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.merge_composer_adapters()  # a no-op for the Combiner and once merged
    metrics = benchmark_metrics(model, prepared, processor)
    run_dir.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({**metrics, "_run": {"rows": rows, "epochs": epochs, "seed": seed,
                                                       "steps": trainer.state.global_step}}, indent=2))
    return json.loads(results.read_text())


def len_triplets(args: MapToComposeArguments) -> int:
    from datasets import load_dataset

    return len(load_dataset(args.triplets_dir, split="train"))


def examples_per_run(args: MapToComposeArguments) -> int:
    return args.examples_per_run or len_triplets(args)


# -- evaluation -------------------------------------------------------------------------------------------------------


def benchmark_metrics(model, prepared: dict, processor, method: str = "scot") -> dict:
    """`{kind: {metric: value}}` of `method` on every prepared kind."""
    from scot_eval.evaluation import evaluate_prepared

    return {kind: {key: round(evaluate_prepared(model, tasks, method, processor=processor).metrics[key], 2)
                   for key in REPORT_METRICS} for kind, tasks in prepared.items()}


def prepare_kinds(model, processor, kinds: dict[str, Path], cache_dir: Path) -> dict:
    from scot_eval.evaluation import prepare_benchmark

    return {kind: prepare_benchmark(model, processor, "cirr", folder, "val", cache_dir=cache_dir, show_progress=False)
            for kind, folder in kinds.items()}


def _average(per_kind: dict, key: str = "R@1") -> float:
    values = [metrics[key] for kind, metrics in per_kind.items() if not kind.startswith("_")]
    return sum(values) / len(values)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, (sum((value - mean) ** 2 for value in values) / max(len(values) - 1, 1)) ** 0.5


def _mean_over_runs(runs: list[dict]) -> dict:
    kinds = [kind for kind in runs[0] if not kind.startswith("_")]
    return {kind: {key: round(sum(run[kind][key] for run in runs) / len(runs), 2) for key in REPORT_METRICS}
            for kind in kinds}


# -- report -----------------------------------------------------------------------------------------------------------


def plot_curve(curve: dict, path: Path, baselines: dict[str, float]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s", path)
        return None
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for method in CURVE_METHODS:
        points = sorted((int(size), _mean_std(values)) for size, values in curve[method].items())
        sizes = [size for size, _ in points]
        axis.errorbar(sizes, [mean for _, (mean, _) in points], yerr=[std for _, (_, std) in points], marker="o",
                      capsize=3, label=METHOD_NAMES[method].split(",")[0].split(" stages")[0])
    axis.set_xscale("log")
    for name, value in baselines.items():
        axis.axhline(value, linestyle=":", linewidth=1, color="grey")
        axis.text(0.01, value, name, transform=axis.get_yaxis_transform(), fontsize=7, color="grey", va="bottom")
    axis.set_xlabel("training triplets")
    axis.set_ylabel("R@1, average over the five kinds (%)")
    axis.set_title("Data efficiency on the demo benchmark (mean ± std over seeds)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def format_report(report: dict) -> str:
    from demo.report import kinds_table

    named = {kind: {METHOD_NAMES[method]: values for method, values in per_method.items()}
             for kind, per_method in report["kinds"].items()}
    lines = ["# Map-to-Compose on the demo benchmark", "",
             "R@1 per kind of change (CIRR protocol, percentages; the trained rows: mean over seeds "
             f"{', '.join(map(str, report['settings']['seeds']))}):", "", kinds_table(named, "R@1"), "",
             "Data efficiency: R@1 averaged over the kinds, mean ± std over seeds (the same number of training "
             f"examples per run for both methods: {report['settings']['examples_per_run']}):", "",
             "| triplets | " + " | ".join(METHOD_NAMES[method].split(",")[0] for method in CURVE_METHODS) + " |",
             "| ---: |" + " ---: |" * len(CURVE_METHODS)]
    for size in sorted({int(size) for method in CURVE_METHODS for size in report["curve"][method]}):
        cells = ["{:.1f} ± {:.1f}".format(*_mean_std(report["curve"][method][str(size)])) for method in CURVE_METHODS]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines += ["", f"Total time: {report['seconds']:.0f} s.", "", "![data efficiency](data_efficiency.png)"]
    return "\n".join(lines) + "\n"


# -- the command ------------------------------------------------------------------------------------------------------


def run(args: MapToComposeArguments) -> dict:
    from demo.benchmark import load_kinds
    from modeling_scot import ScotModel, ScotProcessor
    from scot_core import load_scot_or_backbone

    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    root = output_dir / "map-to-compose"
    for needed in (output_dir / "backbone", output_dir / "data", output_dir / "benchmark" / "kinds.json",
                   Path(args.triplets_dir)):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} is missing: run `make demo` first (this command reads its outputs).")
    kinds = load_kinds(output_dir / "benchmark")
    backbone_key = json.loads((output_dir / "backbone" / "demo_backbone.json").read_text()).get("fingerprint", "")

    t = stage("1/3 Map-to-Compose stage 1 (mapping network on the demo data's image-caption pairs)")
    stage_1_dir = train_stage_1(args, root, f"{backbone_key}:{args.stage_1_epochs}:{args.stage_1_learning_rate}")
    print(f"    {stage_1_dir} ({time.perf_counter() - t:.0f} s)", flush=True)

    t = stage("2/3 baselines and stage 1 on the benchmark")
    cache_dir = root / "evaluation-cache"
    backbone, processor, _ = load_scot_or_backbone(output_dir / "backbone", config_overrides={"text_pooling": "mean"})
    combiner_prepared = prepare_kinds(backbone, processor, kinds, cache_dir)
    per_kind = {method: benchmark_metrics(backbone, combiner_prepared, processor, method)
                for method in ("image", "text", "sum")}
    if (output_dir / "combiner-scot" / "config.json").is_file():
        per_kind["scot_demo"] = benchmark_metrics(ScotModel.from_pretrained(output_dir / "combiner-scot"),
                                                  combiner_prepared, processor)
    stage_1 = ScotModel.from_pretrained(stage_1_dir).eval()
    stage_1_processor = ScotProcessor.from_pretrained(stage_1_dir)
    # Stage 2 tunes only the text tower: the gallery embeddings and the references' token states that stage 1's
    # prepared tasks hold are those of every stage-2 model too, so they are encoded once
    pseudo_word_prepared = prepare_kinds(stage_1, stage_1_processor, kinds, cache_dir)
    per_kind["map_to_compose_stage_1"] = benchmark_metrics(stage_1, pseudo_word_prepared, stage_1_processor)
    print(f"    evaluated ({time.perf_counter() - t:.0f} s)", flush=True)

    t = stage("3/3 the data-efficiency curve: SCOT's Combiner and Map-to-Compose stage 2, per size and seed")
    runs_key = json.dumps([backbone_key, args.triplets_dir, len_triplets(args), args.stage_1_epochs,
                           args.stage_1_learning_rate, args.stage_1_batch_size, args.composing_learning_rate,
                           args.composing_batch_size, examples_per_run(args)])
    for folder in (root / "runs", root / "stage-2"):  # results of other settings are not reused
        if not fresh_folder(folder, runs_key):
            mark_fresh(folder, runs_key)
    curve = {method: {} for method in CURVE_METHODS}
    all_triplets: dict[str, list[dict]] = {method: [] for method in CURVE_METHODS}
    for size in args.sizes:
        for seed in args.seeds:
            rows = min(size, len_triplets(args)) if size > 0 else len_triplets(args)
            for method in CURVE_METHODS:
                run_started = time.perf_counter()
                is_all = rows == len_triplets(args)
                prepared = combiner_prepared if method == "scot" else pseudo_word_prepared
                run_processor = processor if method == "scot" else stage_1_processor
                save = method == "map_to_compose" and is_all and seed == args.seeds[0]
                run_dir = root / ("stage-2" if save else f"runs/{method}/n{rows}-seed{seed}")
                metrics = train_curve_run(args, method, size, seed, stage_1_dir, run_dir, prepared, run_processor,
                                          save=save)
                curve[method].setdefault(str(rows), []).append(round(_average(metrics), 2))
                if is_all:
                    all_triplets[method].append(metrics)
                print(f"    {method} n={rows} seed={seed}: average R@1 {_average(metrics):.1f} "
                      f"({time.perf_counter() - run_started:.0f} s)", flush=True)
    print(f"    curve done ({time.perf_counter() - t:.0f} s)", flush=True)
    for method, runs in all_triplets.items():
        if runs:
            per_kind[method] = _mean_over_runs(runs)

    report = {
        "settings": {"seeds": args.seeds, "sizes": args.sizes, "stage_1_epochs": args.stage_1_epochs,
                     "stage_1_learning_rate": args.stage_1_learning_rate,
                     "stage_1_batch_size": args.stage_1_batch_size,
                     "composing_learning_rate": args.composing_learning_rate,
                     "composing_batch_size": args.composing_batch_size, "combiner_learning_rate": 1e-4,
                     "combiner_batch_size": 256, "examples_per_run": examples_per_run(args)},
        "kinds": {kind: {method: values[kind] for method, values in per_kind.items()} for kind in kinds},
        "curve": curve,
        "seconds": time.perf_counter() - started,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.json").write_text(json.dumps(report, indent=2))
    plot_curve(curve, root / "data_efficiency.png",
               {METHOD_NAMES[name].split(" (")[0]: _average(per_kind[name]) for name in ("image", "sum")})
    (root / "report.md").write_text(format_report(report))
    return report


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(MapToComposeArguments, description=__doc__).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = run(args)
    print("\n" + format_report(report))
    print(f"report: {Path(args.output_dir) / 'map-to-compose' / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
