"""Writing the triplet dataset: atomic parquet shards, per-shard progress records, the dataset card, `push_to_hub`.

Layout of an output folder (what `load_dataset(folder)` reads, through the card's YAML `configs`):

    README.md                               dataset card
    data/train-00000-of-00012.parquet       one shard per `shard_size` input rows, images embedded
    .generation/run.json                    the settings of the run (a rerun must match them to resume)
    .generation/shard-00000.json            written after its parquet: the shard is done; its rejection counts
"""

import glob
import io
import json
import os
from collections import Counter

import pyarrow.parquet as pq
from datasets import Dataset, Features, Image, Value

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


def _atomic_write_bytes(path, data):
    """Write to a temporary name in the same folder, fsync, rename: a reader (or a rerun) sees all or nothing."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_json(path, payload):
    _atomic_write_bytes(path, json.dumps(payload, indent=2, sort_keys=True).encode())


def shard_path(output_dir, shard_index, num_shards):
    return os.path.join(output_dir, "data", f"train-{shard_index:05d}-of-{num_shards:05d}.parquet")


def shard_state_path(output_dir, shard_index):
    return os.path.join(output_dir, STATE_DIR, f"shard-{shard_index:05d}.json")


def write_shard(output_dir, shard_index, num_shards, records, state):
    """Write one shard's kept triplets (a list of dicts with COLUMNS), then its state record.

    The order matters for resuming: the state file is the "done" mark and only appears once the parquet is in place.
    A shard killed half-way has neither (or only a stale `.tmp-*`), and is generated again from the start.
    """
    table = Dataset.from_dict({column: [record[column] for record in records] for column in COLUMNS}, features=FEATURES)
    buffer = io.BytesIO()
    # The arrow schema carries the features (Image included) in its metadata, so load_dataset decodes images.
    pq.write_table(table.data.table, buffer)
    _atomic_write_bytes(shard_path(output_dir, shard_index, num_shards), buffer.getvalue())
    atomic_write_json(shard_state_path(output_dir, shard_index), state)


def read_shard_states(output_dir):
    """{shard_index: state} of the shards already done."""
    states = {}
    for path in glob.glob(os.path.join(output_dir, STATE_DIR, "shard-*.json")):
        with open(path) as handle:
            states[int(os.path.basename(path)[6:11])] = json.load(handle)
    return states


def remove_stale_temporaries(output_dir):
    for path in glob.glob(os.path.join(output_dir, "**", "*.tmp-*"), recursive=True):
        os.remove(path)


# ---------------------------------------------------------------------------------------------------------------
# Dataset card


def write_card(output_dir, stats, repo_or_folder=None):
    """Render README.md from real statistics with `hub_cards.render_dataset_card`: its YAML `configs` and features
    are what `load_dataset(output_dir)` reads, so the folder needs nothing else."""
    from hub_cards import render_dataset_card

    card = render_dataset_card(
        stats,
        features=[_feature_yaml(name, feature) for name, feature in FEATURES.items()],
        num_bytes=_parquet_bytes(output_dir),
        repo_or_folder=repo_or_folder or os.path.basename(os.path.normpath(output_dir)),
    )
    card.save(os.path.join(output_dir, "README.md"))
    return card


def _parquet_bytes(output_dir):
    return sum(os.path.getsize(path) for path in glob.glob(os.path.join(output_dir, "data", "*.parquet")))


def _feature_yaml(name, feature):
    return {"name": name, "dtype": "image" if isinstance(feature, Image) else feature.dtype}


def merge_stats(states):
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
# Publishing


def push_to_hub(output_dir, repo_id, private=False, token=None, commit_message="Upload SCOT triplets"):
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
