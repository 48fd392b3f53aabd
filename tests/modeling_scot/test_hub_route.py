"""The Hub route: a saved folder carries its own code and loads with trust_remote_code=True where modeling_scot is
not installed; and importing modeling_scot pulls in none of the training / data-generation libraries."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from modeling_scot import ScotModel, ScotProcessor

REMOTE_LOAD = r"""
import json, sys
sys.modules["modeling_scot"] = None  # as if the package were not installed: `import modeling_scot` fails
try:
    import modeling_scot  # noqa: F401
    raise SystemExit("modeling_scot is still importable")
except ImportError:
    pass
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(images=[Image.new("RGB", (40, 40), (250, 10, 10)), Image.new("RGB", (40, 40), (10, 10, 250))],
                   text=["make it blue", "make it red"], return_tensors="pt")
with torch.no_grad():
    output = model(**inputs)
print(json.dumps({
    "model_class": type(model).__module__ + "." + type(model).__name__,
    "processor_class": type(processor).__module__ + "." + type(processor).__name__,
    "trainable": sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}),
    "composed": output.composed_embeds.tolist(),
}))
"""


def _clean_env(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    return env


@pytest.mark.slow
def test_saved_folder_loads_with_remote_code_without_the_package(backbone_folders, tmp_path):
    folder = tmp_path / "scot-remote"
    model = ScotModel.from_backbone(backbone_folders["clip"])
    processor = ScotProcessor.from_backbone(backbone_folders["clip"])
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert {"configuration_scot.py", "modeling_scot.py", "processing_scot.py"} <= {p.name for p in folder.iterdir()}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_scot.ScotModel"

    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(folder)],
        cwd=tmp_path, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["model_class"].startswith("transformers_modules.") and loaded["model_class"].endswith(".ScotModel")
    assert loaded["processor_class"].endswith(".ScotProcessor")
    assert loaded["trainable"] == ["combiner"]

    inputs = processor(images=[Image.new("RGB", (40, 40), (250, 10, 10)), Image.new("RGB", (40, 40), (10, 10, 250))],
                       text=["make it blue", "make it red"], return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).composed_embeds
    torch.testing.assert_close(torch.tensor(loaded["composed"]), expected, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_import_pulls_in_no_training_or_data_libraries(tmp_path):
    probe = ("import modeling_scot, sys; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'trl', 'peft', 'bitsandbytes', 'datasets'}))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=_clean_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
    # the check means something only where those libraries are installed (the dev extra installs them)
    assert subprocess.run([sys.executable, "-c", "import trl, peft, bitsandbytes, datasets"],
                          capture_output=True, cwd=tmp_path).returncode == 0
