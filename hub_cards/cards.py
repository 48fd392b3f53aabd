"""Model and dataset cards for SCOT, rendered with huggingface_hub's `ModelCard` / `DatasetCard` from Jinja templates.

Everything here takes plain data (a config's `to_dict()`, `TrainingArguments.to_dict()`, `Trainer` log history, the
statistics `data_gen` counts) and the evaluation's `EvaluationResult` (or its dict form, `metrics.json`), so the
module needs only huggingface_hub, jinja2 and the pure-Python `scot_eval.results`: trainers, data_gen and the demo
call it, it never imports them.

Only measured numbers go in: a model-index entry is made from an evaluation result of the model itself (method
`scot`); with none, the card has no model-index and says the model was not evaluated.
"""

import json
import os
import re
from pathlib import Path

from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    EvalResult,
    ModelCard,
    ModelCardData,
)

from scot_eval.results import AVERAGE, EvaluationResult, MetricValue

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
MODEL_CARD_TEMPLATE = TEMPLATES_DIR / "model_card.md.j2"
RESULTS_TEMPLATE = TEMPLATES_DIR / "model_card_results.md.j2"
DATASET_CARD_TEMPLATE = TEMPLATES_DIR / "dataset_card.md.j2"

# The Results section sits between these two markers, so that a new benchmark result rewrites it and nothing else.
RESULTS_START, RESULTS_END = "<!-- scot-results", "<!-- /scot-results -->"

# The Hub has no composed-retrieval task. SCOT returns embeddings that are ranked against image embeddings, which is
# what `image-feature-extraction` models are searched for; it is also the model-index task type.
PIPELINE_TAG = "image-feature-extraction"
TASK_NAME = "Composed image retrieval"
DEFAULT_TAGS = ("scot", "composed-image-retrieval", "zero-shot-composed-image-retrieval")
BENCHMARK_NAMES = {"fashioniq": "FashionIQ", "cirr": "CIRR", "circo": "CIRCO"}
# What a card adds to an evaluation result given as a dict: the dataset it was measured on, when not the benchmark's
# own (the demo's colour benchmark is scored with the CIRR protocol), and the comparison table's row label
CARD_LABELS = ("dataset_name", "dataset_type", "label")
_PROXY_KEY = re.compile(r"^eval_R@\d+$")  # ScotTrainer's held-out composed -> modified-caption recall
# Where the pseudo-word composer is described, relative to the package's repository (no public URL is recorded yet)
MAP_TO_COMPOSE_DOCS = "docs/map_to_compose.md"
# what the card says of stage 2's LoRA, by `ScotConfig.pseudo_word_lora_state`
LORA_SUMMARIES = {
    "merged": "LoRA merged into the text encoder",
    "active": "LoRA adapters still active in the text encoder (a training checkpoint: loading it needs peft)",
    "none": "no LoRA yet: the text encoder is the backbone's (stage 1 only)",
}
METHOD_LABELS = {
    "scot": "SCOT (this model)",
    "image": "Image only",
    "text": "Text only",
    "sum": "Image + text (normalised sum)",
}


def _jinja_template(path: Path):
    import jinja2

    return jinja2.Template(path.read_text(encoding="utf-8"))


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def hub_id_or_none(name) -> str | None:
    """`name` when it can be a Hub repo id (`name` or `owner/name`), else None: metadata such as `base_model` and
    `datasets` must name Hub repos, and a local path (`/tmp/run/clip`, `outputs/demo/backbone`) is not one."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not name:
        return None
    name = str(name)
    if os.path.isabs(name) or name.startswith((".", "~")):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


# -- evaluation results -----------------------------------------------------------------------------------------------


def _as_result(evaluation: EvaluationResult | dict) -> tuple[EvaluationResult, dict]:
    """(the result, its card labels) from an `EvaluationResult` or its dict form with optional `CARD_LABELS`."""
    if isinstance(evaluation, EvaluationResult):
        return evaluation, {}
    return EvaluationResult.from_dict(evaluation), {key: evaluation[key] for key in CARD_LABELS if key in evaluation}


def _dataset_name(result: EvaluationResult, labels: dict) -> str:
    return labels.get("dataset_name", BENCHMARK_NAMES.get(result.benchmark, result.benchmark))


def eval_results_from_evaluation(evaluation: EvaluationResult | dict) -> list[EvalResult]:
    """Model-index entries from one evaluation result: an `EvaluationResult` (what `evaluate_benchmark` returns) or
    its dict form (`metrics.json`: `{"benchmark", "split", "method", "metrics": {"R@1": 31.2, ...}}`).

    Only the model's own method, `scot`, counts: the `image` / `text` / `sum` baselines measure the encoder, not this
    model. A test split has no metrics (submission files only) and gives nothing. FashionIQ's categories become
    dataset configs (`dress`, `shirt`, `toptee`); their mean has no config. `dataset_name` / `dataset_type` in a
    dict result override the benchmark's (the demo's colour benchmark is scored with the CIRR protocol)."""
    result, labels = _as_result(evaluation)
    if result.method != "scot":
        return []
    return [EvalResult(
        task_type=PIPELINE_TAG,
        task_name=TASK_NAME,
        dataset_type=labels.get("dataset_type", result.benchmark),
        dataset_name=_dataset_name(result, labels),
        dataset_split=result.split,
        dataset_config=None if metric.group in (None, AVERAGE) else metric.group,
        metric_type=metric.metric_id,
        metric_name=metric.name,
        metric_value=round(float(metric.value), 2),
        # FashionIQ numbers depend on how its two captions are joined (CLIP4Cir's "c1 and c2", SEARLE's both orders)
        metric_config=result.fashioniq_captions if result.benchmark == "fashioniq" else None,
    ) for metric in result.metric_values]


def _result_key(result: EvalResult) -> tuple:
    return (*result.unique_identifier, result.metric_type, result.metric_config)


def merge_eval_results(existing: list[EvalResult] | None, new: list[EvalResult]) -> list[EvalResult]:
    """`existing` with the entries of `new` replacing those measuring the same thing; new measurements appended."""
    replacement = {_result_key(result): result for result in new}
    merged = [replacement.pop(_result_key(result), result) for result in existing or []]
    return merged + [result for result in new if _result_key(result) in replacement]


def _results_tables(eval_results: list[EvalResult], model_name: str) -> list[dict]:
    """One table per benchmark split: rows are FashionIQ categories (then their average) or the model, columns the
    metrics in the order they were measured."""
    groups: dict[tuple, list[EvalResult]] = {}
    for result in eval_results:
        groups.setdefault((result.dataset_name, result.dataset_type, result.dataset_split, result.metric_config),
                          []).append(result)
    tables = []
    for (dataset_name, dataset_type, split, metric_config), results in groups.items():
        has_configs = any(result.dataset_config for result in results)
        metrics = list(dict.fromkeys(result.metric_name or result.metric_type for result in results))
        rows: dict[str, dict] = {}
        for result in results:
            label = result.dataset_config or ("average" if has_configs else model_name)
            rows.setdefault(label, {})[result.metric_name or result.metric_type] = result.metric_value
        title = f"**{dataset_name}** (`{dataset_type}`" + (f", split `{split}`" if split else "")
        title += (f", captions `{metric_config}`" if metric_config else "") + ")"
        tables.append({
            "title": title,
            "row_header": "category" if has_configs else "model",
            "metrics": metrics,
            "rows": [{"label": label, "cells": [_format_value(values.get(name)) for name in metrics]}
                     for label, values in rows.items()],
        })
    return tables


def _format_value(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def render_results_section(eval_results: list[EvalResult] | None, model_name: str) -> str:
    """The card's Results section (between the results markers) from model-index entries."""
    return _jinja_template(RESULTS_TEMPLATE).render(tables=_results_tables(eval_results or [], model_name)).strip()


def _comparison_tables(evaluations: list[EvaluationResult | dict]) -> list[dict]:
    """Tables of every method measured on a benchmark split, where more than the model itself was measured."""
    groups: dict[tuple, list[tuple[EvaluationResult, dict]]] = {}
    for evaluation in evaluations:
        result, labels = _as_result(evaluation)
        if result.metric_values:
            key = (_dataset_name(result, labels), result.split, result.fashioniq_captions)
            groups.setdefault(key, []).append((result, labels))
    tables = []
    for (dataset_name, split, captions), group in groups.items():
        if all(result.method == "scot" for result, _ in group):
            continue  # nothing to compare with: the Results section has it all
        metrics = list(dict.fromkeys(key for result, _ in group for key in result.metrics))
        title = f"**{dataset_name}**" + (f", split `{split}`" if split else "")
        title += f", captions `{captions}`" if captions else ""
        tables.append({"title": title, "metrics": metrics, "rows": [
            {"label": labels.get("label") or METHOD_LABELS.get(result.method, result.method),
             "cells": [_format_value(result.metrics.get(name)) for name in metrics]}
            for result, labels in group]})
    return tables


def evaluations_from_log_history(log_history: list[dict], cir_benchmark: dict | None, step: int | None = None,
                                 metric_key_prefix: str = "eval") -> list[EvaluationResult]:
    """The last CIR benchmark evaluation `ScotTrainer` logged (`eval_cirr_R@1`, ...), as an `EvaluationResult`.

    With `step`, only an evaluation logged at that step counts: an older one measured other weights."""
    if not cir_benchmark:
        return []
    benchmark = cir_benchmark["benchmark"]
    prefix = f"{metric_key_prefix}_{benchmark}_"
    entries = [entry for entry in log_history or [] if any(key.startswith(prefix) for key in entry)]
    if not entries or (step is not None and entries[-1].get("step") != step):
        return []
    return [EvaluationResult(
        benchmark=benchmark, split=cir_benchmark.get("split", "val"), method=cir_benchmark.get("method", "scot"),
        metric_values=[MetricValue.from_key(key[len(prefix):], value) for key, value in entries[-1].items()
                       if key.startswith(prefix)],
        fashioniq_captions=cir_benchmark.get("fashioniq_captions", "clip4cir") if benchmark == "fashioniq" else None,
    )]


# -- model card -------------------------------------------------------------------------------------------------------


def training_summary(training_args: dict | None, log_history: list[dict] | None = None, *, global_step=None,
                     epoch=None, world_size: int | None = None, final_eval: dict | None = None) -> dict | None:
    """The settings a run really used, for the card's Training section, from `TrainingArguments.to_dict()` and the
    `Trainer` log history. `final_eval` (the `eval_*` metrics of the saved weights, e.g. `eval_results.json`) takes
    precedence over the last evaluation in the history. None without training arguments."""
    if not training_args:
        return None
    history = log_history or []
    losses = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]
    evaluations = [entry for entry in history if "eval_loss" in entry]
    per_device = training_args.get("per_device_train_batch_size")
    accumulation = training_args.get("gradient_accumulation_steps", 1)
    warmup = training_args.get("warmup_steps") or training_args.get("warmup_ratio") or 0
    summary = {
        "global_step": global_step if global_step is not None else (history[-1].get("step") if history else 0),
        "epoch": round(float(epoch), 2) if epoch is not None else None,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "world_size": world_size,
        "total_train_batch_size": per_device * world_size * accumulation if world_size and per_device else None,
        "optim": str(training_args.get("optim")),
        "learning_rate": training_args.get("learning_rate"),
        "weight_decay": training_args.get("weight_decay"),
        "lr_scheduler_type": str(training_args.get("lr_scheduler_type")),
        "warmup": warmup,
        "precision": "bf16" if training_args.get("bf16") else "fp16" if training_args.get("fp16") else "fp32",
        "seed": training_args.get("seed"),
        "final_loss": round(losses[-1][1], 4) if losses else None,
        "final_loss_step": losses[-1][0] if losses else None,
        "proxy": None,
    }
    source, step = (final_eval, summary["global_step"]) if final_eval and "eval_loss" in final_eval else (
        (evaluations[-1], evaluations[-1].get("step")) if evaluations else (None, None))
    if source is not None:
        proxy_keys = sorted((key for key in source if _PROXY_KEY.match(key)), key=lambda key: int(key.split("@")[1]))
        proxy_metrics = {key[len("eval_"):]: source[key] for key in proxy_keys}
        summary["proxy"] = {"step": step, "loss": source["eval_loss"], "metrics": proxy_metrics}
    return summary


def _encoder_facts(config: dict) -> tuple[dict, int | None]:
    encoder = config.get("encoder_config") or {}
    model_type = encoder.get("model_type", "clip")
    pooling = None
    if model_type == "blip-2":
        pooling = f"BLIP-2's 32 query embeddings pooled with `{config.get('blip2_query_pooling', 'mean')}`"
    elif model_type == "vision-text-dual-encoder":
        pooling = f"text embedding from `{config.get('text_pooling', 'pooler')}` pooling"
    embed_dim = encoder.get("image_text_hidden_size") if model_type == "blip-2" else encoder.get("projection_dim")
    facts = {"model_type": model_type, "name_or_path": encoder.get("_name_or_path") or None,
             "frozen": config.get("freeze_encoder", True), "pooling": pooling}
    return facts, embed_dim


def _composer_facts(config: dict) -> dict:
    """What the card says of the composer (`ScotConfig.composer`): SCOT's Combiner with its sizes, or the pseudo-word
    composer (Map-to-Compose) with K, its prompts, the mapping network and where stage 2's LoRA is."""
    if config.get("composer", "combiner") != "pseudo_word":
        return {"kind": "combiner", "name": "Combiner", "projection_dim": config.get("combiner_projection_dim"),
                "hidden_dim": config.get("combiner_hidden_dim"), "dropout": config.get("combiner_dropout"),
                "image_anchor_weight": config.get("image_anchor_weight", 0.0)}
    depth = config.get("pseudo_word_mapping_depth")
    mapping = ("an MLP on the pooled image embedding (depth 0)" if depth == 0 else
               f"{depth} visual-semantic-injection block{'s' if depth != 1 else ''} (cross-attention over the pooled "
               f"embedding and the image token states), {config.get('pseudo_word_mapping_heads')} heads")
    targets = config.get("pseudo_word_lora_target_modules")
    lora_state = config.get("pseudo_word_lora_state", "none")
    return {
        "kind": "pseudo_word",
        "name": "pseudo-word composer",
        "num_pseudo_tokens": config.get("num_pseudo_tokens"),
        "prompt": config.get("pseudo_word_prompt"),
        "image_prompt": config.get("pseudo_word_image_prompt"),
        "mapping": f"{mapping}, dropout {config.get('pseudo_word_mapping_dropout')}",
        "lora": {"state": lora_state, "summary": LORA_SUMMARIES[lora_state],
                 "rank": config.get("pseudo_word_lora_rank"), "alpha": config.get("pseudo_word_lora_alpha"),
                 "target_modules": [targets] if isinstance(targets, str) else targets},
        "docs": MAP_TO_COMPOSE_DOCS,
    }


def _encoder_state(config: dict, composer: dict) -> str:
    """How the card describes what training did to the encoder."""
    if composer["kind"] == "pseudo_word" and composer["lora"]["state"] != "none":
        return "image side frozen, text side tuned by stage 2's LoRA (below)"
    if config.get("freeze_encoder", True):
        return "frozen"
    return f"trained with the {composer['name']}"


def _loss_description(config: dict) -> str:
    if config.get("composer", "combiner") == "pseudo_word":
        mapping = (f"stage 1 (mapping network): symmetric InfoNCE between the image prompt and the image (τ = "
                   f"{config.get('pseudo_word_temperature')}) + {config.get('soft_alignment_weight')} × the soft text "
                   f"alignment KL over the batch's captions (τ_s = {config.get('soft_alignment_temperature')})")
        if config.get("pseudo_word_lora_state", "none") == "none":
            return mapping + "; stage 2 (composing) has not run"
        return (mapping + "; stage 2 (LoRA on the text encoder): contrastive loss of the composed prompt against "
                "the frozen modified-caption embeddings, the reference's original caption as a hard negative (τ = "
                f"{config.get('composing_temperature')})")
    if config.get("loss_type", "scot") == "infonce":
        return (f"InfoNCE as in CLIP4Cir (cross-entropy over cosine similarities divided by the temperature "
                f"{config.get('infonce_temperature')}), the comparison option of this package")
    return (f"the SCOT loss (paper Eq. 4–9): α_pos = {config.get('alpha_pos')}, α_neg = {config.get('alpha_neg')}, "
            f"negative margin λ = {config.get('margin')}; the other modified captions of the (all-process) batch and "
            "the original captions are the negatives")


def _license_of_local_model(path) -> str | None:
    """The license in a local encoder folder's own model card, if it has one (no network)."""
    readme = Path(path) / "README.md" if path else None
    if readme is None or not readme.is_file():
        return None
    try:
        return ModelCard.load(readme).data.license
    except Exception:  # noqa: BLE001 - someone else's card: unreadable metadata only means "license unknown"
        return None


def render_model_card(config, *, model_name: str, repo_id: str | None = None,
                      evaluations: list[EvaluationResult | dict] | None = None,
                      eval_results: list[EvalResult] | None = None, training: dict | None = None,
                      dataset: dict | None = None, license: str | None = None, base_model: str | None = None,
                      tags: list[str] | None = None, description: str | None = None,
                      limitations: list[str] | None = None) -> ModelCard:
    """The model card of a SCOT model.

    Args:
        config: the model's `ScotConfig` (or its `to_dict()`).
        model_name: the card's title and the model-index name; `repo_id` (default `model_name`) goes in the usage code.
        evaluations: `EvaluationResult`s (or their dict form, as in `metrics.json`). The `scot` ones become the
            model-index; when baselines of the same benchmark are there too, a comparison table lists every method.
        eval_results: model-index entries already known (from an existing card); `evaluations` replace the same ones.
        training: `training_summary(...)`; None says no training record exists.
        dataset: `{"name", "train_rows", "eval_rows"}` of the data the composer was trained on.
        license / base_model: default to the encoder's: its Hub id when `_name_or_path` is one, and the license in a
            local encoder folder's card.
        description / limitations: extra markdown paragraph after the introduction, extra limitation bullets.
    """
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    evaluations = list(evaluations or [])
    measured = [result for evaluation in evaluations for result in eval_results_from_evaluation(evaluation)]
    results = merge_eval_results(eval_results, measured)
    encoder, embed_dim = _encoder_facts(config)
    composer = _composer_facts(config)
    encoder["state"] = _encoder_state(config, composer)
    base_model = base_model or hub_id_or_none(encoder["name_or_path"])
    license = license or _license_of_local_model(encoder["name_or_path"])
    if dataset is not None:
        dataset = {"train_rows": None, "eval_rows": None, **dataset}
    dataset_id = hub_id_or_none(dataset.get("name")) if dataset else None
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        library_name="transformers",
        license=license,
        pipeline_tag=PIPELINE_TAG,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, encoder["model_type"],
                                 *(["map-to-compose"] if composer["kind"] == "pseudo_word" else []), *(tags or [])])),
        eval_results=results or None,  # no measurement, no model-index
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        model_name=model_name,
        repo_id=repo_id or model_name,
        encoder=encoder,
        embed_dim=embed_dim,
        composer=composer,
        loss=_loss_description(config),
        training=training,
        dataset=dataset,
        description=description,
        results_section=render_results_section(results, model_name),
        comparisons=_comparison_tables(evaluations),
        limitations=limitations or [],
    )


def read_training_record(folder) -> tuple[dict | None, dict]:
    """(`training_summary`, `{"train_rows", "eval_rows"}`) from what `Trainer` leaves in an output folder:
    `training_args.json` (written by `ScotTrainer`), `trainer_state.json` and `all_results.json` (`save_state`,
    `save_metrics`). Missing files give None / missing counts."""
    folder = Path(folder)
    state = _read_json(folder / "trainer_state.json") or {}
    results = _read_json(folder / "all_results.json") or {}
    results = {**(_read_json(folder / "train_results.json") or {}), **(_read_json(folder / "eval_results.json") or {}),
               **results}
    training = training_summary(_read_json(folder / "training_args.json"), state.get("log_history"),
                                global_step=state.get("global_step"), epoch=state.get("epoch"), final_eval=results)
    return training, {"train_rows": results.get("train_samples"), "eval_rows": results.get("eval_samples")}


def model_card_from_folder(folder, *, training_folder=None, dataset: dict | None = None, **kwargs) -> ModelCard:
    """`render_model_card` for a saved SCOT folder: the config from its `config.json`, the training record from
    `training_folder` (default: the same folder). Other arguments go to `render_model_card`."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if config is None:
        raise FileNotFoundError(f"{folder} has no readable config.json: not a saved model folder.")
    training, rows = read_training_record(training_folder or folder)
    if dataset is not None:
        dataset = {**{key: value for key, value in rows.items() if value is not None}, **dataset}
    kwargs.setdefault("model_name", folder.resolve().name)
    return render_model_card(config, training=training, dataset=dataset, **kwargs)


def update_model_card(folder, evaluation: EvaluationResult | dict) -> ModelCard:
    """Record an evaluation result in the README.md model card of a saved SCOT folder and return the card.

    The model-index gains the result's entries (replacing earlier ones for the same benchmark, split and metric) and
    the Results section is re-rendered from the model-index; the rest of the card is left as it was. A folder with no
    card gets a fresh one from its `config.json` and training record; a card written by hand, without the results
    markers, gets the Results section appended."""
    folder = Path(folder)
    path = folder / "README.md"
    new = eval_results_from_evaluation(evaluation)
    if not path.is_file():
        card = model_card_from_folder(folder, evaluations=[evaluation])
    else:
        card = ModelCard.load(path)
        model_name = card.data.model_name or folder.resolve().name
        results = merge_eval_results(card.data.eval_results, new)
        card.data.model_name, card.data.eval_results = model_name, results or None
        section = render_results_section(results, model_name)
        body = card.text
        start, end = body.find(RESULTS_START), body.find(RESULTS_END)
        if start != -1 and end > start:
            body = body[:start] + section + body[end + len(RESULTS_END):]
        else:
            body = body.rstrip() + "\n\n" + section + "\n"
        card = ModelCard(f"---\n{card.data.to_yaml()}\n---\n{body}")
    card.save(path)
    return card


# -- dataset card -----------------------------------------------------------------------------------------------------


def size_category(rows: int) -> str:
    """The Hub's `size_categories` value for a number of rows."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return label
    return "1M<n<10M"


def render_dataset_card(stats: dict, *, features: list[dict], repo_or_folder: str, num_bytes: int | None = None,
                        data_files: str = "data/train-*.parquet") -> DatasetCard:
    """The dataset card of a triplet dataset from its real statistics (the dict `data_gen` counts: `kept_rows`,
    `generated_rows`, `input_rows`, `rejections`, `per_generator`, `per_kind`, `per_generator_kind`, generation
    settings, `sources`, `license`).

    The YAML `configs` entry points `load_dataset(folder)` (or the Hub repo) at the parquet shards `data_files`;
    `features` (`[{"name", "dtype"}]`) and the split size go in `dataset_info`."""
    kept_rows = stats["kept_rows"]
    split = {"name": "train", "num_examples": kept_rows}
    if num_bytes is not None:
        split["num_bytes"] = num_bytes
    card_data = DatasetCardData(
        license=stats.get("license", "other"),
        pretty_name=stats.get("pretty_name", "SCOT triplets"),
        task_categories=["image-to-image", "text-to-image"],
        tags=["composed-image-retrieval", "scot", "synthetic"],
        size_categories=[size_category(kept_rows)],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}],
        dataset_info={"features": features, "splits": [split]},
    )
    generated = stats["generated_rows"]
    # license and pretty_name reach the template through the card data, where they were normalised
    template_values = {key: value for key, value in stats.items() if key not in ("license", "pretty_name")}
    return DatasetCard.from_template(
        card_data,
        template_path=str(DATASET_CARD_TEMPLATE),
        repo_or_folder=repo_or_folder,
        acceptance=f"{kept_rows / generated:.1%}" if generated else "n/a",
        **template_values,
    )
