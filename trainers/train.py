"""Train SCOT's Combiner on a triplet dataset, or either stage of a Map-to-Compose (pseudo-word) model.

    scot-train configs/scot_blip2.yaml                                   # a YAML or JSON config file
    accelerate launch -m trainers.train configs/scot_blip2.yaml          # one or many GPUs (or trainers/train.py)
    scot-train CONFIG --resume_from_checkpoint OUT/checkpoint-500        # a config file, then flags that override it
    scot-train --model_name_or_path FOLDER --dataset_name DATA --output_dir OUT [...]
    # Map-to-Compose (trainers/pseudo_word.py): stage 1 on image-caption pairs, then stage 2 on the triplets
    scot-train --model_name_or_path BACKBONE --composer pseudo_word --composer_stage mapping --dataset_name PAIRS \
        --output_dir OUT1
    scot-train --model_name_or_path OUT1 --composer_stage composing --dataset_name TRIPLETS --output_dir OUT2

The script imports the installed package (`pip install -e ".[train]"`) and never edits `sys.path`; `-m trainers.train`
is the form to prefer under `accelerate launch` (run by its path, Python puts `trainers/` itself first on the path).

Input: a backbone (CLIP / BLIP-2 retrieval / VisionTextDualEncoder folder or hub id) or a saved SCOT model (folder or
hub id), and a triplet dataset `load_dataset` reads (local folder or hub id) with columns image, caption,
modification, modified_caption. Output (`output_dir`): the trained model + processor (loads with AutoModel /
AutoProcessor), its model card README.md (rewritten after the final evaluation, so its results describe the saved
weights), checkpoints, `loss_curve.json` (+ `loss_curve.png` when matplotlib is installed), `train_results.json`,
`eval_results.json`. Rerunning the same command resumes from the last `checkpoint-*` in `output_dir` (as the
transformers example scripts do); `--overwrite_output_dir` starts at step 0 instead.

Steps: parse the arguments, load the model, then (by default) encode every distinct image and text once into the
embedding cache and train on vectors (`--use_embedding_cache false` feeds raw images every step instead, for
unfrozen encoders), train, and `finish_training`: save, record the results, evaluate, write the card.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import transformers
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import TrainOutput

from scot_core import load_scot_or_backbone
from trainers.checkpoints import checkpoint_problem, last_complete_checkpoint
from trainers.embedding_cache import EmbeddingCache, TripletColumns, describe_skipped
from trainers.grounding_gate import GROUNDING_GATE_STATISTICS, calibrate_model_gate, select_model_gate
from trainers.novelty_gate import calibrate_novelty_gate
from trainers.pseudo_word import (
    CachedComposingDataset,
    ImageCaptionPairs,
    ModificationCollator,
    PseudoWordComposingTrainer,
    PseudoWordMappingTrainer,
    mapping_columns,
)
from trainers.trainer import RawTripletCollator, ScotTrainer, select_trainable_rows
from trainers.training_args import DataArguments, ModelArguments, ScotTrainingArguments

__all__ = ["DataArguments", "ModelArguments", "ScotTrainingArguments", "build_trainer", "finish_training", "main",
           "parse_args"]

logger = logging.getLogger("trainers.train")

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
ARGUMENT_CLASSES = (ModelArguments, DataArguments, ScotTrainingArguments)


# -- arguments --------------------------------------------------------------------------------------------------------


def read_config_file(path: str | os.PathLike) -> dict:
    """The settings of a YAML or JSON config file, or a ValueError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"Cannot read the config file {str(path)!r}: {error.strerror or error}.") from None
    if path.suffix == ".json":
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"The config file {str(path)!r} is not valid JSON: {error}") from None
    else:
        import yaml

        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"The config file {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(config, dict) or not config:
        raise ValueError(f"The config file {str(path)!r} holds no settings: expected a mapping of argument names "
                         "to values (model_name_or_path, dataset_name, output_dir, ...).")
    return config


def _use_config_as_defaults(parser: HfArgumentParser, config: dict, source: str) -> None:
    """Make the config file's values the parser's defaults (flags given after it still override them), as TRL's
    `TrlParser.set_defaults_with_config` does; an argument the file sets is no longer required on the command line."""
    actions = {action.dest: action for action in parser._actions if action.dest in config}
    unknown = sorted(set(config) - set(actions))
    if unknown:
        raise ValueError(f"The config file {source!r} sets {unknown}, which are not arguments of "
                         f"{', '.join(cls.__name__ for cls in ARGUMENT_CLASSES)}.")
    for name, value in config.items():
        action = actions[name]
        if callable(action.type) and isinstance(value, (str, int, float, bool)):
            try:  # argparse converts a string default with action.type later; check here to name the file
                action.type(str(value))
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                raise ValueError(f"The config file {source!r} sets {name}: {value!r}, which is not a valid "
                                 f"{getattr(action.type, '__name__', 'value')} for it.") from None
        for same_dest in (a for a in parser._actions if a.dest == name):  # `--x` and its `--no_x` complement
            same_dest.default = value
            same_dest.required = False


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, ScotTrainingArguments]:
    """`[CONFIG] [--flag value ...]`: a YAML/JSON config file, flags, or both; a flag overrides the file's value."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        config_file = argv.pop(0)
        _use_config_as_defaults(parser, read_config_file(config_file), config_file)
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


def configure_logging(training_args: ScotTrainingArguments) -> None:
    """Only the main process logs at INFO: transformers at `get_process_log_level()` (`log_level` on the main process,
    `log_level_replica`, warning, on the others), as the transformers example scripts do; this package's loggers at
    INFO on the main process unless `log_level` says otherwise, at the replica level on the others."""
    log_level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout)])
    own_level = logging.INFO if training_args.should_log and training_args.log_level == "passive" else log_level
    for package in ("trainers", "scot_core", "scot_eval"):
        logging.getLogger(package).setLevel(own_level)
    transformers.utils.logging.set_verbosity(log_level)


def checkpoint_to_resume(training_args: ScotTrainingArguments) -> str | None:
    """`resume_from_checkpoint` when given (refused, naming the problem, when it is incomplete); else the last
    complete `checkpoint-*` in `output_dir` (a rerun of the same command continues where it stopped; incomplete ones,
    from a save that ran out of disk or was killed, are skipped with a warning), unless `overwrite_output_dir`."""
    if training_args.resume_from_checkpoint:
        problem = checkpoint_problem(training_args.resume_from_checkpoint)
        if problem is not None:
            raise ValueError(f"Cannot resume from {training_args.resume_from_checkpoint!r}: {problem}.")
        return training_args.resume_from_checkpoint
    output_dir = training_args.output_dir
    last = last_complete_checkpoint(output_dir)
    if last is None:
        return None
    if training_args.overwrite_output_dir:
        logger.warning("overwrite_output_dir: starting at step 0; the checkpoints already in %s stay until the new "
                       "run's checkpoints replace or rotate them.", output_dir)
        return None
    logger.info("Resuming from %s, the last complete checkpoint in %s (pass --overwrite_output_dir to start over).",
                last, output_dir)
    return last


# -- model and data -------------------------------------------------------------------------------------------------


def load_triplets(dataset_name: str, data_args: DataArguments, seed: int):
    """(train rows, held-out rows or None) of the triplet dataset. A local folder that data_gen records as incomplete
    (a generation run killed or still running) is refused, one without any record is read with a loud warning."""
    from datasets import load_dataset

    from data_gen.dataset_io import check_complete

    if os.path.isdir(dataset_name):
        check_complete(dataset_name)
    raw = load_dataset(dataset_name, data_args.dataset_config_name)
    for split in (data_args.train_split, data_args.eval_split):
        if split and split not in raw:
            raise ValueError(f"{dataset_name} has no split {split!r}; found {list(raw)}.")
    train = raw[data_args.train_split]
    if data_args.exclude_kinds:
        train = without_kinds(train, data_args.kind_column, data_args.exclude_kinds,
                              f"The {data_args.train_split!r} split of {dataset_name}")
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.eval_split:
        return train, raw[data_args.eval_split]
    if data_args.eval_fraction > 0:
        parts = train.train_test_split(test_size=data_args.eval_fraction, seed=seed)
        return parts["train"], parts["test"]
    return train, None


def triplet_columns(data_args: DataArguments) -> TripletColumns:
    return TripletColumns(image=data_args.image_column, caption=data_args.caption_column,
                          modification=data_args.modification_column,
                          modified_caption=data_args.modified_caption_column)


def without_kinds(rows, kind_column: str, kinds: list[str], what: str):
    """`rows` (a `datasets.Dataset`) without the triplets whose `kind_column` is one of `kinds`; a clear error when
    the column is missing, a kind never occurs, or nothing is left."""
    if kind_column not in rows.column_names:
        raise ValueError(f"{what} has no column {kind_column!r} to leave kinds of change out by; its columns: "
                         f"{rows.column_names}. Set kind_column, or leave exclude_kinds empty.")
    present = set(rows[kind_column])
    missing = sorted(set(kinds) - present)
    if missing:
        raise ValueError(f"exclude_kinds {missing} never occur in {what}'s {kind_column!r} column; it holds "
                         f"{sorted(str(kind) for kind in present)}.")
    excluded = set(kinds)
    kept = rows.filter(lambda kind: kind not in excluded, input_columns=kind_column)
    if not len(kept):
        raise ValueError(f"Leaving out {sorted(excluded)} leaves no rows of {what} to train on.")
    return kept


def require_rows(kept: int, skipped: dict[str, int], what: str) -> None:
    """A clear error, with the counts by reason, when every row of `what` was skipped (instead of torch's
    `num_samples=0` from the sampler)."""
    if kept:
        return
    total = sum(skipped.values())
    if not total:
        raise ValueError(f"{what} has no rows to train on.")
    raise ValueError(f"{what} has no row to train on: all {total} rows were skipped ({describe_skipped(skipped)}). "
                     "Check the image and text columns (image_column, caption_column, modification_column, "
                     "modified_caption_column).")


def _cached_rows(model, processor, rows, columns: TripletColumns, data_args: DataArguments,
                 what: str) -> EmbeddingCache:
    cache = EmbeddingCache.build_or_load(model, processor, rows, columns, cache_dir=data_args.embedding_cache_dir,
                                         batch_size=data_args.encode_batch_size)
    skipped = describe_skipped(cache.skipped)
    logger.info("embedding cache %s: %d rows, %d distinct images, %d distinct texts%s", cache.folder, len(cache),
                cache.manifest["num_distinct_images"], cache.manifest["num_distinct_texts"],
                f", skipped {skipped}" if skipped else "")
    require_rows(len(cache), cache.skipped, what)
    return cache


def _raw_dataset(rows, columns: TripletColumns, what: str):
    rows, skipped = select_trainable_rows(rows, columns)
    if any(skipped.values()):
        logger.warning("%s: skipped %d rows before training (%s)", what, sum(skipped.values()),
                       describe_skipped(skipped))
    require_rows(len(rows), skipped, what)
    return rows


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: ScotTrainingArguments,
                  callbacks=None) -> ScotTrainer:
    """Model, data (cached embeddings or raw rows) and the `ScotTrainer` for one run."""
    if not training_args.dataset_name:
        raise ValueError("dataset_name is required: the triplet dataset to train on (a folder or a hub id).")
    set_seed(training_args.seed)
    settings = dataclasses.asdict(model_args)
    # on the training device already, so that the embedding cache is encoded there, not on the CPU
    model, processor, _ = load_scot_or_backbone(settings.pop("model_name_or_path"), device=training_args.device,
                                                config_overrides=settings)
    columns = triplet_columns(data_args)
    train_rows, eval_rows = load_triplets(training_args.dataset_name, data_args, training_args.seed)
    train_name = f"The {data_args.train_split!r} split of {training_args.dataset_name}"
    eval_name = (f"The {data_args.eval_split!r} split of {training_args.dataset_name}" if data_args.eval_split
                 else f"The held-out part of {training_args.dataset_name}")
    gate_on = (training_args.grounding_gate_alpha is not None or training_args.grounding_gate_select
               or training_args.novelty_gate_alpha is not None)
    if gate_on and (
            not data_args.use_embedding_cache or eval_rows is None or training_args.composer_stage is not None):
        raise ValueError("grounding_gate_alpha / grounding_gate_select / novelty_gate_alpha calibrate a gate on a "
                         "Combiner's cached validation slice: it needs "
                         "use_embedding_cache true and a held-out split (eval_split or eval_fraction > 0), and no "
                         "composer_stage.")
    if _check_composer_stage(model, training_args.composer_stage) is not None:
        return _build_pseudo_word_trainer(model, processor, (train_rows, train_name), (eval_rows, eval_name), columns,
                                          data_args, training_args, callbacks)
    columns.check(train_rows)

    if data_args.use_embedding_cache:
        if not model.config.freeze_encoder:
            raise ValueError("use_embedding_cache needs a frozen encoder: set freeze_encoder true or turn the cache "
                             "off.")
        if not model.composer_accepts_text_embeds:
            raise ValueError(f"{type(model).__name__}'s composer reads the modification's tokens, so it cannot train "
                             "on cached text embeddings: set use_embedding_cache false.")
        # the main process encodes; the others then find the finished cache entry on disk
        with training_args.main_process_first(desc="embedding cache"):
            train_cache = _cached_rows(model, processor, train_rows, columns, data_args, train_name)
            eval_cache = (_cached_rows(model, processor, eval_rows, columns, data_args, eval_name)
                          if eval_rows is not None else None)
        # image-derived targets of both splits come from the training images, as a user's gallery would
        reference_weight = data_args.retrieval_reference_weight
        train_dataset = train_cache.as_dataset(data_args.target, with_probes=training_args.retrieved_image_weight > 0,
                                               reference_weight=reference_weight)
        eval_dataset = (eval_cache.as_dataset(data_args.target, target_gallery=train_cache, with_probes=True,
                                              reference_weight=reference_weight)
                        if eval_cache is not None else None)
        data_collator = None  # rows are tensors already: the default collator stacks them
    else:
        if data_args.target != "text" or training_args.retrieved_image_weight > 0:
            raise ValueError(f"target {data_args.target!r} with retrieved_image_weight "
                             f"{training_args.retrieved_image_weight} needs the embedding cache (use_embedding_cache "
                             "true): image-derived targets are computed from the cached image embeddings.")
        train_dataset = _raw_dataset(train_rows, columns, train_name)
        eval_dataset = _raw_dataset(eval_rows, columns, eval_name) if eval_rows is not None else None
        data_collator = RawTripletCollator(processor, columns)

    return ScotTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                       data_collator=data_collator, processing_class=processor, callbacks=callbacks)


def cached_held_out_dataset(trainer: ScotTrainer, rows, data_args: DataArguments, what: str):
    """Triplet `rows` outside the trainer's data (e.g. the kinds of change `exclude_kinds` left out) as a cached
    dataset with the validation probes, built as the trainer's validation slice is: the same encoder and cache, its
    image-derived targets and probes from the trainer's training images."""
    if not hasattr(trainer.train_dataset, "cache"):
        raise ValueError("cached_held_out_dataset needs a trainer on the embedding cache (use_embedding_cache true).")
    columns = triplet_columns(data_args)
    columns.check(rows)
    model = trainer.accelerator.unwrap_model(trainer.model)
    cache = _cached_rows(model, trainer.processing_class, rows, columns, data_args, what)
    return cache.as_dataset(data_args.target, target_gallery=trainer.train_dataset.cache, with_probes=True,
                            reference_weight=data_args.retrieval_reference_weight)


def _check_composer_stage(model, stage: str | None) -> str | None:
    """`stage`, after checking that it suits the model: unset for a Combiner, required for a pseudo-word model."""
    if model.config.composer == "combiner":
        if stage is not None:
            raise ValueError(f"composer_stage {stage!r} is for a pseudo-word model (composer pseudo_word); this model "
                             "composes with the Combiner: leave composer_stage unset.")
        return None
    if stage is None:
        raise ValueError("A pseudo-word model (Map-to-Compose) trains in two stages: set composer_stage 'mapping' "
                         "(stage 1, on image-caption pairs) or 'composing' (stage 2, on triplets, from the stage-1 "
                         "model).")
    if stage == "mapping" and model.config.pseudo_word_lora_state == "active":
        raise ValueError("composer_stage 'mapping' trains the mapping network of a model without active LoRA "
                         "adapters; this one is a stage-2 checkpoint: resume its composing stage instead.")
    return stage


def _build_pseudo_word_trainer(model, processor, train: tuple, held_out: tuple, columns: TripletColumns,
                               data_args: DataArguments, training_args: ScotTrainingArguments,
                               callbacks) -> ScotTrainer:
    """The trainer of one Map-to-Compose stage (`trainers.pseudo_word`) on the embedding cache; `train` and
    `held_out` are (rows or None, their name for messages)."""
    (train_rows, train_name), (eval_rows, eval_name) = train, held_out
    stage = training_args.composer_stage
    if not data_args.use_embedding_cache:
        raise ValueError(f"composer_stage {stage!r} trains on the embedding cache (the image side is frozen and "
                         "cached): set use_embedding_cache true.")
    if not model.config.freeze_encoder:
        raise ValueError("A pseudo-word model's stages train with the encoder frozen (stage 2 adds LoRA adapters "
                         "to it): set freeze_encoder true.")
    if stage == "mapping" and (data_args.target != "text" or training_args.retrieved_image_weight > 0):
        raise ValueError("target and retrieved_image_weight choose stage 2's supervision; composer_stage 'mapping' "
                         "aligns the pseudo words with the image and its caption.")
    stage_columns = mapping_columns(columns) if stage == "mapping" else columns
    stage_columns.check(train_rows)
    # the caches hold the frozen encoder's outputs: encoded before stage 2's adapters exist (their random init is no
    # part of the cache key, so every seed and every resume reuses one entry)
    with training_args.main_process_first(desc="embedding cache"):
        train_cache = _cached_rows(model, processor, train_rows, stage_columns, data_args, train_name)
        eval_cache = (_cached_rows(model, processor, eval_rows, stage_columns, data_args, eval_name)
                      if eval_rows is not None else None)
    if stage == "mapping":
        train_dataset = ImageCaptionPairs(train_cache)
        eval_dataset = ImageCaptionPairs(eval_cache) if eval_cache is not None else None
        return PseudoWordMappingTrainer(model=model, args=training_args, train_dataset=train_dataset,
                                        eval_dataset=eval_dataset, processing_class=processor, callbacks=callbacks)
    if model.config.pseudo_word_lora_state != "active":
        # LoRA's A starts random: seeded here, so its start does not depend on whether the cache was just encoded
        # (every DataLoader draws from the global RNG) or read back
        set_seed(training_args.seed)
        model.add_composer_adapters()
        model.to(training_args.device)  # the new adapter weights are created on the CPU
    reference_weight = data_args.retrieval_reference_weight
    train_dataset = CachedComposingDataset.from_cache(
        train_cache, train_rows, columns.modification, target=data_args.target,
        with_probes=training_args.retrieved_image_weight > 0, reference_weight=reference_weight)
    eval_dataset = (CachedComposingDataset.from_cache(eval_cache, eval_rows, columns.modification,
                                                      target=data_args.target, target_gallery=train_cache,
                                                      with_probes=True, reference_weight=reference_weight)
                    if eval_cache is not None else None)
    return PseudoWordComposingTrainer(model=model, args=training_args, train_dataset=train_dataset,
                                      eval_dataset=eval_dataset, data_collator=ModificationCollator(processor),
                                      processing_class=processor, callbacks=callbacks)


# -- after training -------------------------------------------------------------------------------------------------


def save_loss_curve(log_history: list[dict], output_dir: str) -> None:
    """`loss_curve.json` (step, loss / eval_loss) and, when matplotlib is installed, `loss_curve.png`."""
    from scot_core import atomic_write_json

    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evaluation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    atomic_write_json(Path(output_dir, "loss_curve.json"), {"train": train, "eval": evaluation}, indent=1)
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


def finish_training(trainer: ScotTrainer, train_result: TrainOutput) -> dict[str, dict[str, float]]:
    """What follows `trainer.train()`: save the model and processor (with a card), record `train_results.json` and
    `trainer_state.json`, evaluate the saved weights on the held-out set (`eval_results.json`), rewrite the card with
    that evaluation, and write the loss curve. Returns `{"train": metrics, "eval": metrics}` (eval empty without a
    held-out set)."""
    output_dir = trainer.args.output_dir
    # Map-to-Compose's stage 2: fold the LoRA adapters into the text encoder, so the saved model needs no peft (the
    # checkpoints kept them, to resume); a no-op for a Combiner or stage 1
    merged = trainer.accelerator.unwrap_model(trainer.model).merge_composer_adapters()
    if merged:
        logger.info("merged the LoRA adapters of %d layers into the text encoder", merged)
    gate = {}
    if trainer.args.grounding_gate_alpha is not None:  # before saving: the gate lives in the saved config
        gate = calibrate_model_gate(trainer.accelerator.unwrap_model(trainer.model), trainer.eval_dataset,
                                    trainer.train_dataset.cache.image_embeds, trainer.args.grounding_gate_alpha,
                                    seed=trainer.args.seed)
        logger.info("grounding gate: threshold %.3f, %.1f%% of the validation queries answered by the image alone",
                    gate["threshold"], 100 * gate["gated_fraction"])
    elif trainer.args.grounding_gate_select:
        gate = select_model_gate(trainer.accelerator.unwrap_model(trainer.model), trainer.eval_dataset,
                                 trainer.train_dataset.cache.image_embeds, seed=trainer.args.seed)
        chosen = ", ".join(f"{name} AUC {gate[f'auc_{name}']:.3f}" for name in GROUNDING_GATE_STATISTICS)
        statistic = next(name for name in GROUNDING_GATE_STATISTICS if gate[f"statistic_{name}"])
        if gate["selected"]:
            logger.info("grounding gate selected on validation: statistic %s (%s), alpha %s, threshold %.3f, %.1f%% "
                        "of the validation queries answered by the image alone", statistic, chosen, gate["alpha"],
                        gate["threshold"], 100 * gate["gated_fraction"])
        else:
            logger.info("grounding gate: statistic %s (%s); no alpha keeps the validation floor R@1 (%.2f ungated), "
                        "so no gate", statistic, chosen, gate["floor_R@1_ungated"])
    novelty = {}
    if trainer.args.novelty_gate_alpha is not None:  # after the grounding gate: its recalls are without this one
        model = trainer.accelerator.unwrap_model(trainer.model)
        novelty = calibrate_novelty_gate(model, trainer.train_dataset, trainer.eval_dataset,
                                         trainer.args.novelty_gate_alpha, seed=trainer.args.seed)
        logger.info("text novelty gate: threshold %.3f (cosine to the k = %d nearest of %d training texts), %.1f%% "
                    "of the validation queries answered by the image alone; validation floor R@1 %.2f -> %.2f",
                    novelty["threshold"], model.config.novelty_gate_neighbours,
                    novelty["bank_size"], 100 * novelty["gated_fraction"],
                    novelty["floor_R@1_ungated"], novelty["floor_R@1_gated"])
    trainer.save_model()  # model + processor (+ a model card): AutoModel / AutoProcessor load output_dir
    train_metrics = {**train_result.metrics, "train_samples": len(trainer.train_dataset)}  # the examples' convention
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()
    eval_metrics = {}
    if trainer.eval_dataset is not None:
        eval_metrics = {**trainer.evaluate(), "eval_samples": len(trainer.eval_dataset)}
        eval_metrics.update({f"eval_grounding_gate_{name}": value for name, value in gate.items()})
        eval_metrics.update({f"eval_novelty_gate_{name}": value for name, value in novelty.items()})
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
    # the card again, now that the final evaluation is logged: its numbers describe the saved weights
    trainer.write_model_card()
    if trainer.is_world_process_zero():
        save_loss_curve(trainer.state.log_history, output_dir)
        collator = trainer.data_collator
        if isinstance(collator, RawTripletCollator) and any(collator.skipped.values()):
            logger.warning("skipped %s rows while training (counted each time they came up)",
                           describe_skipped(collator.skipped))
        logger.info("trained model, processor and loss curve in %s", output_dir)
    return {"train": train_metrics, "eval": eval_metrics}


def main(argv: list[str] | None = None) -> None:
    """`scot-train` / `python -m trainers.train`: one training run, numbered steps as in the transformers examples."""
    # 1. arguments (a config file and/or flags) and logging
    model_args, data_args, training_args = parse_args(argv)
    configure_logging(training_args)
    # 2. where to start: an explicit checkpoint, the last one in output_dir, or step 0
    checkpoint = checkpoint_to_resume(training_args)
    # 3. model, data (the embedding cache) and trainer
    trainer = build_trainer(model_args, data_args, training_args)
    # 4. train, then save, evaluate and write the card
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    finish_training(trainer, train_result)


if __name__ == "__main__":
    main()
