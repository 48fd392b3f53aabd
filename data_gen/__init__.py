"""Captions → (modification, modified caption) triplets for SCOT (paper §3.2, Eq. 2).

The pipeline, one direction:

1. `sources`   — read (image, caption) rows from a `datasets` dataset or a folder of images + caption files;
2. `finetune`  — LoRA-tune a generator LLM (4-bit NF4 on a GPU) on seed triplets with TRL `SFTTrainer`
   (`python -m data_gen.finetune`);
3. `generate`  — batched, sharded, resumable generation with parsing and filtering (`python -m data_gen.generate`);
4. `dataset_io`— parquet shards with embedded images, a dataset card, and `push_to_hub`.

`prompts` holds the prompt formats (which can ask for one of `KINDS_OF_CHANGE`), the parser and the filters;
`templates` a rule-based generator used as a fallback and as a seed source. Unlike `modeling_scot`, this package
may import datasets / trl / peft.
"""

from .prompts import KINDS_OF_CHANGE, ParsedTriplet, RejectionCounter, TripletFilter, build_messages, parse_completion
from .templates import TemplateGenerator

__all__ = [
    "KINDS_OF_CHANGE",
    "ParsedTriplet",
    "RejectionCounter",
    "TemplateGenerator",
    "TripletFilter",
    "build_messages",
    "parse_completion",
]
