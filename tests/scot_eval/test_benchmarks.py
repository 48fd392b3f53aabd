"""Loaders for the official FashionIQ / CIRR / CIRCO layouts, their schema errors, and the dataset checker."""

import json

import pytest

from scot_eval.benchmarks import check_benchmark, format_check_report, load_benchmark
from tests.trainers.cir_fixtures import FASHIONIQ_MISSING, build_circo


def test_fashioniq_one_task_per_category_with_both_captions(cir_data):
    tasks = load_benchmark("fashioniq", cir_data["fashioniq"], "val")
    assert [task.name for task in tasks] == ["dress", "shirt", "toptee"]
    dress = tasks[0]
    assert list(dress.gallery) == [f"B00DRESS{n}" for n in range(6)] + [FASHIONIQ_MISSING]
    assert dress.gallery["B00DRESS5"].suffix == ".jpg" and dress.gallery["B00DRESS0"].suffix == ".png"
    query = dress.queries[0]
    assert (query.reference, query.target) == ("B00DRESS0", "B00DRESS1")
    assert query.texts == ("is red.", "Has Short Sleeves?")
    assert dress.missing_images == [FASHIONIQ_MISSING]
    assert tasks[1].missing_images == []


@pytest.mark.parametrize("subfolder", ["", "cirr"])
def test_cirr_val_from_the_dataset_root_or_its_cirr_folder(cir_data, subfolder):
    (task,) = load_benchmark("cirr", cir_data["cirr"] / subfolder, "val")
    assert len(task.gallery) == 12 and not task.missing_images
    assert all(path.is_file() for path in task.gallery.values())  # "./dev/x.png" resolved against cirr_dataset/
    query = task.queries[0]
    assert (query.query_id, query.reference, query.target) == ("12060", "dev-0-0-img0", "dev-0-1-img0")
    assert query.texts == ("show three bottles of soft drink",) and query.reference in query.subset


def test_cirr_test1_has_no_targets_and_test_is_an_alias(cir_data):
    (task,) = load_benchmark("cirr", cir_data["cirr"], "test")
    assert task.split == "test1" and not task.has_targets
    assert all(query.target is None and len(query.subset) == 6 for query in task.queries)


def test_circo_val_ground_truths_and_the_coco_gallery(cir_data):
    (task,) = load_benchmark("circo", cir_data["circo"], "val")
    assert len(task.gallery) == 12 and not task.missing_images
    query = task.queries[0]
    assert (query.reference, query.target) == ("85932", "9761")
    assert query.ground_truth == ("9761", "489535", "57541", "375057", "119881")
    (test_task,) = load_benchmark("circo", cir_data["circo"], "test")
    assert not test_task.has_targets and test_task.queries[2].query_id == "2"


def test_circo_gallery_from_image_info_reports_absent_files(tmp_path):
    data_dir = build_circo(tmp_path)
    (data_dir / "COCO2017_unlabeled" / "unlabeled2017" / f"{57541:012d}.jpg").unlink()
    (task,) = load_benchmark("circo", data_dir, "val")
    assert len(task.gallery) == 12 and task.missing_images == ["57541"]
    # without image_info_unlabeled2017.json the gallery is every .jpg on disk
    (data_dir / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json").unlink()
    (task,) = load_benchmark("circo", data_dir, "val")
    assert len(task.gallery) == 11 and task.missing_images == ["57541"]  # still needed as a ground truth


def _rewrite(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "benchmark, relative_path, change, message",
    [
        ("fashioniq", "captions/cap.shirt.val.json", lambda data: data[1].pop("candidate"),
         r"cap.shirt.val.json: entry 1 has no 'candidate' \(expected the reference image id\)"),
        ("fashioniq", "captions/cap.toptee.val.json", lambda data: data[0].update(captions=["only one"]),
         "entry 0 has captions=.*expected two strings"),
        ("cirr", "cirr/captions/cap.rc2.val.json", lambda data: data[2].pop("target_hard"),
         "entry 2 has no 'target_hard'"),
        ("cirr", "cirr/captions/cap.rc2.val.json", lambda data: data[0].update(reference="dev-99-img0"),
         "names image 'dev-99-img0', which .*split.rc2.val.json lacks"),
        ("circo", "annotations/val.json", lambda data: data[1].update(gt_img_ids=[]),
         "entry 1 has gt_img_ids=.*expected a non-empty list"),
        ("circo", "annotations/val.json", lambda data: data[0].update(reference_img_id="85932"),
         "entry 0 has reference_img_id='85932', expected a COCO image id"),
        # a lone surrogate (JSON "\ud800") reaches the tokenizer as a TypeError naming nothing: refused at loading
        ("fashioniq", "captions/cap.dress.val.json", lambda data: data[2]["captions"].__setitem__(1, "is \ud800"),
         r"cap.dress.val.json: the text at \[2\]\['captions'\]\[1\] is not valid Unicode"),
        ("cirr", "cirr/captions/cap.rc2.val.json", lambda data: data[0].update(caption="add a \ud83d hat"),
         r"cap.rc2.val.json: the text at \[0\]\['caption'\] is not valid Unicode .*'add a \\ud83d hat'"),
        ("circo", "annotations/val.json", lambda data: data[1].update({"\udfff": 1}),
         r"val.json: the text at a key of \[1\] is not valid Unicode"),
    ],
)
def test_schema_errors_name_the_file_the_entry_and_what_was_expected(tmp_path, benchmark, relative_path, change,
                                                                    message):
    from tests.trainers import cir_fixtures

    data_dir = {"fashioniq": cir_fixtures.build_fashioniq, "cirr": cir_fixtures.build_cirr,
                "circo": cir_fixtures.build_circo}[benchmark](tmp_path)
    _rewrite(data_dir / relative_path, change)
    with pytest.raises(ValueError, match=message):
        load_benchmark(benchmark, data_dir, "val")


def test_missing_files_and_bad_arguments_get_clear_errors(tmp_path, cir_data):
    with pytest.raises(FileNotFoundError,
                       match="expected the file .*cap.rc2.train.json|expected the file .*split.rc2.train.json"):
        load_benchmark("cirr", cir_data["cirr"], "train")
    with pytest.raises(FileNotFoundError, match=r"expected .*cirr[/\\]captions"):
        load_benchmark("cirr", tmp_path, "val")
    with pytest.raises(ValueError, match="circo has no split 'train'"):
        load_benchmark("circo", cir_data["circo"], "train")
    with pytest.raises(ValueError, match="Unknown benchmark 'coco'"):
        load_benchmark("coco", tmp_path, "val")
    broken = tmp_path / "annotations" / "val.json"
    broken.parent.mkdir()
    broken.write_text("[{not json")
    with pytest.raises(ValueError, match="val.json is not valid JSON"):
        load_benchmark("circo", tmp_path, "val")


def test_check_counts_missing_and_unreadable_images(tmp_path):
    from tests.trainers.cir_fixtures import build_fashioniq

    data_dir = build_fashioniq(tmp_path)
    (data_dir / "images" / "B00SHIRT3.png").write_bytes(b"<html>404</html>")  # a broken download
    report = check_benchmark("fashioniq", data_dir, show_progress=False)
    dress, shirt = report["splits"]["val/dress"], report["splits"]["val/shirt"]
    assert (dress["queries"], dress["gallery_images"]) == (4, 7)
    assert (dress["missing_images"], dress["queries_to_skip"]) == (1, 1)
    assert dress["examples_missing"] == [FASHIONIQ_MISSING]
    assert (shirt["unreadable_images"], shirt["examples_unreadable"]) == (1, ["B00SHIRT3"])
    assert shirt["queries_to_skip"] == 1
    text = format_check_report(report)
    assert "val/dress" in text and "1 missing" in text and "unreadable: B00SHIRT3" in text
    # existence only: the broken file is not opened
    assert check_benchmark("fashioniq", data_dir, read_images=False)["splits"]["val/shirt"]["unreadable_images"] == 0


def test_check_counts_what_evaluation_skips_per_split(tmp_path):
    data_dir = build_circo(tmp_path)
    for image_id in (85932, 2097, 355099):  # val query 0's reference, test query 0's, val query 2's target
        (data_dir / "COCO2017_unlabeled" / "unlabeled2017" / f"{image_id:012d}.jpg").unlink()
    report = check_benchmark("circo", data_dir, read_images=False)["splits"]
    # val: the query without its reference is skipped; the missing target is one of the ground truths, scored as
    # the server does. test: a submission lists every query (ranked by its text where the image is missing)
    assert (report["val"]["queries_to_skip"], report["test"]["queries_to_skip"]) == (1, 0)


def test_check_reports_absent_splits_without_failing(cir_data):
    report = check_benchmark("cirr", cir_data["cirr"], ["val", "train"], show_progress=False)
    assert report["splits"]["val"]["queries"] == 6
    assert "not found" in report["splits"]["train"]["error"]
