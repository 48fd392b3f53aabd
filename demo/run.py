"""The SCOT pipeline end to end on the embedded default, offline: `make demo` runs this.

    python -m demo.run [--output_dir outputs/demo] [--llm_rows 3200] [--generator_steps 30]

1. demo data: captioned images from Debian packages (Tux Paint stamps and their tints, Open Clip Art, Noto emoji);
2. demo backbone: a `VisionTextDualEncoderModel`, frozen MiniLM text tower + a small vision tower trained here;
3. demo CIR benchmark: held-out stamps changed in five kinds of way (colour, count, an added object, background,
   orientation), one CIRR folder per kind, answers known by construction;
4. triplets: SmolLM2-135M LoRA-tuned briefly on the seed triplets (eleven kinds of change) writes (modification,
   modified caption) for `llm_rows` distinct captions, each asked for a kind drawn so that none dominates, a rejected
   answer asked once more for another kind; the rule-based templates only where both are rejected -> scot-triplets/;
5. SCOT: the Combiner trained on cached embeddings with the SCOT loss, half of it towards the retrieved training
   image (target mixing), its output anchored to the reference image, with the image floor and the grounding gate
   where validation selects it (the default, `COMBINERS`) -> scot-demo/; and, to compare, the same weights without
   the gate (when one was selected), the default before the floor and the one before that, the paper's loss on
   text targets alone and InfoNCE (same data and budget);
6. evaluation per kind against image-only, text-only and image+text, a markdown report, a retrieval grid and
   metrics.json.

Every stage caches its output (keyed by its inputs and settings), so a second run only re-checks and re-reports.
"""

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

logger = logging.getLogger("demo")

BENCHMARK_METRICS = ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3")
# The Combiners the demo trains, same data and budget: method key (demo.report.METHOD_NAMES) -> its CombinerSetting.
# The default, `scot`, is the SCOT loss with target mixing (half the loss
# towards a retrieved training image: the one best matching the modified caption *and* the reference, reference weight
# 0.5), the image anchor β 0.5 (the composed ranking fused with the image-only one) and the image floor μ 1 (a hinge
# where the composed query retrieves that image worse than the reference alone), and at retrieval the grounding gate
# where the validation slice selects it (a query whose text picks out none of the reference's look-alikes is the
# image alone; the statistic with the higher validation AUC against a permutation null, seventh round; α by the sixth
# round's rule, no gate when every α lowers the validation floor R@1; θ calibrated on the same slice): its settings
# chosen on the triplets' validation slice by rules written before the runs, not on the benchmark
# (docs/ablations.md, fifth to seventh rounds). `scot_ungated` (evaluation only, when a gate was selected) is
# its weights without the gate, `scot_no_floor` the default before the floor; `scot_caption_retrieval` the one
# before (the image nearest to the caption alone); the paper's loss on text targets alone is `scot_text_only`, five
# flags away. The split reading, InfoNCE with caption negatives and the default without the anchor are in
# `make ablations`.
class CombinerSetting(NamedTuple):
    loss_type: str  # ScotConfig.loss_type
    retrieved_image_weight: float  # ScotTrainingArguments.retrieved_image_weight (target mixing)
    image_anchor_weight: float  # ScotConfig.image_anchor_weight β
    reference_weight: float  # DataArguments.retrieval_reference_weight
    image_floor_weight: float = 0.0  # ScotTrainingArguments.image_floor_weight μ
    # ScotTrainingArguments.grounding_gate_alpha (None: no gate); "select": the statistic and α chosen on the
    # validation slice by the seventh and sixth rounds' rules (grounding_gate_select), no gate included
    grounding_gate_alpha: float | str | None = None


COMBINERS = {"scot": CombinerSetting("scot", 0.5, 0.5, 0.5, 1.0, "select"),
             "scot_no_floor": CombinerSetting("scot", 0.5, 0.5, 0.5),
             "scot_caption_retrieval": CombinerSetting("scot", 0.5, 0.5, 0.0),
             "scot_text_only": CombinerSetting("scot", 0.0, 0.0, 0.0),
             "scot_infonce": CombinerSetting("infonce", 0.0, 0.0, 0.0)}
# The text novelty gate's α (docs/ablations.md, eighth round): the `scot_novelty_gate` row, the default's weights with
# the gate, which its rule did not adopt into the default
NOVELTY_GATE_ALPHA = 0.05
# The licences of the demo images, for the triplets' card
SOURCE_LICENSE = "see the demo data card: Tux Paint stamps GPL-2.0+, Open Clip Art CC0, Noto emoji OFL-1.1/Apache-2.0"


@dataclass
class DemoArguments:
    """The options of `python -m demo.run` (`HfArgumentParser` makes the command line from these fields)."""

    output_dir: str = field(default="outputs/demo", metadata={"help": "Where every stage caches its output."})
    scot_model_dir: str = field(default="scot-demo", metadata={"help": "where the trained model lands"})
    triplets_dir: str = field(default="scot-triplets", metadata={"help": "where the triplets land"})
    llm_rows: int = field(default=3200, metadata={"help": "captions the LLM writes triplets for"})
    generator_steps: int = field(default=30, metadata={"help": "LoRA steps on the seed triplets"})
    scot_epochs: int = field(default=20, metadata={"help": "Epochs of the Combiner's training."})


def stage(name: str) -> float:
    print(f"\n=== {name} ===", flush=True)
    return time.perf_counter()


def _done(started: float, what: str) -> None:
    print(f"    {what} ({time.perf_counter() - started:.0f} s)", flush=True)


def fresh_folder(folder: Path, key: str) -> bool:
    """True when `folder` was built from inputs with this `key`; otherwise empties it (stale) and returns False.
    Only a folder the demo wrote (its `.demo_key` marker) is ever emptied: anything else there is refused."""
    marker = folder / ".demo_key"
    if marker.is_file() and marker.read_text() == key:
        return True
    if marker.is_file():
        shutil.rmtree(folder)
    elif folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} holds files the demo did not write (no .demo_key marker): move them away "
                              "or choose another --output_dir.")
    return False


def mark_fresh(folder: Path, key: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".demo_key").write_text(key)


# -- 3. the benchmark ---------------------------------------------------------------------------------------------


def build_benchmark(output_dir: Path, data_key: str) -> dict[str, Path]:
    """The multi-kind benchmark (`demo.benchmark`) on the held-out stamps: `{kind: CIRR data_dir}`."""
    from PIL import Image

    from demo.benchmark import build_kinds_benchmark, load_kinds
    from demo.data import TINT_COLOURS, benchmark_stamps, prepare_image, tint

    folder = output_dir / "benchmark"
    if fresh_folder(folder, f"{data_key}:kinds-v1") and (folder / "kinds.json").is_file():
        return load_kinds(folder)
    mark_fresh(folder, f"{data_key}:kinds-v1")  # first: a run killed while building leaves a folder it may redo
    stamps = []
    for stamp in benchmark_stamps():
        with Image.open(stamp.path) as opened:
            stamps.append((Path(stamp.path).stem, opened.convert("RGBA"), stamp.caption))
    build_kinds_benchmark(stamps, lambda image, colour: prepare_image(tint(image, colour)), TINT_COLOURS, folder)
    return load_kinds(folder)


# -- 4. triplets --------------------------------------------------------------------------------------------------


def generation_inputs(data_dir: Path, output_dir: Path, llm_rows: int, seed: int = 0) -> Path:
    """The rows the LLM writes triplets for, as one parquet folder: `llm_rows` of the demo training rows with distinct
    captions (all of them when fewer), an equal share from each source so that no source dominates. Distinct first:
    generation skips a repeated caption (the LLM would write the same triplet), so a repeat would waste a share."""
    from datasets import concatenate_datasets

    from data_gen.prompts import normalize
    from demo.data import load_demo_dataset

    folder = output_dir / "generation-input" / "llm"
    if (folder / "rows.parquet").exists():
        return folder
    train = load_demo_dataset(data_dir)["train"].shuffle(seed=seed)
    first_of_caption = {}
    for index, caption in enumerate(train["caption"]):
        first_of_caption.setdefault(normalize(caption), index)
    train = train.select(sorted(first_of_caption.values()))
    by_source = {name: train.filter(lambda row, name=name: row["source"] == name)
                 for name in sorted(set(train["source"]))}
    # a source smaller than its share gives all its rows; the others share what it leaves
    shares, left = {}, llm_rows
    for position, (name, rows) in enumerate(sorted(by_source.items(), key=lambda item: len(item[1]))):
        shares[name] = min(len(rows), left // (len(by_source) - position))
        left -= shares[name]
    rows = concatenate_datasets([by_source[name].select(range(share)) for name, share in shares.items()])
    folder.mkdir(parents=True, exist_ok=True)
    rows.select_columns(["image", "caption", "source", "license"]).to_parquet(str(folder / "rows.parquet"))
    return folder


def generator_adapter(output_dir: Path, generator_steps: int) -> Path:
    """SmolLM2's LoRA adapter, tuned `generator_steps` steps on the seed triplets (reused when already there)."""
    from data_gen.finetune import FinetuneArguments, finetune

    adapter = output_dir / "generator-lora"
    key = f"steps={generator_steps}:lr=3e-4:kinds-v1"
    if not fresh_folder(adapter, key) or not (adapter / "adapter_config.json").exists():
        mark_fresh(adapter, key)  # first: a run killed while tuning leaves a folder the next run may empty
        # finetune's default precision: QLoRA on a GPU, full-precision LoRA on a CPU (where 4-bit is emulated)
        finetune(FinetuneArguments(output_dir=str(adapter), max_steps=generator_steps, per_device_train_batch_size=8,
                                   learning_rate=3e-4, logging_steps=5, seed=0))
    return adapter


def make_triplets(data_dir: Path, output_dir: Path, triplets_dir: Path, llm_rows: int, generator_steps: int,
                  data_key: str) -> dict:
    """The LLM's triplets for `llm_rows` captions (each row asked for a kind of change, drawn so that none
    dominates; a rejected answer asked once more, for another kind), the templates only where both are rejected,
    written to `triplets_dir` (one train split under one card, what `load_dataset("scot-triplets")` reads); returns
    its statistics."""
    from accelerate import PartialState

    from data_gen.dataset_io import merge_triplet_datasets
    from data_gen.fast_generation import generation_dtype
    from data_gen.generate import GenerationArguments, run_generation

    adapter = generator_adapter(output_dir, generator_steps)
    # greedy answers depend on the precision (bf16 changes near-ties): the dtype the engine will pick is in the key
    dtype = str(generation_dtype(PartialState().device)).removeprefix("torch.")
    key = f"{data_key}:{llm_rows}:{generator_steps}:kinds-v1:distinct:retries=1:{dtype}"
    for folder in ("generation-input", "triplets-llm"):
        if not fresh_folder(output_dir / folder, key):
            mark_fresh(output_dir / folder, key)
    llm_inputs = generation_inputs(data_dir, output_dir, llm_rows)
    llm_stats = run_generation(GenerationArguments(
        output_dir=str(output_dir / "triplets-llm"), dataset=str(llm_inputs), model="smollm2", adapter=str(adapter),
        # batch 96: 1.05x the tokens/s of batch 64 on 2 cores, as fast as 128 (docs/data_gen.md)
        engine="prefix_cache", batch_size=96, max_new_tokens=40, retries=1, fallback="templates", shard_size=400,
        source_name="demo",
        source_license=SOURCE_LICENSE))
    return merge_triplet_datasets(
        [output_dir / "triplets-llm"], triplets_dir, repo_or_folder="scot-triplets", pretty_name="SCOT demo triplets",
        engine=f"SmolLM2-135M + LoRA (prefix-cached batches) for {llm_stats['input_rows']} rows, a rejected answer "
               "asked again for another kind, templates where both were rejected")


# -- 5. SCOT ------------------------------------------------------------------------------------------------------


def train_scot(backbone_dir: Path, triplets_dir: Path, output_dir: Path, method: str, epochs: int, key: str) -> Path:
    """The Combiner `method` of `COMBINERS` trained on the cached embeddings of the triplets (reused when already
    there)."""
    from trainers.grounding_gate import GROUNDING_GATE_STATISTICS
    from trainers.train import finish_training

    (loss_type, retrieved_image_weight, image_anchor_weight, reference_weight, floor_weight,
     gate_alpha) = COMBINERS[method]
    run_dir = output_dir / f"combiner-{method}"
    key = f"{key}:{loss_type}:{retrieved_image_weight}:{image_anchor_weight}"
    if reference_weight:  # appended only when set: the folders of the other Combiners keep their keys
        key += f":reference={reference_weight}"
    if floor_weight:
        key += f":floor={floor_weight}"
    if gate_alpha is not None:
        key += f":gate={gate_alpha}"
    if gate_alpha == "select":  # the selection also chooses the statistic (seventh round)
        key += ":statistics=" + ",".join(GROUNDING_GATE_STATISTICS)
    if fresh_folder(run_dir, key) and (run_dir / "train_results.json").exists():
        return run_dir
    mark_fresh(run_dir, key)
    trainer = _scot_trainer(backbone_dir, triplets_dir, output_dir, method, epochs, run_dir)
    finish_training(trainer, trainer.train())
    return run_dir


def _scot_trainer(backbone_dir: Path, triplets_dir: Path, output_dir: Path, method: str, epochs: int, run_dir: Path):
    """The `ScotTrainer` of the Combiner `method` (its datasets: the cached triplets, 5% held out, seed 0)."""
    from trainers.train import build_trainer
    from trainers.training_args import DataArguments, ModelArguments, ScotTrainingArguments

    (loss_type, retrieved_image_weight, image_anchor_weight, reference_weight, floor_weight,
     gate_alpha) = COMBINERS[method]
    return build_trainer(
        ModelArguments(model_name_or_path=str(backbone_dir), text_pooling="mean", loss_type=loss_type,
                       image_anchor_weight=image_anchor_weight),
        DataArguments(eval_fraction=0.05, embedding_cache_dir=str(output_dir / "embedding-cache"),
                      retrieval_reference_weight=reference_weight),
        ScotTrainingArguments(output_dir=str(run_dir), dataset_name=str(triplets_dir), per_device_train_batch_size=256,
                              per_device_eval_batch_size=256, num_train_epochs=epochs, learning_rate=1e-4,
                              logging_steps=10, eval_strategy="epoch", save_strategy="no",
                              dataloader_pin_memory=False, seed=0, disable_tqdm=True,
                              retrieved_image_weight=retrieved_image_weight, image_floor_weight=floor_weight,
                              grounding_gate_alpha=None if gate_alpha == "select" else gate_alpha,
                              grounding_gate_select=gate_alpha == "select"),
    )


def add_novelty_gate(backbone_dir: Path, triplets_dir: Path, output_dir: Path, scot_dir: Path, epochs: int) -> Path:
    """The default's weights with the text novelty gate (docs/ablations.md, eighth round: not adopted by its rule),
    calibrated on the default's own training split and validation slice; an ablation row, saved beside it."""
    from modeling_scot import ScotModel, ScotProcessor
    from trainers.novelty_gate import calibrate_novelty_gate

    run_dir = output_dir / "combiner-scot_novelty_gate"
    key = f"{(scot_dir / '.demo_key').read_text()}:novelty={NOVELTY_GATE_ALPHA}"
    if fresh_folder(run_dir, key) and (run_dir / "model.safetensors").exists():
        return run_dir
    mark_fresh(run_dir, key)
    model = ScotModel.from_pretrained(scot_dir).eval()
    trainer = _scot_trainer(backbone_dir, triplets_dir, output_dir, "scot", epochs, run_dir)  # for its datasets
    gate = calibrate_novelty_gate(model, trainer.train_dataset, trainer.eval_dataset, NOVELTY_GATE_ALPHA, seed=0)
    logger.info("novelty gate on the default's weights: threshold %.3f, validation floor R@1 %.2f -> %.2f",
                gate["threshold"], gate["floor_R@1_ungated"], gate["floor_R@1_gated"])
    model.save_pretrained(run_dir)
    ScotProcessor.from_pretrained(scot_dir).save_pretrained(run_dir)
    return run_dir


# -- 6. evaluation and report -------------------------------------------------------------------------------------


def evaluate_all(combiner_dirs: dict[str, Path], kinds: dict[str, Path]) -> dict:
    """`{kind: {method: {metric: value}}}` on every kind of the benchmark, methods keyed as
    `demo.report.METHOD_NAMES`: the baselines on the SCOT model's encoder, and each trained Combiner."""
    from demo.report import BASELINES, METHOD_NAMES
    from modeling_scot import ScotModel, ScotProcessor
    from scot_core import encoder_fingerprint
    from scot_eval.evaluation import evaluate_prepared, prepare_benchmark

    def rounded(result) -> dict[str, float]:
        return {key: round(result.metrics[key], 2) for key in BENCHMARK_METRICS}

    processor = ScotProcessor.from_pretrained(combiner_dirs["scot"])
    combiners = {method: ScotModel.from_pretrained(folder) for method, folder in combiner_dirs.items()}
    if combiners["scot"].config.grounding_gate_neighbours:  # the default's weights without its grounding gate
        combiners["scot_ungated"] = ScotModel.from_pretrained(combiner_dirs["scot"], grounding_gate_neighbours=0)
    combiners = {method: combiners[method] for method in METHOD_NAMES if method in combiners}  # the report's order
    fingerprints = {encoder_fingerprint(model, processor) for model in combiners.values()}
    if len(fingerprints) != 1:  # the gallery embeddings are shared: every Combiner must sit on the same encoder
        raise RuntimeError(f"The demo's Combiners were trained on different encoders: {sorted(combiner_dirs)}")
    scot = combiners["scot"]
    metrics = {}
    for kind, data_dir in kinds.items():
        prepared = prepare_benchmark(scot, processor, "cirr", data_dir, "val", show_progress=False)
        metrics[kind] = {method: rounded(evaluate_prepared(scot, prepared, method, processor=processor))
                         for method in BASELINES}
        for method, model in combiners.items():
            metrics[kind][method] = rounded(evaluate_prepared(model, prepared, "scot", processor=processor))
    return metrics


def average_over_kinds(metrics: dict) -> dict:
    """`{method: {metric: mean over kinds}}`: every kind weighs the same, whatever its number of queries."""
    kinds = list(metrics)
    methods = metrics[kinds[0]]
    return {method: {key: round(sum(metrics[kind][method][key] for kind in kinds) / len(kinds), 2)
                     for key in methods[method]} for method in methods}


def write_model_card(scot_dir: Path, run_dir: Path, metrics: dict, triplet_stats: dict, backbone_report: dict) -> None:
    """scot-demo's README.md (`hub_cards`): the training record of `run_dir`, the benchmark `metrics`
    (`{kind: {method: {metric: value}}}`, all measured by `evaluate_all`), the model-index from the `scot` rows."""
    from demo.report import METHOD_NAMES
    from hub_cards import model_card_from_folder

    evaluations = [{"benchmark": "cirr", "split": "val", "method": method, "metrics": values,
                    "dataset_name": f"SCOT demo benchmark: {kind}", "dataset_type": f"scot-demo-{kind}",
                    "label": METHOD_NAMES[method]}
                   for kind, per_method in metrics.items() for method, values in per_method.items()]
    heldout = backbone_report.get("heldout", {})
    backbone = ""
    if "image_to_text" in heldout:
        backbone = (f" The demo backbone's held-out image → text retrieval: R@1 {heldout['image_to_text']['R@1']}, "
                    f"R@5 {heldout['image_to_text']['R@5']} over {heldout.get('captions')} captions.")
    description = (
        "This is the demo model `make demo` builds offline on CPU: the backbone is a `VisionTextDualEncoderModel` "
        "with a small vision tower trained here on captioned clip art, emoji and Tux Paint stamps and the frozen "
        f"all-MiniLM-L6-v2 text tower; the triplets are the {triplet_stats['kept_rows']} of `scot-triplets`. The "
        "benchmark is the demo's own: held-out stamps changed in five kinds of way (colour, count, an added object, "
        "background, orientation), scored with the CIRR protocol." + backbone)
    card = model_card_from_folder(
        scot_dir, training_folder=run_dir, model_name="scot-demo", repo_id="scot-demo", license="apache-2.0",
        dataset={"name": "scot-triplets"}, evaluations=evaluations, description=description,
        limitations=["A demonstration of the pipeline at 64 px on clip art, not a model for real photographs."],
    )
    card.save(scot_dir / "README.md")


def write_report(output_dir: Path, kinds: dict[str, Path], metrics: dict, triplet_stats: dict,
                 started: float) -> tuple[Path, str]:
    """`report.md`: the benchmark's kinds, the R@1 table per kind and averaged, the verdict per kind, every kind's
    full table and the retrieval grid; returns (path, verdict)."""
    from demo.report import kinds_table, metrics_table, verdicts

    summary = json.loads((next(iter(kinds.values())).parent / "kinds.json").read_text())
    counts = ", ".join(f"{kind} {summary[kind]['num_queries']} queries / {summary[kind]['num_images']} images"
                       for kind in kinds)
    verdict_lines = verdicts(metrics)
    per_kind = "\n\n".join(f"### {kind}\n\n{metrics_table(values)}" for kind, values in metrics.items())
    report = output_dir / "report.md"
    report.write_text(f"""# SCOT demo report

Benchmark: held-out Tux Paint stamps changed in {len(kinds)} kinds of way, one CIRR folder per kind ({counts}).
CIRR protocol: the reference is removed from each ranking; Rsubset ranks only the stamp's variants for that kind.
Percentages; "average" weighs every kind the same.

What the training data teaches: the demo backbone sees tinted stamps captioned with their colour, so colour is
grounded; the triplets change captions, never these images: {triplet_stats['kept_rows']} of them, by generator
{triplet_stats['per_generator']}, by kind of change {triplet_stats.get('per_kind', {})} (the LLM is asked for a kind
drawn evenly per row from the generation issue's general list of eleven kinds, which includes count, adding an
object, background and pose; the templates write colour, object and count swaps where its answer was rejected).
Nothing in them was written for the benchmark, whose stamps are in none of the training data: every kind but colour
(which the backbone's tinted stamps ground) is a transfer test.

R@1 per kind:

{kinds_table(metrics, "R@1")}

{chr(10).join("- " + line for line in verdict_lines)}

## Every metric, per kind

{per_kind}

![retrieval grid (colour kind)](retrieval_grid.png)

Total time of this run: {time.perf_counter() - started:.0f} s.
""")
    return report, "; ".join(verdict_lines)


def publish_model(model, processor, model_dir: Path) -> None:
    """Save the trained SCOT model and processor to `model_dir`, over an earlier demo model there (the same files are
    rewritten; nothing is deleted). A folder that is not a SCOT model is refused."""
    if model_dir.exists():
        config = model_dir / "config.json"
        if not config.is_file():
            raise FileExistsError(f"{model_dir} exists and holds no saved model: choose another --scot_model_dir.")
        if json.loads(config.read_text()).get("model_type") != "scot":
            raise FileExistsError(f"{model_dir} holds another kind of model: choose another --scot_model_dir.")
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)


# -- the pipeline -------------------------------------------------------------------------------------------------


def run_demo(args: DemoArguments) -> dict:
    """The six stages; returns what the summary prints."""
    from demo.backbone import train_demo_backbone
    from demo.data import build_demo_dataset

    started, output_dir, triplets_dir = time.perf_counter(), Path(args.output_dir), Path(args.triplets_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    t = stage("1/6 demo data (Debian packages -> captioned images)")
    # emoji sequences too (skin tones, genders, hair, professions, families, flags: CLDR names), issue 13
    data_stats = build_demo_dataset(output_dir / "data", emoji_sequences=True)
    data_key = data_stats["fingerprint"]
    _done(t, f"{output_dir / 'data'}: {json.dumps(data_stats.get('rows', data_stats), default=str)[:300]}")

    t = stage("2/6 demo backbone (frozen MiniLM text + small vision tower, LiT)")
    backbone_report = train_demo_backbone(output_dir / "data", output_dir / "backbone")
    _done(t, f"{output_dir / 'backbone'}")

    t = stage("3/6 demo CIR benchmark (held-out stamps, five kinds of change, CIRR format)")
    kinds = build_benchmark(output_dir, data_key)
    _done(t, ", ".join(str(folder) for folder in kinds.values()))

    t = stage("4/6 triplets (SmolLM2 + LoRA writes them, templates where it fails)")
    triplet_stats = make_triplets(output_dir / "data", output_dir, triplets_dir, args.llm_rows, args.generator_steps,
                                  data_key)
    _done(t, f"{triplets_dir}: {triplet_stats['kept_rows']} triplets, per generator {triplet_stats['per_generator']}, "
             f"per kind {triplet_stats.get('per_kind', {})}")

    t = stage("5/6 SCOT training (cached embeddings; the SCOT loss, and the comparison losses, same budget)")
    run_key = f"{backbone_report['fingerprint']}:{data_key}:{args.llm_rows}:{args.generator_steps}:{args.scot_epochs}"
    combiner_dirs = {method: train_scot(output_dir / "backbone", triplets_dir, output_dir, method, args.scot_epochs,
                                        run_key) for method in COMBINERS}
    combiner_dirs["scot_novelty_gate"] = add_novelty_gate(output_dir / "backbone", triplets_dir, output_dir,
                                                          combiner_dirs["scot"], args.scot_epochs)
    _done(t, ", ".join(str(folder) for folder in combiner_dirs.values()))

    t = stage("6/6 evaluation against the baselines, per kind, report")
    summary = evaluate_and_report(args, combiner_dirs, kinds, triplet_stats, backbone_report, started)
    _done(t, "evaluated")
    return summary


def evaluate_and_report(args: DemoArguments, combiner_dirs: dict[str, Path], kinds: dict[str, Path],
                        triplet_stats: dict, backbone_report: dict, started: float) -> dict:
    """Stage 6: metrics.json, the retrieval grid, scot-demo/ with its card, report.md."""
    from demo.report import retrieval_grid
    from modeling_scot import ScotModel, ScotProcessor
    from scot_eval.benchmarks import load_benchmark

    output_dir, model_dir, scot_dir = Path(args.output_dir), Path(args.scot_model_dir), combiner_dirs["scot"]
    metrics = evaluate_all(combiner_dirs, kinds)
    average = average_over_kinds(metrics)
    (output_dir / "metrics.json").write_text(json.dumps({"kinds": metrics, "average": average}, indent=2))
    (task,) = load_benchmark("cirr", kinds["colour"], "val")
    model, processor = ScotModel.from_pretrained(scot_dir), ScotProcessor.from_pretrained(scot_dir)
    grid = retrieval_grid(model, processor, task, output_dir / "retrieval_grid.png")
    publish_model(model, processor, model_dir)
    write_model_card(model_dir, scot_dir, metrics, triplet_stats, backbone_report)
    report, verdict = write_report(output_dir, kinds, metrics, triplet_stats, started)
    return {"metrics": metrics, "average": average, "verdict": verdict, "report": report, "grid": grid}


def parse_args(argv: list[str] | None = None) -> DemoArguments:
    import argparse

    from transformers import HfArgumentParser

    parser = HfArgumentParser(DemoArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    summary = run_demo(args)

    from demo.report import kinds_table

    print(f"\nSCOT demo done in {time.perf_counter() - started:.0f} s")
    print("R@1 per kind of change:\n" + kinds_table(summary["metrics"], "R@1"))
    print("\n" + summary["verdict"].replace("; ", "\n") + ".")
    print(f"report:  {summary['report']}\npicture: {summary['grid']}\n"
          f"metrics: {Path(args.output_dir) / 'metrics.json'}")
    print(f"model:   {args.scot_model_dir}/   (AutoModel.from_pretrained)\ntriplets: {args.triplets_dir}/   "
          "(load_dataset)")
    print("search it in a browser: make web-demo   (scot-search web, http://127.0.0.1:7860)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
