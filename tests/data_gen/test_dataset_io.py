"""Whether a triplet dataset folder is complete: what `trainers/train.py` and the merge read before using it."""

import json
import logging

import pytest

from data_gen.dataset_io import IncompleteDatasetError, check_complete, merge_triplet_datasets
from data_gen.generate import main

from .conftest import make_image_folder


def _complete_run(tmp_path):
    output_dir = tmp_path / "out"
    main(["--image_folder", make_image_folder(tmp_path / "images", 6), "--output_dir", str(output_dir),
          "--engine", "templates", "--shard_size", "4"])
    return output_dir


def test_a_finished_run_is_recorded_complete_and_a_torn_record_is_incomplete(tmp_path):
    output_dir = _complete_run(tmp_path)
    status = json.loads((output_dir / ".generation" / "status.json").read_text())
    assert status["complete"] is True and status["num_shards"] == 2
    assert check_complete(output_dir) is True
    (output_dir / ".generation" / "status.json").write_text('{"complete": tr')
    with pytest.raises(ValueError, match=r"status\.json.* not valid JSON"):
        check_complete(output_dir)


def test_folders_written_before_the_record_and_foreign_folders(tmp_path, caplog):
    output_dir = _complete_run(tmp_path)
    (output_dir / ".generation" / "status.json").unlink()
    assert check_complete(output_dir) is True  # an older data_gen run: stats.json was written last, when complete
    (output_dir / ".generation" / "stats.json").unlink()
    (output_dir / "README.md").unlink()
    with pytest.raises(IncompleteDatasetError, match="generation was interrupted"):  # killed before its card
        check_complete(output_dir)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "train.parquet").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="data_gen"):
        assert check_complete(foreign) is None
    assert "no record of being complete" in caplog.text


def test_merging_refuses_an_incomplete_part(tmp_path):
    output_dir = _complete_run(tmp_path)
    status_file = output_dir / ".generation" / "status.json"
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "complete": False}))
    with pytest.raises(IncompleteDatasetError):
        merge_triplet_datasets([output_dir], tmp_path / "merged")
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "complete": True}))
    merge_triplet_datasets([output_dir], tmp_path / "merged")
    assert check_complete(tmp_path / "merged") is True


def test_a_rerun_removes_the_temporaries_a_killed_write_left_and_nothing_else(tmp_path):
    output_dir = _complete_run(tmp_path)
    ours = [output_dir / "data" / ".train-00001-of-00002.parquet.123.ab12cd.tmp",
            output_dir / ".generation" / ".shard-00001.json.123.ab12cd.tmp",
            output_dir / "data" / "train-00001-of-00002.parquet.tmp-123"]  # the name older versions used
    theirs = [output_dir / "notes.tmp", output_dir / "data" / "keep.tmp"]
    for path in ours + theirs:
        path.write_bytes(b"")
    _complete_run(tmp_path)
    assert [path.exists() for path in ours + theirs] == [False, False, False, True, True]
