"""Model and dataset cards for SCOT: Jinja templates rendered with huggingface_hub `ModelCard` / `DatasetCard` from
real metrics (`trainers.evaluate` results, `Trainer` logs) and real dataset statistics (`data_gen`).

Needs only huggingface_hub and jinja2.
"""

from .cards import (
    PIPELINE_TAG,
    eval_results_from_evaluation,
    evaluations_from_log_history,
    merge_eval_results,
    model_card_from_folder,
    read_training_record,
    render_dataset_card,
    render_model_card,
    render_results_section,
    size_category,
    training_summary,
    update_model_card,
)
from .image_dataset_card import render_image_dataset_card

__all__ = [
    "PIPELINE_TAG",
    "eval_results_from_evaluation",
    "evaluations_from_log_history",
    "merge_eval_results",
    "model_card_from_folder",
    "read_training_record",
    "render_dataset_card",
    "render_image_dataset_card",
    "render_model_card",
    "render_results_section",
    "size_category",
    "training_summary",
    "update_model_card",
]
