"""`python -m demo.transitions`: a kind's queries split by transition, as CIRR folders of their own."""

import json

from demo.transitions import CAPTIONS, format_table, split_by_transition


def test_each_transition_gets_its_queries_and_links_to_the_kinds_images(tmp_path):
    kind = tmp_path / "orientation"
    (kind / CAPTIONS).parent.mkdir(parents=True)
    (kind / "cirr" / "image_splits").mkdir()
    (kind / "dev").mkdir()
    (kind / "dev" / "a-upright.png").write_bytes(b"png")
    queries = [{"pairid": 0, "reference": "a-upright", "target_hard": "a-mirrored", "caption": "mirror it"},
               {"pairid": 1, "reference": "a-mirrored", "target_hard": "a-upright", "caption": "undo the flip"},
               {"pairid": 2, "reference": "b-upright", "target_hard": "b-mirrored", "caption": "mirror it"}]
    (kind / CAPTIONS).write_text(json.dumps(queries))
    folders = split_by_transition(kind, tmp_path / "scratch")
    assert sorted(folders) == ["mirrored -> upright", "upright -> mirrored"]
    pairs = [query["pairid"] for query in json.loads((folders["upright -> mirrored"] / CAPTIONS).read_text())]
    assert pairs == [0, 2]
    assert (folders["mirrored -> upright"] / "dev" / "a-upright.png").read_bytes() == b"png"
    assert (kind / CAPTIONS).read_text() == json.dumps(queries)  # the benchmark's own files are untouched


def test_the_table_has_a_row_per_transition():
    table = format_table({"upright -> mirrored": {"queries": 37, "image": 81.08, "scot": 75.68}})
    assert "| upright -> mirrored | 37 | 81.1 | 75.7 |" in table
