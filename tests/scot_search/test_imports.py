"""The search library stands on the model and the encoding core alone: importing it (or its CLI) loads nothing of the
training, evaluation, data-generation or demo packages, nor Gradio (only `scot-search web` needs it)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
NOT_NEEDED = ("trainers", "scot_eval", "data_gen", "hub_cards", "demo", "gradio")


@pytest.mark.slow
@pytest.mark.parametrize("module", ["scot_search", "scot_search.cli"])
def test_import_pulls_in_no_training_evaluation_or_demo_package(module):
    probe = (f"import sys, {module}; "
             f"print(sorted({{name.split('.')[0] for name in sys.modules}} & {set(NOT_NEEDED)!r}))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]", f"importing {module} imported {result.stdout.strip()}"
    # the check means something only where those packages can be imported
    importable = subprocess.run([sys.executable, "-c", "import trainers, data_gen, hub_cards, demo, gradio"],
                                cwd=REPOSITORY, capture_output=True)
    assert importable.returncode == 0, importable.stderr[-3000:]
