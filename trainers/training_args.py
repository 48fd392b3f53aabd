"""The arguments of a SCOT training run: `HfArgumentParser` dataclasses, one module (as TRL's `sft_config.py`).

- `ModelArguments`: the model to start from, plus every `ScotConfig` setting a run may choose. Its fields are made
  from `ScotConfig`'s own fields, so their defaults and meaning are stated once, in `ScotConfig`.
- `DataArguments`: how the triplet dataset is read: config, splits, held-out slice, columns, the embedding cache.
- `ScotTrainingArguments`: `TrainingArguments` with the paper's optimisation defaults and what `ScotTrainer` reads
  from its arguments: the dataset's name (for the model card) and the CIR benchmark evaluated during training.
"""

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field

from transformers import TrainingArguments

from modeling_scot import ScotConfig

__all__ = ["COMPOSER_STAGES", "DataArguments", "ModelArguments", "ScotTrainingArguments"]

# The stages of a pseudo-word (Map-to-Compose) model's training, `ScotTrainingArguments.composer_stage`: see
# trainers/pseudo_word.py
COMPOSER_STAGES = ("mapping", "composing")

# ScotConfig fields a training run does not choose: the encoder's config comes from `model_name_or_path`.
_NOT_RUN_SETTINGS = ("encoder_config",)


def _documented_arguments(config_class: type) -> dict[str, str]:
    """`{name: description}` from the `Args:` block of a transformers-style config docstring."""
    docstring = inspect.getdoc(config_class) or ""
    block = docstring.partition("\nArgs:\n")[2]
    descriptions: dict[str, list[str]] = {}
    name = None
    for line in block.splitlines():
        entry = re.match(r"^    (\w+) \(.*\):$", line)
        if entry:
            name = entry.group(1)
            descriptions[name] = []
        elif line.startswith("        ") and name is not None:
            descriptions[name].append(line.strip())
        elif line.strip():  # the next section ("Example:") ends the block
            break
    return {name: " ".join(lines) for name, lines in descriptions.items()}


def _model_arguments_class() -> type:
    """`ModelArguments`: `model_name_or_path`, then one optional field per `ScotConfig` setting (None = keep
    ScotConfig's default, or the saved model's value), typed as in ScotConfig, its help text the ScotConfig
    docstring's and its default read from ScotConfig's signature."""
    descriptions = _documented_arguments(ScotConfig)
    own_fields = inspect.get_annotations(ScotConfig, eval_str=True)  # ScotConfig's fields, not PreTrainedConfig's
    fields = [("model_name_or_path", str, field(metadata={
        "help": "A backbone to wrap (CLIP, BLIP-2 retrieval, VisionTextDualEncoder: folder or hub id) or a saved SCOT "
                "model to continue from (folder or hub id)."}))]
    for config_field in dataclasses.fields(ScotConfig):
        if config_field.name not in own_fields or config_field.name in _NOT_RUN_SETTINGS:
            continue
        annotation = own_fields[config_field.name]
        value_type = next(t for t in typing.get_args(annotation) or (annotation,) if t is not type(None))
        help_text = descriptions.get(config_field.name, "")
        if config_field.default is not None:
            help_text += f" ScotConfig default: {config_field.default!r}."
        fields.append((config_field.name, value_type | None, field(default=None, metadata={"help": help_text})))
    names = ", ".join(f"`{name}`" for name, _, _ in fields[1:])
    docstring = (f"The model a run starts from and the `ScotConfig` settings it may set: {names}. None keeps "
                 "ScotConfig's default for a new model, the saved value for a SCOT model; a saved SCOT model can "
                 "change only its loss settings (`scot_core.loading.ARCHITECTURE_FIELDS` are fixed).")
    namespace = {"__module__": __name__, "__doc__": docstring}
    return dataclasses.make_dataclass("ModelArguments", fields, namespace=namespace)


ModelArguments = _model_arguments_class()


@dataclass
class DataArguments:
    """How the triplet dataset (`ScotTrainingArguments.dataset_name`) is read and fed to the trainer."""

    dataset_config_name: str | None = field(default=None, metadata={"help": "load_dataset config name."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Held-out split; else eval_fraction of train."})
    eval_fraction: float = field(default=0.05, metadata={"help": "Held-out slice of the train split (0 = none)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    image_column: str = field(default="image")
    caption_column: str = field(default="caption")
    modification_column: str = field(default="modification")
    modified_caption_column: str = field(default="modified_caption")
    kind_column: str = field(default="kind", metadata={"help": "The column naming each triplet's kind of change."})
    exclude_kinds: list[str] = field(default_factory=list, metadata={
        "help": "Kinds of change (values of kind_column) left out of the train split before the held-out slice is "
                "drawn: a transfer study trains without them and evaluates on them (demo.kind_transfer)."})
    use_embedding_cache: bool = field(default=True, metadata={"help": "Encode once and train on cached vectors."})
    embedding_cache_dir: str = field(default="~/.cache/scot/embeddings", metadata={"help": "Where the cache lives."})
    encode_batch_size: int = field(default=64, metadata={"help": "Batch size when building the cache."})
    target: str = field(default="text", metadata={
        "help": "What the composed query is trained towards: 'text', the modified caption's text embedding (SCOT); "
                "'text_gap', the same moved by the training set's mean image - mean text embedding (the modality "
                "gap); or 'retrieved_image', the training image nearest to it, the reference excluded (the paper's "
                "Table 3 comparison). The last two need the embedding cache."})
    retrieval_reference_weight: float = field(default=0.0, metadata={
        "help": "Ours, not the paper's: with w > 0 the retrieved training image (of target 'retrieved_image' and of "
                "target mixing) is the one best matching both the modified caption and the reference, the highest "
                "z(cos(caption, g)) + w z(cos(reference, g)); 0, the nearest image to the caption. The validation "
                "probes keep w = 0."})

    def __post_init__(self):
        from trainers.embedding_cache import TARGETS

        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}.")
        if self.retrieval_reference_weight < 0:
            raise ValueError(f"retrieval_reference_weight must be >= 0, got {self.retrieval_reference_weight}.")


@dataclass
class ScotTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's optimisation defaults (AdamW, lr 1e-4) and what `ScotTrainer` reads:
    the triplet dataset's name, the CIR benchmark it evaluates during training, and whether a rerun resumes."""

    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (paper: 1e-4)."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (paper: AdamW)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept: SCOT batches are not model kwargs."})
    # transformers 5 dropped this flag; train.py keeps its meaning from the transformers example scripts
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start at step 0 even when output_dir holds checkpoints (a rerun otherwise resumes from the last "
                "one). Nothing is deleted: files are overwritten as the new run writes them."})
    dataset_name: str | None = field(default=None, metadata={
        "help": "The triplet dataset: anything load_dataset reads (a local folder or a hub id) with the columns "
                "image, caption, modification, modified_caption. Named in the model card."})
    cir_benchmark: str | None = field(default=None, metadata={
        "help": "Also evaluate on this CIR benchmark at every evaluation: fashioniq | cirr | circo."})
    cir_data_dir: str | None = field(default=None, metadata={"help": "The benchmark's folder (official layout)."})
    cir_split: str = field(default="val", metadata={"help": "The benchmark split evaluated during training."})
    composer_stage: str | None = field(default=None, metadata={
        "help": "For a pseudo-word model (composer pseudo_word, Map-to-Compose; trainers/pseudo_word.py): 'mapping' "
                "(stage 1: the mapping network on the dataset's (image, caption) pairs) or 'composing' (stage 2: "
                "LoRA adapters in the text encoder on the triplets, merged before the final save; start it from the "
                "stage-1 model). Must stay unset for a Combiner."})
    retrieved_image_weight: float = field(default=0.0, metadata={
        "help": "Target mixing: the loss is (1 - w) * loss(composed, target) + w * loss(composed, retrieved image), "
                "the retrieved image being the training image nearest to the modified caption, the reference "
                "excluded (what `target retrieved_image` trains on alone). It keeps the composed query among real "
                "images where the text alone would pull it into the text side. 0 = the target only; needs the "
                "embedding cache."})
    image_floor_weight: float = field(default=0.0, metadata={
        "help": "Ours, not the paper's: adds μ * image_floor_loss (modeling_scot), a hinge that costs a row only "
                "where the composed query retrieves its retrieved-image target (the mixing target, among the "
                "batch's) worse than the reference image alone does: a floor at the image-only baseline, on the "
                "training data. 0 = off; needs retrieved-image targets (retrieved_image_weight > 0) and the "
                "embedding cache."})
    image_floor_temperature: float = field(default=0.05, metadata={
        "help": "τ of image_floor_loss: the two retrieval losses it compares are cross-entropies over cos / τ."})
    grounding_gate_alpha: float | None = field(default=None, metadata={
        "help": "Ours, not the paper's: after training, turn on the grounding gate (ScotConfig."
                "grounding_gate_neighbours / grounding_gate_threshold: at retrieval, a query whose text does not pick "
                "out one of the reference's nearest gallery images is answered with the image alone), its threshold "
                "the (1 - alpha) quantile of a permutation null on the validation slice (trainers.grounding_gate). "
                "Unset = no gate; needs the embedding cache and a held-out split. The gate's k is "
                "--grounding_gate_neighbours (a ScotConfig field; 0 there: DEFAULT_GROUNDING_GATE_NEIGHBOURS)."})
    grounding_gate_select: bool = field(default=False, metadata={
        "help": "Ours: choose the grounding gate on the validation slice instead of fixing it: first its statistic "
                "(ScotConfig.grounding_gate_statistic), the one whose own-text groundings are best told from a "
                "permutation null (AUC), then alpha, the strictest of trainers.grounding_gate.GROUNDING_GATE_ALPHAS "
                "whose composed -> floor image R@1 (over the training images) is not below the ungated model's; no "
                "gate when every alpha loses. Needs what grounding_gate_alpha needs and retrieved-image probes; "
                "excludes grounding_gate_alpha."})

    novelty_gate_alpha: float | None = field(default=None, metadata={
        "help": "Ours, not the paper's: after training, turn on the text novelty gate (ScotConfig.novelty_gate_*: "
                "at inference, a query whose modification is unlike every training modification - the cosine to "
                "its k-th nearest one below theta - is answered with the image alone), theta the alpha quantile of "
                "the validation rows' familiarity (trainers.novelty_gate; 0.05: 95%% of texts like the training ones "
                "kept), the bank the training split's distinct modification embeddings, saved with the weights. "
                "Unset = no gate; needs the embedding cache and a held-out split; k is --novelty_gate_neighbours "
                "(0 there: 10)."})

    def __post_init__(self):
        super().__post_init__()
        if self.composer_stage is not None and self.composer_stage not in COMPOSER_STAGES:
            raise ValueError(f"composer_stage must be one of {COMPOSER_STAGES} (or unset for a Combiner), got "
                             f"{self.composer_stage!r}.")
        if not 0.0 <= self.retrieved_image_weight <= 1.0:
            raise ValueError(f"retrieved_image_weight must be in [0, 1], got {self.retrieved_image_weight}.")
        if self.image_floor_weight < 0:
            raise ValueError(f"image_floor_weight must be >= 0, got {self.image_floor_weight}.")
        if self.image_floor_weight > 0 and self.retrieved_image_weight == 0:
            raise ValueError("image_floor_weight > 0 compares the composed query with the reference image on the "
                             "retrieved-image targets: set retrieved_image_weight > 0 as well.")
        if self.grounding_gate_alpha is not None and not 0.0 < self.grounding_gate_alpha < 1.0:
            raise ValueError(f"grounding_gate_alpha must be in (0, 1) (or unset: no gate), got "
                             f"{self.grounding_gate_alpha}.")
        if self.novelty_gate_alpha is not None and not 0.0 < self.novelty_gate_alpha < 1.0:
            raise ValueError(f"novelty_gate_alpha must be in (0, 1) (or unset: no gate), got "
                             f"{self.novelty_gate_alpha}.")
        if self.grounding_gate_select and self.grounding_gate_alpha is not None:
            raise ValueError("grounding_gate_select chooses alpha on the validation slice: leave grounding_gate_alpha "
                             f"unset (got {self.grounding_gate_alpha}).")
        if not self.image_floor_temperature > 0:
            raise ValueError(f"image_floor_temperature must be > 0, got {self.image_floor_temperature}.")
        if self.cir_benchmark is None:
            return
        from scot_eval.benchmarks import BENCHMARKS

        if self.cir_benchmark not in BENCHMARKS:
            raise ValueError(f"cir_benchmark must be one of {', '.join(BENCHMARKS)}, got {self.cir_benchmark!r}.")
        if not self.cir_data_dir:
            raise ValueError("cir_benchmark needs cir_data_dir: the benchmark's folder in its official layout.")
