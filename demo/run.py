"""The SCOT pipeline end to end on the embedded default, offline: `make demo` runs this.

    python -m demo.run [--output_dir outputs/demo] [--llm_rows 240] [--generator_steps 40]

1. demo data: captioned images from Debian packages (Tux Paint stamps and their tints, Open Clip Art, Noto emoji);
2. demo backbone: a `VisionTextDualEncoderModel`, frozen MiniLM text tower + a small vision tower trained here;
3. demo CIR benchmark: held-out stamps in six colours, "make it blue" -> the blue one (CIRR format);
4. triplets: SmolLM2-135M LoRA-tuned briefly on the seed triplets writes (modification, modified caption) for a
   sample of captions; the rule-based templates write the rest (colour swaps of tinted stamps, ...) -> scot-triplets/;
5. SCOT: the Combiner trained on cached embeddings with the SCOT loss (and, to compare, with InfoNCE) -> scot-demo/;
6. evaluation on the benchmark against image-only, text-only and image+text, a markdown report, a retrieval grid
   and metrics.json.

Every stage caches its output (keyed by its inputs and settings), so a second run only re-checks and re-reports.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

logger = logging.getLogger("demo")

BENCHMARK_METRICS = ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3")


def stage(name: str):
    print(f"\n=== {name} ===", flush=True)
    return time.perf_counter()


def _done(started: float, what: str) -> None:
    print(f"    {what} ({time.perf_counter() - started:.0f} s)", flush=True)


def fresh_folder(folder: Path, key: str) -> bool:
    """True when `folder` was built from inputs with this `key`; otherwise empties it (stale) and returns False."""
    marker = folder / ".demo_key"
    if marker.is_file() and marker.read_text() == key:
        return True
    if folder.exists():
        shutil.rmtree(folder)
    return False


def mark_fresh(folder: Path, key: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".demo_key").write_text(key)


def build_benchmark(output_dir: Path, data_key: str) -> Path:
    from demo.benchmark import build_colour_benchmark
    from demo.data import TINT_COLOURS, benchmark_stamps, prepare_image, tint
    from PIL import Image

    folder = output_dir / "benchmark"
    if fresh_folder(folder, data_key):
        return folder
    stamps = []
    for stamp in benchmark_stamps():
        with Image.open(stamp.path) as opened:
            stamps.append((Path(stamp.path).stem, opened.convert("RGBA")))
    build_colour_benchmark(stamps, lambda image, colour: prepare_image(tint(image, colour)), tuple(TINT_COLOURS),
                           folder)
    mark_fresh(folder, data_key)
    return folder


def generation_inputs(data_dir: Path, output_dir: Path, llm_rows: int, seed: int = 0) -> tuple[Path, Path]:
    """Split the demo training rows in two parquet folders: a diverse sample for the LLM, the rest for templates."""
    from datasets import concatenate_datasets

    from demo.data import load_demo_dataset

    llm_dir, template_dir = output_dir / "generation-input" / "llm", output_dir / "generation-input" / "templates"
    if (llm_dir / "rows.parquet").exists() and (template_dir / "rows.parquet").exists():
        return llm_dir, template_dir
    train = load_demo_dataset(data_dir)["train"].shuffle(seed=seed)
    # the LLM sees every source: an equal share of each, the templates get everything else
    by_source = {name: train.filter(lambda row, name=name: row["source"] == name) for name in sorted(set(train["source"]))}
    share = max(1, llm_rows // len(by_source))
    llm_part = concatenate_datasets([rows.select(range(min(share, len(rows)))) for rows in by_source.values()])
    template_part = concatenate_datasets([rows.select(range(min(share, len(rows)), len(rows)))
                                          for rows in by_source.values()])
    for folder, rows in ((llm_dir, llm_part), (template_dir, template_part)):
        folder.mkdir(parents=True, exist_ok=True)
        rows.select_columns(["image", "caption", "source", "license"]).to_parquet(str(folder / "rows.parquet"))
    return llm_dir, template_dir


def make_triplets(data_dir: Path, output_dir: Path, triplets_dir: Path, llm_rows: int, generator_steps: int,
                  data_key: str) -> dict:
    from data_gen.dataset_io import merge_stats, read_shard_states, write_card
    from data_gen.finetune import FinetuneArguments, finetune
    from data_gen.generate import GenerationArguments, run_generation

    adapter = output_dir / "generator-lora"
    if not fresh_folder(adapter, f"steps={generator_steps}") or not (adapter / "adapter_config.json").exists():
        finetune(FinetuneArguments(output_dir=str(adapter), max_steps=generator_steps, per_device_train_batch_size=8,
                                   logging_steps=5, seed=0))
        mark_fresh(adapter, f"steps={generator_steps}")
    key = f"{data_key}:{llm_rows}:{generator_steps}"
    for folder in ("generation-input", "triplets-llm", "triplets-templates"):
        if not fresh_folder(output_dir / folder, key):
            mark_fresh(output_dir / folder, key)
    llm_inputs, template_inputs = generation_inputs(data_dir, output_dir, llm_rows)
    licence = "see the demo data card: Tux Paint stamps GPL-2.0+, Open Clip Art CC0, Noto emoji OFL-1.1/Apache-2.0"
    llm_stats = run_generation(GenerationArguments(
        output_dir=str(output_dir / "triplets-llm"), dataset=str(llm_inputs), model="smollm2", adapter=str(adapter),
        fallback="templates", batch_size=16, shard_size=40, source_name="demo", source_license=licence))
    template_stats = run_generation(GenerationArguments(
        output_dir=str(output_dir / "triplets-templates"), dataset=str(template_inputs), engine="templates",
        shard_size=2000, source_name="demo", source_license=licence))

    # scot-triplets/: both runs' shards under one card, so load_dataset("scot-triplets") reads one train split
    parts = sorted((output_dir / "triplets-llm" / "data").glob("train-*.parquet")) + sorted(
        (output_dir / "triplets-templates" / "data").glob("train-*.parquet"))
    if triplets_dir.exists():
        shutil.rmtree(triplets_dir)
    (triplets_dir / "data").mkdir(parents=True)
    for index, part in enumerate(parts):
        shutil.copyfile(part, triplets_dir / "data" / f"train-{index:05d}-of-{len(parts):05d}.parquet")
    states = {**{f"llm-{k}": v for k, v in read_shard_states(str(output_dir / "triplets-llm")).items()},
              **{f"templates-{k}": v for k, v in read_shard_states(str(output_dir / "triplets-templates")).items()}}
    stats = {**llm_stats, **merge_stats(states)}
    stats["rejections"] = dict(sorted({**template_stats["rejections"], **llm_stats["rejections"]}.items()))
    stats["input_rows"] = llm_stats["input_rows"] + template_stats["input_rows"]
    stats["engine"] = f"transformers for {llm_stats['input_rows']} sampled rows, templates for the other rows"
    stats["pretty_name"] = "SCOT demo triplets"
    write_card(str(triplets_dir), stats, repo_or_folder="scot-triplets")
    return stats


def train_scot(backbone_dir: Path, triplets_dir: Path, output_dir: Path, loss_type: str, epochs: int, key: str):
    from trainers.train import DataArguments, ModelArguments, ScotTrainingArguments, build_trainer, save_loss_curve

    run_dir = output_dir / f"scot-{loss_type}"
    if fresh_folder(run_dir, key) and (run_dir / "train_results.json").exists():
        return run_dir
    mark_fresh(run_dir, key)
    trainer = build_trainer(
        ModelArguments(model_name_or_path=str(backbone_dir), text_pooling="mean", loss_type=loss_type),
        DataArguments(dataset_name=str(triplets_dir), eval_fraction=0.05,
                      embedding_cache_dir=str(output_dir / "embedding-cache")),
        ScotTrainingArguments(output_dir=str(run_dir), per_device_train_batch_size=256, per_device_eval_batch_size=256,
                              num_train_epochs=epochs, learning_rate=1e-4, logging_steps=10, eval_strategy="epoch",
                              save_strategy="no", dataloader_pin_memory=False, seed=0, disable_tqdm=True),
    )
    result = trainer.train()
    trainer.save_model()
    trainer.save_metrics("train", {**result.metrics, "train_samples": len(trainer.train_dataset)})
    trainer.save_metrics("eval", {**trainer.evaluate(), "eval_samples": len(trainer.eval_dataset)})
    trainer.save_state()
    save_loss_curve(trainer.state.log_history, str(run_dir))
    return run_dir


def evaluate_all(scot_dir: Path, infonce_dir: Path, benchmark_dir: Path) -> dict:
    from modeling_scot import ScotModel, ScotProcessor
    from trainers.evaluate import evaluate_benchmark

    metrics = {}
    scot, processor = ScotModel.from_pretrained(scot_dir), ScotProcessor.from_pretrained(scot_dir)
    for method in ("image", "text", "sum", "scot"):
        result = evaluate_benchmark(scot, processor, "cirr", benchmark_dir, "val", method, show_progress=False)
        metrics[method] = {key: round(result["metrics"][key], 2) for key in BENCHMARK_METRICS}
    infonce = ScotModel.from_pretrained(infonce_dir)
    result = evaluate_benchmark(infonce, processor, "cirr", benchmark_dir, "val", "scot", show_progress=False)
    metrics["scot_infonce"] = {key: round(result["metrics"][key], 2) for key in BENCHMARK_METRICS}
    return metrics


def write_model_card(scot_dir: Path, run_dir: Path, metrics: dict, triplet_stats: dict, backbone_report: dict) -> None:
    """scot-demo's README.md (`hub_cards`): the training record of `run_dir`, the benchmark `metrics`
    (`{method: {metric: value}}`, all measured by `evaluate_all`), the model-index from the `scot` row."""
    from hub_cards import model_card_from_folder

    labels = {"scot_infonce": "Combiner trained with InfoNCE instead (another model)"}
    evaluations = [{"benchmark": "cirr", "split": "val", "method": method, "metrics": values,
                    "dataset_name": "SCOT demo colour benchmark", "dataset_type": "scot-demo-colour-benchmark",
                    "label": labels.get(method)} for method, values in metrics.items()]
    heldout = backbone_report.get("heldout", {})
    backbone = ""
    if "image_to_text" in heldout:
        backbone = (f" The demo backbone's held-out image → text retrieval: R@1 {heldout['image_to_text']['R@1']}, "
                    f"R@5 {heldout['image_to_text']['R@5']} over {heldout.get('captions')} captions.")
    description = (
        "This is the demo model `make demo` builds offline on CPU: the backbone is a `VisionTextDualEncoderModel` with "
        "a small vision tower trained here on captioned clip art, emoji and Tux Paint stamps and the frozen "
        f"all-MiniLM-L6-v2 text tower; the triplets are the {triplet_stats['kept_rows']} of `scot-triplets`. The "
        "benchmark is the demo's own: held-out stamps in six colours, scored with the CIRR protocol." + backbone)
    card = model_card_from_folder(
        scot_dir, training_folder=run_dir, model_name="scot-demo", repo_id="scot-demo", license="apache-2.0",
        dataset={"name": "scot-triplets"}, evaluations=evaluations, description=description,
        limitations=["A demonstration of the pipeline at 64 px on clip art, not a model for real photographs."],
    )
    card.save(scot_dir / "README.md")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo", type=Path)
    parser.add_argument("--scot_model_dir", default="scot-demo", type=Path, help="where the trained model lands")
    parser.add_argument("--triplets_dir", default="scot-triplets", type=Path, help="where the triplets land")
    parser.add_argument("--llm_rows", type=int, default=240, help="captions the LLM writes triplets for")
    parser.add_argument("--generator_steps", type=int, default=40, help="LoRA steps on the seed triplets")
    parser.add_argument("--scot_epochs", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    output_dir = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)

    from demo.backbone import train_demo_backbone
    from demo.data import build_demo_dataset

    t = stage("1/6 demo data (Debian packages -> captioned images)")
    data_stats = build_demo_dataset(output_dir / "data")
    data_key = data_stats["fingerprint"]
    _done(t, f"{output_dir / 'data'}: {json.dumps(data_stats.get('rows', data_stats), default=str)[:300]}")

    t = stage("2/6 demo backbone (frozen MiniLM text + small vision tower, LiT)")
    backbone_report = train_demo_backbone(output_dir / "data", output_dir / "backbone")
    _done(t, f"{output_dir / 'backbone'}")

    t = stage("3/6 demo CIR benchmark (held-out stamps x 6 colours, CIRR format)")
    benchmark_dir = build_benchmark(output_dir, data_key)
    _done(t, str(benchmark_dir))

    t = stage("4/6 triplets (SmolLM2 + LoRA for a sample, templates for the rest)")
    triplet_stats = make_triplets(output_dir / "data", output_dir, args.triplets_dir, args.llm_rows,
                                  args.generator_steps, data_key)
    _done(t, f"{args.triplets_dir}: {triplet_stats['kept_rows']} triplets, per generator {triplet_stats['per_generator']}")

    t = stage("5/6 SCOT training (cached embeddings; SCOT loss, and InfoNCE to compare)")
    run_key = f"{backbone_report['fingerprint']}:{data_key}:{args.llm_rows}:{args.generator_steps}:{args.scot_epochs}"
    scot_dir = train_scot(output_dir / "backbone", args.triplets_dir, output_dir, "scot", args.scot_epochs, run_key)
    infonce_dir = train_scot(output_dir / "backbone", args.triplets_dir, output_dir, "infonce", args.scot_epochs,
                             run_key)
    _done(t, f"{scot_dir}, {infonce_dir}")

    t = stage("6/6 evaluation against the baselines, report")
    from demo.report import metrics_table, retrieval_grid
    from modeling_scot import ScotModel, ScotProcessor

    metrics = evaluate_all(scot_dir, infonce_dir, benchmark_dir)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    model, processor = ScotModel.from_pretrained(scot_dir), ScotProcessor.from_pretrained(scot_dir)
    grid = retrieval_grid(model, processor, benchmark_dir, output_dir / "retrieval_grid.png")
    if args.scot_model_dir.exists():
        shutil.rmtree(args.scot_model_dir)
    model.save_pretrained(args.scot_model_dir)
    processor.save_pretrained(args.scot_model_dir)
    write_model_card(args.scot_model_dir, scot_dir, metrics, triplet_stats, backbone_report)
    best_baseline = max(metrics[m]["R@1"] for m in ("image", "text", "sum"))
    verdict = ("SCOT beats every baseline at R@1" if metrics["scot"]["R@1"] > best_baseline
               else "SCOT does NOT beat the best baseline at R@1")
    report = output_dir / "report.md"
    report.write_text(f"""# SCOT demo report

Benchmark: {len(json.loads((benchmark_dir / 'cirr/captions/cap.rc2.val.json').read_text()))} queries over
{len(json.loads((benchmark_dir / 'cirr/image_splits/split.rc2.val.json').read_text()))} gallery images (held-out
Tux Paint stamps in six colours; a query is one tint + "make it <colour>", the answer the same stamp in that colour).
CIRR protocol: the reference is removed from each ranking; Rsubset ranks only the stamp's six tints. Percentages.

{metrics_table(metrics)}

{verdict} (SCOT R@1 {metrics['scot']['R@1']:.1f} vs best baseline {best_baseline:.1f}).

Training triplets: {triplet_stats['kept_rows']} ({triplet_stats['per_generator']}); the benchmark's stamps are in
none of them, nor in the backbone's training data.

![retrieval grid](retrieval_grid.png)

Total time of this run: {time.perf_counter() - started:.0f} s.
""")
    _done(t, "evaluated")
    print(f"\nSCOT demo done in {time.perf_counter() - started:.0f} s")
    print(metrics_table(metrics))
    print(f"\n{verdict}.")
    print(f"report:  {report}\npicture: {grid}\nmetrics: {output_dir / 'metrics.json'}")
    print(f"model:   {args.scot_model_dir}/   (AutoModel.from_pretrained)\ntriplets: {args.triplets_dir}/   "
          "(load_dataset)")
    print("search it in a browser: make web-demo   (scot-search web, http://127.0.0.1:7860)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
