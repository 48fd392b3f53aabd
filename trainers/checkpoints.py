"""Checkpoint folders that are complete or absent.

transformers' `Trainer._save_checkpoint` writes `checkpoint-N/` file by file (weights, optimizer, scheduler, RNG
states, `trainer_state.json` last), so a full disk or a kill during a save leaves a `checkpoint-N` whose
`optimizer.pt` is truncated, and resuming from it fails inside torch. `ScotTrainer` stages each save instead:

    incomplete-checkpoint-N/checkpoint-N/   where Trainer writes (its run folder is redirected while it saves)
    checkpoint-N/                           the same folder, renamed here once every file is written and synced

The staging name matches neither `get_last_checkpoint` nor Trainer's `checkpoint-*` rotation, so an interrupted save
is never resumed from or rotated; it stays, clearly named, until the same step is saved again.
`last_complete_checkpoint` (what a rerun resumes from) warns about such leftovers and also skips a `checkpoint-N` that
another writer (plain `Trainer`, an older version of this package) left incomplete: no readable `trainer_state.json`,
or a truncated safetensors / torch file.
"""

import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

STAGING_PREFIX = "incomplete-"
TRAINER_STATE_NAME = "trainer_state.json"  # Trainer writes it last: without it, the save did not finish
CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")  # get_last_checkpoint's pattern
STAGING_PATTERN = re.compile(rf"^{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-(\d+)$")
TORCH_FILE_SUFFIXES = (".pt", ".pth", ".bin")  # torch.save's zip format: a truncated file lacks the zip's directory


def staging_folder(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of `step` is written before it is published as `run_dir/checkpoint-{step}`."""
    return Path(run_dir, f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-{step}")


def _sync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`: a write the kernel accepted may still fail on its way to disk
    (a full disk under delayed allocation, NFS), and a rename must never publish data that is not there."""
    for parent, _, files in os.walk(folder, topdown=False):
        for name in [*files, "."]:
            descriptor = os.open(os.path.join(parent, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def publish_checkpoint(staged: Path, final: Path) -> None:
    """Rename the complete checkpoint `staged` (inside its staging folder) to `final`, then remove the staging
    folder. A `final` already there (an earlier run's save of the same step, which Trainer would overwrite in place)
    is first moved into the staging folder, so `final` is always either the old complete checkpoint, absent, or the
    new complete one."""
    staging = staged.parent
    _sync_tree(staged)
    if final.exists():
        os.rename(final, staging / f"replaced-{final.name}")
    os.rename(staged, final)
    shutil.rmtree(staging)  # it now holds only what this function moved there
    descriptor = os.open(final.parent, os.O_RDONLY)  # make the renames durable
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` cannot be resumed from (a short phrase), or None when it looks complete: `trainer_state.json`
    readable, and every safetensors and torch file at its top level whole (checked from the files' headers and
    ends, without loading them)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "it is not a folder"
    if STAGING_PATTERN.match(folder.name):
        return "its name marks a save that did not finish"
    try:
        state = json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"it has no {TRAINER_STATE_NAME} (Trainer writes it last, so the save did not finish)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"its {TRAINER_STATE_NAME} is unreadable or truncated"
    if not isinstance(state, dict) or "global_step" not in state:
        return f"its {TRAINER_STATE_NAME} holds no global_step"
    from safetensors import SafetensorError, safe_open

    for file in sorted(folder.iterdir()):
        if not file.is_file():
            continue
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt"):  # checks that the data covers the header's offsets
                    pass
            except (SafetensorError, OSError):
                return f"{file.name} is truncated or damaged"
        elif file.suffix in TORCH_FILE_SUFFIXES and not zipfile.is_zipfile(file):
            return f"{file.name} is truncated or damaged"
    return None


def _numbered_folders(folder: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    found = []
    for entry in folder.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The `checkpoint-N` of `output_dir` with the highest N that is complete (`checkpoint_problem`), as
    `get_last_checkpoint` would pick it but skipping, with a warning, incomplete ones and leftover staging folders
    of interrupted saves. None when there is none."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    for _, leftover in _numbered_folders(output_dir, STAGING_PATTERN):
        logger.warning("%s holds a checkpoint save that did not finish (killed, or out of disk space): it is not "
                       "resumed from, and is replaced when that step is saved again.", leftover)
    for _, checkpoint in _numbered_folders(output_dir, CHECKPOINT_PATTERN):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint)
        logger.warning("Skipping the incomplete checkpoint %s: %s.", checkpoint, problem)
    return None
