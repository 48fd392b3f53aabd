"""Atomic writes: complete or absent, unique temporary names, nothing left behind on failure."""

import json

import pytest
import torch
from safetensors.torch import load_file

from scot_core import atomic_path, atomic_save_file, atomic_write_json, read_json


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "plan.json"
    atomic_write_json(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text('{"version": 2, "tor')  # a torn write ...
            raise RuntimeError("killed")  # ... interrupted before the rename
    assert json.loads(target.read_text()) == {"version": 1}
    assert [path.name for path in tmp_path.iterdir()] == ["plan.json"]


def test_concurrent_writers_get_distinct_temporary_names(tmp_path):
    target = tmp_path / "images-00017.safetensors"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("a")
        second.write_text("b")
    assert target.read_text() == "a"  # the outer writer renamed last


def test_atomic_save_file_round_trips_with_metadata(tmp_path):
    path = tmp_path / "embeds.safetensors"
    atomic_save_file({"embeds": torch.arange(6.0).reshape(2, 3).T}, path, metadata={"model": "tiny"})
    assert torch.equal(load_file(path)["embeds"], torch.arange(6.0).reshape(2, 3).T)


def test_read_json_names_a_torn_file(tmp_path):
    torn = tmp_path / "plan.json"
    torn.write_text('{"chunks": [1, 2')
    with pytest.raises(ValueError, match=r"plan\.json.*not valid JSON"):
        read_json(torn, "encoding plan")
