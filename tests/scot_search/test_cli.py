import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scot_search.cli import main


def test_query_prints_a_table_and_json(gallery_index, gallery_folder, capsys):
    reference = str(gallery_folder / "round" / "circle-red.png")
    assert main(["query", "--index", str(gallery_index), "--image", reference, "--text", "in green", "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("composed query: text weight λ = ")
    assert lines[1].split() == ["rank", "score", "id"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "2", "3", "4"]

    assert main(["query", "--index", str(gallery_index), "--image", reference, "--text", "in green", "-k", "4",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "composed" and 0 < result["text_weight"] < 1
    assert [hit["rank"] for hit in result["hits"]] == [1, 2, 3, 4]
    assert [hit["id"] for hit in result["hits"]] == [line.split()[2] for line in lines[2:]]
    assert all(Path(hit["path"]).is_file() for hit in result["hits"])

    assert main(["query", "--index", str(gallery_index), "--text", "a blue bar", "-k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "text"


def test_index_reports_counts(gallery_folder, scot_folder, tmp_path, capsys):
    output = tmp_path / "hnsw-index"
    assert main(["index", str(gallery_folder), "--model", str(scot_folder), "--output", str(output),
                 "--index_type", "hnsw", "--ef_search", "64"]) == 0
    out = capsys.readouterr().out
    assert "indexed 12 images" in out and "skipped 1 unreadable" in out and "ignored 1 non-image" in out
    description = json.loads((output / "index.json").read_text())
    assert description["index_type"] == "hnsw" and description["index_options"]["ef_search"] == 64
    assert description["model_name_or_path"] == str(Path(scot_folder).resolve())


def test_errors_are_one_line_and_exit_2(gallery_index, gallery_folder, scot_folder, tmp_path, capsys):
    reference = str(gallery_folder / "round" / "circle-red.png")
    cases = [
        (["query", "--index", str(gallery_index), "--image", reference, "--text", " "], "text is empty"),
        (["query", "--index", str(gallery_index), "--image", str(tmp_path / "nope.png")], "does not exist"),
        (["query", "--index", str(gallery_index)], "give --image, --text or both"),
        (["query", "--index", str(tmp_path), "--text", "x"], "not a complete gallery index"),
        (["index", str(tmp_path / "missing"), "--model", str(scot_folder), "--output", str(tmp_path / "i")],
         "does not exist"),
        (["index", str(gallery_folder), "--model", str(scot_folder), "--output", str(tmp_path / "i"), "--nprobe", "3"],
         "do not apply"),
        (["index", str(gallery_folder), "--model", str(tmp_path / "no-model"), "--output", str(tmp_path / "i")],
         "is not a model this package can load"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def truncate(path: Path) -> None:
    """Cut `path` to half its size, as a full disk or an interrupted copy leaves it."""
    os.truncate(path, path.stat().st_size // 2)


def test_damaged_files_bad_text_and_unfitting_options_are_one_line(gallery_index, gallery_folder, scot_folder,
                                                                   tmp_path, capsys):
    damaged_index, damaged_model = tmp_path / "damaged-index", tmp_path / "damaged-model"
    shutil.copytree(gallery_index, damaged_index)
    truncate(damaged_index / "embeddings.safetensors")
    shutil.copytree(scot_folder, damaged_model)
    truncate(damaged_model / "model.safetensors")
    cases = [
        (["query", "--index", str(damaged_index), "--text", "x"],
         f"gallery embeddings {str(damaged_index / 'embeddings.safetensors')!r} cannot be read"),
        (["query", "--index", str(gallery_index), "--model", str(damaged_model), "--text", "x"],
         f"weights of the model {str(damaged_model)!r} cannot be read"),
        # what Python makes of command-line bytes that are not UTF-8 (b"in \xff blue")
        (["query", "--index", str(gallery_index), "--text", "in \udcff blue"],
         "'\\udcff' at position 3 is a lone surrogate"),
        # 13 image files: refused before the model is loaded and anything is encoded or written
        (["index", str(gallery_folder), "--model", str(damaged_model), "--output", str(tmp_path / "ivf"),
          "--index_type", "ivf", "--nlist", "100"], "more lists than the gallery has images (13)"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        # the last line (above it, at most transformers' "Loading weights" progress bar)
        assert message in err.strip().splitlines()[-1] and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "ivf").exists()


@pytest.mark.slow
def test_console_script_is_installed():
    script = Path(sys.executable).with_name("scot-search")
    completed = subprocess.run([str(script), "query", "--help"], capture_output=True, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "--image" in completed.stdout and "--json" in completed.stdout


def test_index_a_datasets_dataset(gallery_folder, scot_folder, tmp_path, capsys):
    from datasets import Dataset
    from datasets import Image as ImageFeature

    paths = sorted(str(path) for path in gallery_folder.rglob("*-green.png"))
    dataset = Dataset.from_dict({"image": paths, "name": [Path(path).stem for path in paths]})
    (tmp_path / "green-shapes" / "data").mkdir(parents=True)
    dataset.cast_column("image", ImageFeature()).to_parquet(tmp_path / "green-shapes" / "data" / "train.parquet")

    output = tmp_path / "dataset-index"
    assert main(["index", str(tmp_path / "green-shapes"), "--dataset", "--id_column", "name", "--model",
                 str(scot_folder), "--output", str(output)]) == 0
    assert f"indexed {len(paths)} images" in capsys.readouterr().out
    assert main(["query", "--index", str(output), "--image", paths[0], "-k", "1", "--json", "--keep_reference"]) == 0
    hit = json.loads(capsys.readouterr().out)["hits"][0]
    assert hit["id"] == Path(paths[0]).stem and hit["row"] == 0 and hit["path"] == ""

    # what the web demo shows for a dataset gallery's hit: the image, read back from the indexed dataset
    import numpy as np
    from PIL import Image

    from scot_search import GallerySearcher, SearchHit

    searcher = GallerySearcher.from_pretrained(output)
    shown = searcher.hit_image(SearchHit(rank=1, id=hit["id"], score=hit["score"], row=hit["row"]))
    np.testing.assert_array_equal(np.asarray(shown.convert("RGB")), np.asarray(Image.open(paths[0]).convert("RGB")))


def test_index_output_in_the_gallery_is_refused_and_nothing_is_deleted(gallery_folder, scot_folder, tmp_path, capsys):
    import shutil

    gallery = tmp_path / "photos"
    shutil.copytree(gallery_folder, gallery)
    (gallery / "chunks").mkdir()  # a user's sub-folder that happens to share a name with the index's own
    shutil.copy(gallery_folder / "round" / "circle-red.png", gallery / "chunks" / "holiday.png")
    before = {path: path.read_bytes() for path in gallery.rglob("*") if path.is_file()}
    for output in (gallery, gallery / "index", gallery / "chunks"):
        assert main(["index", str(gallery), "--model", str(scot_folder), "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert "would mix with the images" in err and "Traceback" not in err, err
    assert {path: path.read_bytes() for path in gallery.rglob("*") if path.is_file()} == before

    documents = tmp_path / "documents"  # not a gallery, but not an index either
    documents.mkdir()
    (documents / "ids.parquet").write_bytes(b"my table")
    assert main(["index", str(gallery), "--model", str(scot_folder), "--output", str(documents)]) == 2
    assert "is not a SCOT gallery index" in capsys.readouterr().err
    assert (documents / "ids.parquet").read_bytes() == b"my table"


def test_a_concurrent_index_run_gets_one_line(gallery_index, gallery_folder, scot_folder, capsys):
    import fcntl

    with open(gallery_index / ".scot-index.lock", "a") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["index", str(gallery_folder), "--model", str(scot_folder), "--output", str(gallery_index)]) == 2
    err = capsys.readouterr().err
    assert "another run is writing here" in err.lower() and "Traceback" not in err
