"""Writing the triplet dataset: atomic parquet shards, per-shard progress records, the dataset card, merging
several datasets into one, `push_to_hub`.

Layout of an output folder (what `load_dataset(folder)` reads, through the card's YAML `configs`):

    README.md                               dataset card
    data/train-00000-of-00012.parquet       one shard per `shard_size` input rows, images embedded
    .generation/run.json                    the settings of the run (a rerun must match them to resume)
    .generation/shard-00000.json            written after its parquet: the shard is done; its rejection counts
    .generation/stats.json                  the statistics the card was rendered from (what merging reads)
"""

import glob
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
from datasets import Dataset, Features, Image, Value

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
    }
)
COLUMNS = list(FEATURES)
STATE_DIR = ".generation"
STATS_FILE = "stats.json"  # in STATE_DIR
StrPath = str | os.PathLike  # a folder or file name: `str` or `pathlib.Path`


def _atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, rename: a reader (or a rerun) sees all or nothing."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_json(path: StrPath, payload: dict) -> None:
    _atomic_write_bytes(path, json.dumps(payload, indent=2, sort_keys=True).encode())


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
    pq.write_table(table.data.table, buffer)
    _atomic_write_bytes(shard_path(output_dir, shard_index, num_shards), buffer.getvalue())
    atomic_write_json(shard_state_path(output_dir, shard_index), state)


def read_shard_states(output_dir: StrPath) -> dict[int, dict]:
    """{shard_index: state} of the shards already done."""
    states = {}
    for path in glob.glob(os.path.join(output_dir, STATE_DIR, "shard-*.json")):
        with open(path) as handle:
            states[int(os.path.basename(path)[6:11])] = json.load(handle)
    return states


def remove_stale_temporaries(output_dir: StrPath) -> None:
    for path in glob.glob(os.path.join(output_dir, "**", "*.tmp-*"), recursive=True):
        os.remove(path)


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
    card.save(os.path.join(output_dir, "README.md"))
    atomic_write_json(stats_path(output_dir), stats)
    return card


def stats_path(output_dir: StrPath) -> str:
    return os.path.join(output_dir, STATE_DIR, STATS_FILE)


def _parquet_bytes(output_dir: StrPath) -> int:
    return sum(os.path.getsize(path) for path in glob.glob(os.path.join(output_dir, "data", "*.parquet")))


def _feature_yaml(name: str, feature: Image | Value) -> dict:
    return {"name": name, "dtype": "image" if isinstance(feature, Image) else feature.dtype}


def merge_stats(states: dict[int, dict]) -> dict:
    """Sum the per-shard records into the card's statistics."""
    rejections, per_generator = Counter(), Counter()
    kept = generated = 0
    for state in states.values():
        rejections.update(state["rejections"])
        per_generator.update(state["per_generator"])
        kept += state["kept_rows"]
        generated += state["generated_rows"]
    return {
        "kept_rows": kept,
        "generated_rows": generated,
        "rejections": dict(sorted(rejections.items())),
        "per_generator": dict(sorted(per_generator.items())),
    }


# ---------------------------------------------------------------------------------------------------------------
# Merging datasets


def read_stats(folder: StrPath) -> dict:
    """The statistics `write_card` recorded for a triplet dataset folder; a clear error when there are none."""
    path = stats_path(folder)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{os.fspath(folder)!r} has no {STATE_DIR}/{STATS_FILE}: not a triplet dataset written by data_gen, or "
            "one written before its statistics were recorded (rerun `python -m data_gen.generate` with the same "
            "arguments: it resumes, regenerates nothing and records them)."
        )
    with open(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path!r} is not valid JSON ({error}); rerun the generation to rewrite it.") from None


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
    parts = [read_stats(folder) for folder in folders]
    shards = [shard for folder in folders for shard in _dataset_shards(folder)]
    written = {shard_path(output, index, len(shards)) for index in range(len(shards))}
    for index, shard in enumerate(shards):
        with open(shard, "rb") as handle:
            _atomic_write_bytes(shard_path(output, index, len(shards)), handle.read())
    for stale in set(glob.glob(os.path.join(output, "data", "train-*-of-*.parquet"))) - written:
        os.remove(stale)
    stats = {**merge_dataset_stats(parts), **card_fields}
    write_card(output, stats, repo_or_folder=repo_or_folder)
    return stats


# ---------------------------------------------------------------------------------------------------------------
# Publishing


def push_to_hub(output_dir: StrPath, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload SCOT triplets") -> "CommitInfo":
    """Create the dataset repo (if needed) and upload the card and shards (not the resume records)."""
    from huggingface_hub import HfApi

    if not os.path.exists(os.path.join(output_dir, "README.md")):
        raise ValueError(f"{output_dir!r} has no README.md: run generation to completion before pushing")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=output_dir,
        allow_patterns=["README.md", "data/*.parquet"],
        commit_message=commit_message,
    )
