"""Train SCOT's Combiner on a triplet dataset.

    accelerate launch trainers/train.py configs/scot_blip2.yaml     # a YAML or JSON config file
    python trainers/train.py --model_name_or_path FOLDER --dataset_name DATA --output_dir OUT [...]

Input: a backbone (CLIP / BLIP-2 retrieval / VisionTextDualEncoder folder or hub id) or an existing SCOT folder, and a
triplet dataset `load_dataset` reads (local folder or hub id) with columns image, caption, modification,
modified_caption. Output (`output_dir`): the trained model + processor (loads with AutoModel / AutoProcessor),
its model card README.md (rewritten after the final evaluation, so its results describe the saved weights),
checkpoints, `loss_curve.json` (+ `loss_curve.png` when matplotlib is installed), `train_results.json`,
`eval_results.json`.

Steps: load the model, then (by default) encode every distinct image and text once into the embedding cache and
train on vectors; `--use_embedding_cache false` feeds raw images every step instead (for unfrozen encoders).
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# `python trainers/train.py` puts trainers/ first on sys.path; the package lives one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import transformers  # noqa: E402
from transformers import HfArgumentParser, TrainingArguments, set_seed  # noqa: E402

from modeling_scot import ScotConfig, ScotModel, ScotProcessor  # noqa: E402
from trainers.embedding_cache import EmbeddingCache, TripletColumns  # noqa: E402
from trainers.trainer import RawTripletCollator, ScotTrainer  # noqa: E402

logger = logging.getLogger("trainers.train")

# ScotConfig fields a run may set (for a new model) or override (the loss settings of an existing SCOT folder).
_LOSS_FIELDS = ("loss_type", "alpha_pos", "alpha_neg", "margin", "infonce_temperature")
_ARCHITECTURE_FIELDS = ("combiner_projection_dim", "combiner_hidden_dim", "combiner_dropout", "blip2_query_pooling",
                        "text_pooling", "freeze_encoder")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Backbone (CLIP, BLIP-2 retrieval, dual encoder) or SCOT folder."})
    loss_type: str | None = field(default=None, metadata={"help": "'scot' (paper, default) or 'infonce'."})
    alpha_pos: float | None = field(default=None, metadata={"help": "α_pos of Eq. 9 (default 10)."})
    alpha_neg: float | None = field(default=None, metadata={"help": "α_neg of Eq. 9 (default 0.1)."})
    margin: float | None = field(default=None, metadata={"help": "Negative margin λ of Eq. 6 (default 0.2)."})
    infonce_temperature: float | None = field(default=None, metadata={"help": "InfoNCE temperature (default 0.01)."})
    combiner_projection_dim: int | None = field(default=None, metadata={"help": "Combiner P (default 4 x embed_dim)."})
    combiner_hidden_dim: int | None = field(default=None, metadata={"help": "Combiner H (default 8 x embed_dim)."})
    combiner_dropout: float | None = field(default=None, metadata={"help": "Combiner dropout (default 0.5)."})
    blip2_query_pooling: str | None = field(default=None, metadata={"help": "BLIP-2: 'mean' (default) or 'first'."})
    text_pooling: str | None = field(default=None, metadata={"help": "Dual encoder text: 'pooler' or 'mean'."})
    freeze_encoder: bool | None = field(default=None, metadata={"help": "Keep the encoder frozen (default true)."})


@dataclass
class DataArguments:
    dataset_name: str = field(metadata={"help": "Triplet dataset for load_dataset: a local folder or a hub id."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "load_dataset config name."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Held-out split; else eval_fraction of train."})
    eval_fraction: float = field(default=0.05, metadata={"help": "Held-out slice of the train split (0 = none)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    image_column: str = field(default="image")
    caption_column: str = field(default="caption")
    modification_column: str = field(default="modification")
    modified_caption_column: str = field(default="modified_caption")
    use_embedding_cache: bool = field(default=True, metadata={"help": "Encode once and train on cached vectors."})
    embedding_cache_dir: str = field(default="~/.cache/scot/embeddings", metadata={"help": "Where the cache lives."})
    encode_batch_size: int = field(default=64, metadata={"help": "Batch size when building the cache."})
    cir_benchmark: str | None = field(default=None, metadata={"help": "Also evaluate on fashioniq | cirr | circo."})
    cir_data_dir: str | None = field(default=None, metadata={"help": "The benchmark's folder (official layout)."})
    cir_split: str = field(default="val", metadata={"help": "The benchmark split evaluated during training."})


@dataclass
class ScotTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's optimisation defaults (AdamW, lr 1e-4) and the settings SCOT needs."""

    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (paper: 1e-4)."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (paper: AdamW)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept: SCOT batches are not model kwargs."})


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, ScotTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def load_model_and_processor(model_args: ModelArguments):
    """A SCOT folder is loaded (its loss settings may be overridden); anything else is a backbone to wrap."""
    settings = {name: getattr(model_args, name) for name in _LOSS_FIELDS + _ARCHITECTURE_FIELDS}
    settings = {name: value for name, value in settings.items() if value is not None}
    config_file = Path(model_args.model_name_or_path) / "config.json"
    is_scot = config_file.exists() and json.loads(config_file.read_text()).get("model_type") == ScotConfig.model_type
    if is_scot:
        fixed = sorted(set(settings) & set(_ARCHITECTURE_FIELDS))
        if fixed:
            raise ValueError(f"{model_args.model_name_or_path} is a trained SCOT model: its architecture ({fixed}) "
                             "cannot change; start from its backbone instead.")
        model = ScotModel.from_pretrained(model_args.model_name_or_path)
        for name, value in settings.items():
            setattr(model.config, name, value)
        processor = ScotProcessor.from_pretrained(model_args.model_name_or_path)
    else:
        model = ScotModel.from_backbone(model_args.model_name_or_path, **settings)
        processor = ScotProcessor.from_backbone(model_args.model_name_or_path)
    return model, processor


def load_triplets(data_args: DataArguments, seed: int):
    from datasets import load_dataset

    raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    if data_args.train_split not in raw:
        raise ValueError(f"{data_args.dataset_name} has no split {data_args.train_split!r}; found {list(raw)}.")
    train = raw[data_args.train_split]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    evaluation = None
    if data_args.eval_split:
        if data_args.eval_split not in raw:
            raise ValueError(f"{data_args.dataset_name} has no split {data_args.eval_split!r}; found {list(raw)}.")
        evaluation = raw[data_args.eval_split]
    elif data_args.eval_fraction > 0:
        parts = train.train_test_split(test_size=data_args.eval_fraction, seed=seed)
        train, evaluation = parts["train"], parts["test"]
    return train, evaluation


def save_loss_curve(log_history: list[dict], output_dir: str) -> None:
    """`loss_curve.json` (step, loss / eval_loss) and, when matplotlib is installed, `loss_curve.png`."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evaluation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    Path(output_dir, "loss_curve.json").write_text(json.dumps({"train": train, "eval": evaluation}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    if train:
        axis.plot(*zip(*train), label="train")
    if evaluation:
        axis.plot(*zip(*evaluation), marker="o", label="eval")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(Path(output_dir, "loss_curve.png"), dpi=120)
    plt.close(figure)


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: ScotTrainingArguments,
                  callbacks=None) -> ScotTrainer:
    """Model, data (cached embeddings or raw rows) and the `ScotTrainer` for one run."""
    set_seed(training_args.seed)
    model, processor = load_model_and_processor(model_args)
    columns = TripletColumns(image=data_args.image_column, caption=data_args.caption_column,
                             modification=data_args.modification_column,
                             modified_caption=data_args.modified_caption_column)
    train_rows, eval_rows = load_triplets(data_args, training_args.seed)
    columns.check(train_rows)

    if data_args.use_embedding_cache:
        if not model.config.freeze_encoder:
            raise ValueError("use_embedding_cache needs a frozen encoder: set freeze_encoder true or turn the cache off.")
        # the main process encodes; the others then find the finished cache entry on disk
        with training_args.main_process_first(desc="embedding cache"):
            train_dataset = _cached_dataset(model, processor, train_rows, columns, data_args)
            eval_dataset = (_cached_dataset(model, processor, eval_rows, columns, data_args)
                            if eval_rows is not None else None)
        data_collator = None  # rows are tensors already: the default collator stacks them
    else:
        train_dataset, eval_dataset = train_rows, eval_rows
        data_collator = RawTripletCollator(processor, columns)

    cir_benchmark = None
    if data_args.cir_benchmark:
        if not data_args.cir_data_dir:
            raise ValueError("cir_benchmark needs cir_data_dir: the benchmark's folder in its official layout.")
        cir_benchmark = {"benchmark": data_args.cir_benchmark, "data_dir": data_args.cir_data_dir,
                         "split": data_args.cir_split, "method": "scot"}

    return ScotTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        processing_class=processor,
        cir_benchmark=cir_benchmark,
        dataset_name=data_args.dataset_name,
        callbacks=callbacks,
    )


def _cached_dataset(model, processor, rows, columns, data_args):
    cache = EmbeddingCache.build_or_load(model, processor, rows, columns, cache_dir=data_args.embedding_cache_dir,
                                         batch_size=data_args.encode_batch_size)
    skipped = {reason: count for reason, count in cache.skipped.items() if count}
    logger.info("embedding cache %s: %d rows, %d distinct images, %d distinct texts%s", cache.folder, len(cache),
                cache.manifest["num_distinct_images"], cache.manifest["num_distinct_texts"],
                f", skipped {skipped}" if skipped else "")
    return cache.as_dataset()


def main(argv=None):
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        handlers=[logging.StreamHandler(sys.stdout)])
    transformers.utils.logging.set_verbosity_warning()
    trainer = build_trainer(model_args, data_args, training_args)
    data_collator, eval_dataset = trainer.data_collator, trainer.eval_dataset
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # model + processor (+ a model card): AutoModel / AutoProcessor load output_dir
    result.metrics["train_samples"] = len(trainer.train_dataset)  # transformers examples' convention, read by the card
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if eval_dataset is not None:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    # the card again, now that the final evaluation is logged: its numbers describe the saved weights
    trainer.write_model_card()
    if trainer.is_world_process_zero():
        save_loss_curve(trainer.state.log_history, training_args.output_dir)
        if isinstance(data_collator, RawTripletCollator) and data_collator.skipped:
            logger.warning("skipped %d rows with an unreadable image or an empty text", data_collator.skipped)
        logger.info("trained model, processor and loss curve in %s", training_args.output_dir)
    return trainer


if __name__ == "__main__":
    main()
