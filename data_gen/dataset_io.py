"""Writing the triplet dataset: atomic parquet shards, per-shard progress records, the dataset card, merging
several datasets into one, `push_to_hub`.

Layout of an output folder (what `load_dataset(folder)` reads, through the card's YAML `configs`):

    README.md                               dataset card
    data/train-00000-of-00012.parquet       one shard per `shard_size` input rows, images embedded
    .generation/run.json                    the settings of the run (a rerun must match them to resume)
    .generation/shard-00000.json            written after its parquet: the shard is done; its rejection counts
    .generation/stats.json                  the statistics the card was rendered from (what merging reads)
    .generation/status.json                 `{"complete": false}` while generating, `true` written last, when done

Until the run is complete, README.md is a placeholder whose `configs` match no file: `load_dataset(folder)` finds no
data instead of reading the shards written so far as a smaller dataset, and `check_complete` (what training and
merging call) says how to finish it.
"""

import glob
import io
import logging
import os
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
from datasets import Dataset, Features, Image, Value

from scot_core.io import atomic_path, atomic_write_json, atomic_write_text, read_json

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo, DatasetCard

FEATURES = Features(
    {
        "id": Value("string"),
        "image": Image(),
        "caption": Value("string"),
        "modification": Value("string"),
        "modified_caption": Value("string"),
        "source": Value("string"),
        "generator": Value("string"),
        "kind": Value("string"),
    }
)
COLUMNS = list(FEATURES)
STATE_DIR = ".generation"
STATS_FILE = "stats.json"  # in STATE_DIR
STATUS_FILE = "status.json"  # in STATE_DIR
RESUME_HINT = "rerun `python -m data_gen.generate` (or `scot-generate`) with the same arguments to finish it"
StrPath = str | os.PathLike  # a folder or file name: `str` or `pathlib.Path`

logger = logging.getLogger(__name__)


class IncompleteDatasetError(ValueError):
    """A triplet dataset folder whose generation has not finished: reading it would give a part of the dataset."""


def _atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, rename: a reader (or a rerun) sees all or nothing."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def shard_path(output_dir: StrPath, shard_index: int, num_shards: int) -> str:
    return os.path.join(output_dir, "data", f"train-{shard_index:05d}-of-{num_shards:05d}.parquet")


def shard_state_path(output_dir: StrPath, shard_index: int) -> str:
    return os.path.join(output_dir, STATE_DIR, f"shard-{shard_index:05d}.json")


def write_shard(output_dir: StrPath, shard_index: int, num_shards: int, records: list[dict], state: dict) -> None:
    """Write one shard's kept triplets (a list of dicts with COLUMNS), then its state record.

    The order matters for resuming: the state file is the "done" mark and only appears once the parquet is in place.
    A shard killed half-way has neither (or only a stale `.tmp-*`), and is generated again from the start.
    """
    table = Dataset.from_dict(
        {column: [record[column] for record in records] for column in COLUMNS}, features=FEATURES
    )
    buffer = io.BytesIO()
    # The arrow schema carries the features (Image included) in its metadata, so load_dataset decodes images.
    if records:
        pq.write_table(table.data.table, buffer)
    else:  # no row group at all: `load_dataset` fails on a row group of 0 rows (a shard whose every row was rejected)
        pq.ParquetWriter(buffer, table.data.table.schema).close()
    _atomic_write_bytes(shard_path(output_dir, shard_index, num_shards), buffer.getvalue())
    atomic_write_json(shard_state_path(output_dir, shard_index), state)


def read_shard_states(output_dir: StrPath) -> dict[int, dict]:
    """{shard_index: state} of the shards already done."""
    return {
        int(os.path.basename(path)[6:11]): read_json(path, "shard record")
        for path in glob.glob(os.path.join(output_dir, STATE_DIR, "shard-*.json"))
    }


def remove_stale_temporaries(output_dir: StrPath) -> None:
    """Remove the temporary files a killed run left: `scot_core.atomic_path`'s `.NAME.PID.XXXX.tmp`, and the
    `NAME.tmp-PID` of older versions."""
    patterns = (".*.parquet.*.tmp", ".*.json.*.tmp", ".README.md.*.tmp", "*.tmp-[0-9]*")
    for folder in (output_dir, os.path.join(output_dir, "data"), os.path.join(output_dir, STATE_DIR)):
        for pattern in patterns:
            for path in glob.glob(os.path.join(glob.escape(os.fspath(folder)), pattern), include_hidden=True):
                os.remove(path)


# ---------------------------------------------------------------------------------------------------------------
# Completeness


def status_path(folder: StrPath) -> str:
    return os.path.join(folder, STATE_DIR, STATUS_FILE)


def mark_incomplete(output_dir: StrPath, num_shards: int, to_finish: str = RESUME_HINT) -> None:
    """Record that the folder is being written (first, before any shard): `status.json` says `complete: false` and
    how to finish it, and README.md becomes a placeholder that `load_dataset` reads as no data, until
    `mark_complete`."""
    atomic_write_json(status_path(output_dir), {"complete": False, "num_shards": num_shards, "to_finish": to_finish})
    folder = os.path.basename(os.path.normpath(output_dir))
    atomic_write_text(os.path.join(output_dir, "README.md"), f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/generation-not-finished-*.parquet
---

# {folder}: not finished

This triplet dataset is being written, or its writing was interrupted: the shards in `data/` are only part of it,
so `load_dataset` finds no data here yet. To finish it, {to_finish}.
""")


def mark_complete(output_dir: StrPath, stats: dict, num_shards: int) -> None:
    """Record, last, that every shard and the card are written (atomically: the record is all or nothing)."""
    atomic_write_json(status_path(output_dir), {"complete": True, "num_shards": num_shards,
                                                "kept_rows": stats["kept_rows"]})


def read_status(folder: StrPath) -> dict | None:
    """`{"complete": bool, "to_finish": str}` of the triplet dataset `folder`, from its records; None when it has
    none (a folder not written by data_gen). Folders of older versions: `stats.json` was written last, when complete;
    a generation run record without a card is a run killed before its end."""
    if os.path.isfile(status_path(folder)):
        status = read_json(status_path(folder), "dataset status")
        return {"complete": status.get("complete") is True, "to_finish": status.get("to_finish", RESUME_HINT)}
    if os.path.isfile(stats_path(folder)):
        complete = read_json(stats_path(folder), "dataset statistics").get("complete", True) is True
        return {"complete": complete, "to_finish": RESUME_HINT}
    if os.path.isfile(os.path.join(folder, STATE_DIR, "run.json")):
        return {"complete": os.path.isfile(os.path.join(folder, "README.md")), "to_finish": RESUME_HINT}
    return None


def check_complete(folder: StrPath) -> bool | None:
    """True when the triplet dataset `folder` is recorded complete; `IncompleteDatasetError`, saying how to finish
    it, when it is recorded incomplete; a loud warning and None when it has no record at all."""
    status = read_status(folder)
    if status is None:
        logger.warning(
            "The dataset folder %r has no record of being complete (no %s/%s): it was not written by data_gen, or by "
            "a version before the record. If it comes from a generation run that was killed, it holds only part of "
            "the dataset: %s.", os.fspath(folder), STATE_DIR, STATUS_FILE, RESUME_HINT,
        )
        return None
    if not status["complete"]:
        raise IncompleteDatasetError(
            f"The triplet dataset {os.fspath(folder)!r} is incomplete: its generation was interrupted or is still "
            f"running, and its shards are only part of the dataset. To finish it, {status['to_finish']}."
        )
    return True


# ---------------------------------------------------------------------------------------------------------------
# Dataset card


def write_card(output_dir: StrPath, stats: dict, repo_or_folder: str | None = None) -> "DatasetCard":
    """Render README.md from real statistics with `hub_cards.render_dataset_card`: its YAML `configs` and features
    are what `load_dataset(output_dir)` reads, so the folder needs nothing else. The statistics themselves go to
    `.generation/stats.json`, so that `merge_triplet_datasets` can merge the folder with others."""
    from hub_cards import render_dataset_card

    card = render_dataset_card(
        stats,
        features=[_feature_yaml(name, feature) for name, feature in FEATURES.items()],
        num_bytes=_parquet_bytes(output_dir),
        repo_or_folder=repo_or_folder or os.path.basename(os.path.normpath(output_dir)),
    )
    atomic_write_text(os.path.join(output_dir, "README.md"), str(card))
    atomic_write_json(stats_path(output_dir), stats)
    return card


def stats_path(output_dir: StrPath) -> str:
    return os.path.join(output_dir, STATE_DIR, STATS_FILE)


def _parquet_bytes(output_dir: StrPath) -> int:
    return sum(os.path.getsize(path) for path in glob.glob(os.path.join(output_dir, "data", "*.parquet")))


def _feature_yaml(name: str, feature: Image | Value) -> dict:
    return {"name": name, "dtype": "image" if isinstance(feature, Image) else feature.dtype}


def merge_stats(states: dict[int, dict]) -> dict:
    """Sum the per-shard records into the card's statistics (records of versions before kinds have no kind counts)."""
    rejections, per_generator, per_kind = Counter(), Counter(), Counter()
    per_generator_kind: dict[str, Counter] = {}
    kept = generated = 0
    for state in states.values():
        rejections.update(state["rejections"])
        per_generator.update(state["per_generator"])
        per_kind.update(state.get("per_kind", {}))
        for name, kinds in state.get("per_generator_kind", {}).items():
            per_generator_kind.setdefault(name, Counter()).update(kinds)
        kept += state["kept_rows"]
        generated += state["generated_rows"]
    return {
        "kept_rows": kept,
        "generated_rows": generated,
        "rejections": dict(sorted(rejections.items())),
        "per_generator": dict(sorted(per_generator.items())),
        "per_kind": dict(sorted(per_kind.items())),
        "per_generator_kind": {
            name: dict(sorted(kinds.items())) for name, kinds in sorted(per_generator_kind.items())
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# Merging datasets


def read_stats(folder: StrPath) -> dict:
    """The statistics `write_card` recorded for a triplet dataset folder; a clear error when there are none."""
    path = stats_path(folder)
    if read_status(folder) is not None:
        check_complete(folder)  # an interrupted run: say how to finish it
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{os.fspath(folder)!r} has no {STATE_DIR}/{STATS_FILE}: not a triplet dataset written by data_gen, or "
            "one written before its statistics were recorded (rerun `python -m data_gen.generate` with the same "
            "arguments: it resumes, regenerates nothing and records them)."
        )
    return read_json(path, "dataset statistics")


def merge_dataset_stats(parts: Sequence[dict]) -> dict:
    """One statistics dict for several triplet datasets: row counts and per-reason / per-generator tallies summed,
    sources listed once each, `complete` when every part is. The fields that describe how the rows were generated
    (generator, prompt, decoding, example prompt, license) are the first part's: the card describes one generator,
    so a caller merging different ones says so by overriding them."""
    if not parts:
        raise ValueError("merge_dataset_stats needs the statistics of at least one dataset.")
    sources = []
    for part in parts:
        sources += [source for source in part.get("sources", []) if source not in sources]
    return {
        **parts[0],
        **merge_stats(dict(enumerate(parts))),
        "input_rows": sum(part["input_rows"] for part in parts),
        "sources": sources,
        "complete": all(part.get("complete", True) for part in parts),
    }


def _dataset_shards(folder: StrPath) -> list[str]:
    shards = sorted(glob.glob(os.path.join(folder, "data", "train-*-of-*.parquet")))
    if not shards:
        raise FileNotFoundError(f"{os.fspath(folder)!r} holds no data/train-*-of-*.parquet shards: not a triplet "
                                "dataset folder (or its generation has not written a shard yet).")
    return shards


def merge_triplet_datasets(folders: Sequence[StrPath], output_dir: StrPath, *, repo_or_folder: str | None = None,
                           **card_fields: Any) -> dict:
    """Merge triplet dataset folders (outputs of `data_gen.generate`, or of an earlier merge) into one Hub-format
    folder that `load_dataset(output_dir)` reads as one train split, and return its statistics.

    The parts' shards are copied in the order of `folders` and renumbered `data/train-{i}-of-{n}.parquet`; shards of
    that name left in `output_dir` by an earlier, larger merge are removed, nothing else is. The statistics are
    merged by `merge_dataset_stats`, with `card_fields` (`pretty_name`, `engine`, ...) replacing merged fields, and
    the card is rendered by `write_card` (which also records them, so the merged folder can be merged again).
    """
    if not folders:
        raise ValueError("merge_triplet_datasets needs at least one triplet dataset folder to merge.")
    output = os.path.abspath(output_dir)
    if os.path.exists(os.path.join(output, STATE_DIR, "run.json")):
        raise ValueError(f"{os.fspath(output_dir)!r} holds a generation run: merge into another folder.")
    for folder in folders:
        if os.path.abspath(folder) == output:
            raise ValueError(f"{os.fspath(folder)!r} is both a part and the output of the merge: choose another "
                             "output_dir.")
    existing = glob.glob(os.path.join(output, "data", "train-*-of-*.parquet"))
    if existing and not os.path.isdir(os.path.join(output, STATE_DIR)):
        # stale shards are removed below: only ever those of a folder this package wrote
        raise ValueError(f"{os.fspath(output_dir)!r} holds parquet shards this package did not write: merge into "
                         "an empty or new folder.")
    parts = [read_stats(folder) for folder in folders]
    shards = [shard for folder in folders for shard in _dataset_shards(folder)]
    # A merge killed half-way must not read as the previous merge (or as a smaller one): incomplete until done.
    mark_incomplete(output, len(shards), "rerun `merge_triplet_datasets` with the same parts")
    written = {shard_path(output, index, len(shards)) for index in range(len(shards))}
    for index, shard in enumerate(shards):
        with open(shard, "rb") as handle:
            _atomic_write_bytes(shard_path(output, index, len(shards)), handle.read())
    for stale in set(glob.glob(os.path.join(output, "data", "train-*-of-*.parquet"))) - written:
        os.remove(stale)
    stats = {**merge_dataset_stats(parts), **card_fields}
    write_card(output, stats, repo_or_folder=repo_or_folder)
    mark_complete(output, stats, len(shards))
    return stats


# ---------------------------------------------------------------------------------------------------------------
# Publishing


def push_to_hub(output_dir: StrPath, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload SCOT triplets") -> "CommitInfo":
    """Create the dataset repo (if needed) and upload the card and shards (not the resume records)."""
    from huggingface_hub import HfApi

    if not os.path.exists(os.path.join(output_dir, "README.md")):
        raise ValueError(f"{output_dir!r} has no README.md: run generation to completion before pushing")
    check_complete(output_dir)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=output_dir,
        allow_patterns=["README.md", "data/*.parquet"],
        commit_message=commit_message,
    )
