"""Fixtures shared by the trainers tests: CIR benchmark folders in their official layouts and a saved SCOT model."""

from pathlib import Path

import pytest

from tests.trainers.cir_fixtures import build_circo, build_cirr, build_fashioniq


@pytest.fixture(scope="module")
def cir_data(tmp_path_factory) -> dict[str, Path]:
    """{"fashioniq": folder, "cirr": folder, "circo": folder}, built once per test module."""
    root = tmp_path_factory.mktemp("cir_benchmarks")
    return {"fashioniq": build_fashioniq(root), "cirr": build_cirr(root), "circo": build_circo(root)}
