"""Fixtures shared by every test package: tiny random backbones, a saved SCOT model built on one of them, and the CIR
benchmark folders in their official layouts. Package conftests add only what their own tests need."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.tiny_backbones import BUILDERS  # noqa: E402


@pytest.fixture(scope="session")
def backbone_folders(tmp_path_factory):
    """One saved tiny random encoder folder per supported backbone family, built once per test session."""
    root = tmp_path_factory.mktemp("backbones")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(params=sorted(BUILDERS))
def backbone(request, backbone_folders):
    """(family name, folder) for each supported backbone family."""
    return request.param, backbone_folders[request.param]


def save_tiny_scot(folder: Path, backbone_folder: Path) -> Path:
    """Save a SCOT model (the tiny random encoder of `backbone_folder` + an untrained Combiner) with its processor:
    what `--model` takes."""
    from modeling_scot import ScotModel, ScotProcessor

    ScotModel.from_backbone(backbone_folder).save_pretrained(folder)
    ScotProcessor.from_backbone(backbone_folder).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def scot_folder(tmp_path_factory, backbone_folders) -> Path:
    """A saved SCOT model on the tiny random CLIP, shared by the whole session: tests only read it."""
    return save_tiny_scot(tmp_path_factory.mktemp("scot_model") / "scot-tiny-clip", backbone_folders["clip"])


@pytest.fixture
def fresh_scot_folder(tmp_path, backbone_folders) -> Path:
    """A saved SCOT model on the tiny random CLIP with no card yet, one per test: for tests that write into the folder
    (model cards)."""
    return save_tiny_scot(tmp_path / "scot-tiny-clip", backbone_folders["clip"])


@pytest.fixture(scope="module")
def cir_data(tmp_path_factory) -> dict[str, Path]:
    """{"fashioniq": folder, "cirr": folder, "circo": folder}: tiny CIR benchmarks in their official layouts (see
    tests/trainers/cir_fixtures.py), built once per test module."""
    from tests.trainers.cir_fixtures import build_circo, build_cirr, build_fashioniq

    root = tmp_path_factory.mktemp("cir_benchmarks")
    return {"fashioniq": build_fashioniq(root), "cirr": build_cirr(root), "circo": build_circo(root)}
