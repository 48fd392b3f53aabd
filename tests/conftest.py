import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

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


@pytest.fixture(scope="session")
def scot_folder(tmp_path_factory, backbone_folders):
    """A saved SCOT model (tiny random CLIP + untrained Combiner) with its processor: what `--model` takes."""
    from modeling_scot import ScotModel, ScotProcessor

    folder = tmp_path_factory.mktemp("scot_model") / "scot-tiny-clip"
    ScotModel.from_backbone(backbone_folders["clip"]).save_pretrained(folder)
    ScotProcessor.from_backbone(backbone_folders["clip"]).save_pretrained(folder)
    return folder
