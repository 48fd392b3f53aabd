"""Fixtures for the card tests: a saved tiny SCOT model and the CIR benchmark folders in their official layouts."""

from pathlib import Path

import pytest

from tests.trainers.cir_fixtures import build_circo, build_cirr, build_fashioniq


@pytest.fixture(scope="module")
def cir_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cir_benchmarks")
    return {"fashioniq": build_fashioniq(root), "cirr": build_cirr(root), "circo": build_circo(root)}


@pytest.fixture
def scot_folder(tmp_path, backbone_folders) -> Path:
    """A saved SCOT model (tiny random CLIP + untrained Combiner) with its processor and no card yet; one per test,
    since the tests write cards into it."""
    from modeling_scot import ScotModel, ScotProcessor

    folder = tmp_path / "scot-tiny-clip"
    ScotModel.from_backbone(backbone_folders["clip"]).save_pretrained(folder)
    ScotProcessor.from_backbone(backbone_folders["clip"]).save_pretrained(folder)
    return folder

