import glob
import io
import os
import re

import pytest
from datasets import load_dataset
from PIL import Image as PILImage

from data_gen.dataset_io import FEATURES
from data_gen.generate import TransformersEngine, TripletGenerator, main
from data_gen.models import load_causal_lm, load_tokenizer
from data_gen.sources import CaptionRow


def _generate(image_folder, output_dir, *extra):
    main(["--image_folder", image_folder, "--output_dir", str(output_dir), "--shard_size", "5", *extra])
    return load_dataset(str(output_dir), split="train")


def test_templates_run_gives_a_load_dataset_ready_folder_with_card(image_folder, tmp_path):
    triplets = _generate(image_folder, tmp_path / "out", "--engine", "templates", "--source_license", "cc-by-4.0")
    assert triplets.features == FEATURES
    assert len(triplets) > 0 and len(set(triplets["id"])) == len(triplets)
    first = triplets[0]
    assert isinstance(first["image"], PILImage.Image) and first["image"].size == (8, 8)
    assert first["generator"] == "templates" and first["source"] == "images"
    assert len(glob.glob(str(tmp_path / "out" / "data" / "train-*-of-00005.parquet"))) == 5
    card = open(tmp_path / "out" / "README.md").read()
    assert "configs:" in card and "dtype: image" in card and f"num_examples: {len(triplets)}" in card
    assert f"triplets kept: **{len(triplets)}**" in card and "`cc-by-4.0`" in card


def test_tiny_llm_run_counts_rejections_and_falls_back(image_folder, tiny_llm, tmp_path):
    args = ["--model", tiny_llm, "--max_new_tokens", "12", "--batch_size", "4"]
    triplets = _generate(
        image_folder, tmp_path / "out", *args, "--fallback", "templates", "--prompt_style", "two_step"
    )
    assert len(triplets) == 24  # every caption in the fixture has a template rule
    card = open(tmp_path / "out" / "README.md").read()
    # A random model writes junk: every answer is counted under some reason, and nothing crashed.
    reasons = [
        line.split("|")
        for line in card.splitlines()
        if line.startswith("| `") and line.rstrip("| ").split("|")[-1].strip().isdigit()
    ]
    rejected = sum(int(cells[2]) for cells in reasons if "templates_" not in cells[1])
    assert rejected == 24 - sum(generator != "templates" for generator in triplets["generator"])
    assert "### User" in card  # the prompt used is in the card
    # Same seed, same inputs → same output (greedy here; sampling is seeded per shard and batch).
    again = _generate(image_folder, tmp_path / "again", *args, "--fallback", "templates", "--prompt_style", "two_step")
    assert again.remove_columns("image").to_list() == triplets.remove_columns("image").to_list()


def test_sampling_is_deterministic_given_a_seed(tiny_llm):
    tokenizer = load_tokenizer(tiny_llm)
    engine = TransformersEngine(load_causal_lm(tiny_llm), tokenizer, batch_size=2, max_new_tokens=8, temperature=1.0)
    prompts = ["Caption: a red car", "Caption: a dog", "Caption: two cats"]
    assert engine.complete(prompts, seed=5) == engine.complete(prompts, seed=5)
    assert engine.complete(prompts, seed=5) != engine.complete(prompts, seed=6)


def test_malformed_model_output_is_counted_and_skipped():
    class ScriptedEngine:
        def complete(self, prompts, seed=0):
            answers = ["Modification: make the car blue\nModified caption: a blue car on a road", "\x00\x01", "sorry"]
            return answers[: len(prompts)]

    generator = TripletGenerator(ScriptedEngine(), tokenizer=None, generator_name="scripted")
    generator.prompt = lambda caption, *args: caption  # no tokenizer needed for a scripted engine
    rows = [CaptionRow(str(i), caption, i) for i, caption in enumerate(["a red car on a road", "a cat", "a dog"])]
    kept, rejections = generator.generate(rows)
    assert [(triplet.row.id, triplet.modification, triplet.generator, triplet.kind) for triplet in kept] == [
        ("0", "make the car blue", "scripted", None)
    ]
    assert rejections.as_dict() == {"unparseable": 2}


def test_captions_only_dataset_and_changed_settings_refuse_to_resume(tmp_path, capsys):
    from datasets import Dataset

    Dataset.from_dict({"text": ["a red car", "", "a blue vase with a rose"]}).save_to_disk(tmp_path / "captions")
    common = ["--dataset", str(tmp_path / "captions"), "--caption_column", "text", "--image_column", "none"]
    main([*common, "--output_dir", str(tmp_path / "out"), "--engine", "templates", "--no_embed_images"])
    triplets = load_dataset(str(tmp_path / "out"), split="train")
    assert len(triplets) == 2 and triplets["image"] == [None, None]
    assert "| `empty_caption` | 1 |" in open(tmp_path / "out" / "README.md").read()
    capsys.readouterr()
    assert main([
        *common, "--output_dir", str(tmp_path / "out"), "--engine", "templates", "--no_embed_images", "--seed", "1"
    ]) == 2
    assert "other settings (seed)" in capsys.readouterr().err
    assert main(["--dataset", str(tmp_path / "captions"), "--output_dir", str(tmp_path / "x"), "--engine",
                 "templates"]) == 2
    assert re.search(r"caption column 'caption' not found .*columns found: \['text'\]", capsys.readouterr().err)


def test_push_to_hub_goes_up_to_the_network(image_folder, tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    from data_gen.dataset_io import push_to_hub

    _generate(image_folder, tmp_path / "out", "--engine", "templates")
    # The real client builds the request; only the offline switch stops it at the HTTP layer.
    with pytest.raises(OfflineModeIsEnabled, match="api/repos/create"):
        push_to_hub(str(tmp_path / "out"), "someone/scot-triplets", token="hf_not_a_real_token")

    calls = []
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kwargs: calls.append(("create", repo_id, kwargs))
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: calls.append(("upload", kwargs)))
    push_to_hub(str(tmp_path / "out"), "someone/scot-triplets", private=True)
    assert calls[0] == ("create", "someone/scot-triplets", {"repo_type": "dataset", "private": True, "exist_ok": True})
    upload = calls[1][1]
    assert upload["repo_type"] == "dataset" and upload["allow_patterns"] == ["README.md", "data/*.parquet"]
    # resume records exist but are not uploaded
    assert os.path.isdir(os.path.join(upload["folder_path"], ".generation"))


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs (not even `except Exception`)."""


def _kill_after_shards(monkeypatch, shards):
    import data_gen.generate as generate

    write_shard, written = generate.write_shard, []

    def write_then_die(*args, **kwargs):
        if len(written) == shards:
            raise _Killed
        write_shard(*args, **kwargs)
        written.append(args[1])

    monkeypatch.setattr(generate, "write_shard", write_then_die)


def test_a_killed_run_reads_as_incomplete_until_a_rerun_finishes_it(image_folder, tmp_path, monkeypatch):
    # Issue 12, item 6: a killed run's folder used to load as a smaller dataset, without a word
    from data_gen.dataset_io import IncompleteDatasetError, check_complete

    output_dir = tmp_path / "out"
    command = ["--image_folder", image_folder, "--output_dir", str(output_dir), "--shard_size", "5",
               "--engine", "templates"]
    _kill_after_shards(monkeypatch, 2)
    with pytest.raises(_Killed):
        main(command)
    assert len(glob.glob(str(output_dir / "data" / "*.parquet"))) == 2  # two shards were written before the kill
    with pytest.raises(IncompleteDatasetError, match=r"generation was interrupted.*rerun .*data_gen\.generate"):
        check_complete(output_dir)
    with pytest.raises(FileNotFoundError):  # plain load_dataset does not read the two shards as the dataset
        load_dataset(str(output_dir), split="train")
    assert "not finished" in (output_dir / "README.md").read_text()

    monkeypatch.undo()
    _kill_after_shards(monkeypatch, 1)
    with pytest.raises(_Killed):  # a resumed run killed again: still incomplete
        main(command)
    with pytest.raises(IncompleteDatasetError):
        check_complete(output_dir)

    monkeypatch.undo()
    assert main(command) == 0
    assert check_complete(output_dir) is True
    assert sorted(load_dataset(str(output_dir), split="train")["id"]) == [f"images:img{i:05d}.png" for i in range(24)]


def _decompression_bomb_png(width=20_000, height=20_000):
    """A valid 1x1 PNG whose header claims width x height pixels (400 MP): cheap to write, costly to decode."""
    import struct
    import zlib

    buffer = io.BytesIO()
    PILImage.new("L", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(png[24:29])  # width, height, then depth .. interlace
    png[12:29] = header
    png[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(png)


def test_unreadable_images_are_skipped_and_counted_not_embedded(image_folder, tmp_path):
    # Issue 12, item 6: a text file and a 400 MP bomb were embedded and counted as kept triplets; ds[i] then raised
    folder = tmp_path / "images"
    (folder / "not-an-image.png").write_text("hello, I am text")
    (folder / "not-an-image.txt").write_text("a brown dog running on the beach number 100")
    (folder / "bomb.png").write_bytes(_decompression_bomb_png())
    (folder / "bomb.txt").write_text("a red car parked on a street number 101")
    triplets = _generate(image_folder, tmp_path / "out", "--engine", "templates")
    assert sorted(triplets["id"]) == [f"images:img{i:05d}.png" for i in range(24)]
    assert all(row["image"].size == (8, 8) for row in triplets)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| `unreadable_image` | 2 |" in card and "triplets kept: **24**" in card


def test_input_errors_are_one_line_and_exit_status_2(image_folder, tmp_path, capsys):
    # Issue 12, item 10: a malformed or non-UTF-8 input names its file (and line), no traceback
    (tmp_path / "images" / "metadata.jsonl").write_text('{"file_name": "img00000.png", "caption": "a dog"}\n{oops\n')
    status = main(["--image_folder", image_folder, "--output_dir", str(tmp_path / "out"), "--engine", "templates"])
    error = capsys.readouterr().err
    assert status == 2 and len(error.strip().splitlines()) == 1
    assert "metadata.jsonl:2" in error and "expected one JSON object per line" in error


@pytest.mark.slow
def test_scot_generate_console_script_says_one_line_and_exits_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "images").mkdir()
    PILImage.new("RGB", (4, 4)).save(tmp_path / "images" / "x.png")
    (tmp_path / "images" / "x.txt").write_bytes(b"caf\xe9")
    script = Path(sys.executable).with_name("scot-generate")
    result = subprocess.run(
        [str(script), "--image_folder", str(tmp_path / "images"), "--output_dir", str(tmp_path / "out"),
         "--engine", "templates"],
        cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("scot-generate: error: The caption file ")
    assert "Traceback" not in result.stderr and "x.txt" in result.stderr


def test_kinds_are_drawn_round_robin_over_a_seeded_shuffle():
    from collections import Counter

    from data_gen.generate import draw_kinds
    from data_gen.prompts import KINDS_OF_CHANGE

    kinds = draw_kinds(seed=0, start=0, count=10 * len(KINDS_OF_CHANGE) + 3)
    counts = Counter(kinds)
    assert set(counts) == set(KINDS_OF_CHANGE) and max(counts.values()) - min(counts.values()) <= 1
    assert draw_kinds(0, 5, 7) == kinds[5:12]  # a shard's kinds depend on its rows' positions only
    assert draw_kinds(1, 0, len(KINDS_OF_CHANGE)) != draw_kinds(0, 0, len(KINDS_OF_CHANGE))


def test_generator_asks_each_row_for_its_kind_and_records_it():
    prompts_seen = []

    class EchoEngine:
        def complete(self, prompts, seed=0):
            prompts_seen.extend(prompts)
            return ["Modification: make the car blue\nModified caption: a blue car on a road"] * len(prompts)

    generator = TripletGenerator(EchoEngine(), tokenizer=None, generator_name="echo", kinds=True)
    generator.prompt = lambda caption, step, modification, kind: f"{caption} | {kind}"
    rows = [CaptionRow(str(i), "a red car on a road", i) for i in range(3)]
    kept, _ = generator.generate(rows, kinds=["count", "size", "colour"])
    assert prompts_seen == [f"a red car on a road | {kind}" for kind in ("count", "size", "colour")]
    assert [triplet.kind for triplet in kept] == ["count", "size", "colour"]
    with pytest.raises(ValueError, match="one kind per row"):
        generator.generate(rows, kinds=["count"])


def test_a_rejected_row_is_asked_again_for_another_kind_before_the_templates():
    from data_gen.generate import retry_kind

    prompts_seen = []

    class KindEngine:  # answers well only when asked for a size change; otherwise repeats the caption
        def complete(self, prompts, seed=0):
            prompts_seen.extend(prompts)
            return ["Modification: make the car bigger\nModified caption: a big red car on a road" if "size" in prompt
                    else f"Modification: keep it\nModified caption: {prompt.split(' | ')[0]}" for prompt in prompts]

    rows = [CaptionRow(str(i), "a red car on a road", i) for i in range(3)]
    first_kinds = ["size", "count", "colour"]
    generator = TripletGenerator(KindEngine(), tokenizer=None, generator_name="kind", kinds=True, retries=1,
                                 fallback="templates")
    generator.prompt = lambda caption, step, modification, kind: f"{caption} | {kind}"
    count_retry = retry_kind(0, "count", 1)
    assert count_retry != "count"
    kept, rejections = generator.generate(rows, kinds=first_kinds)
    # the first pass asks every row once; the retry asks only the two rejected rows, each for the next kind
    assert prompts_seen == [f"a red car on a road | {kind}" for kind in first_kinds] + [
        f"a red car on a road | {retry_kind(0, kind, 1)}" for kind in ("count", "colour")]
    by_id = {triplet.row.id: triplet for triplet in kept}
    assert by_id["0"].generator == "kind" and by_id["0"].kind == "size"
    retried_ok = [str(i) for i, kind in ((1, "count"), (2, "colour")) if retry_kind(0, kind, 1) == "size"]
    for row_id in retried_ok:  # a retry that drew "size" is kept, under the kind it was asked for
        assert by_id[row_id].generator == "kind" and by_id[row_id].kind == "size"
    for row_id in {"1", "2"} - set(retried_ok):  # the others fall back to the templates after their retry
        assert by_id[row_id].generator == "templates"
    assert rejections["same_as_caption"] == 2  # first answers
    assert rejections["retry_same_as_caption"] == 2 - len(retried_ok)
    without_kinds = TripletGenerator(KindEngine(), tokenizer=None, kinds=False, retries=1)
    assert without_kinds.retries == 0  # the same prompt again would give the same greedy answer
    with pytest.raises(ValueError, match="retries"):
        TripletGenerator(KindEngine(), tokenizer=None, kinds=True, retries=-1)


def test_generated_rows_have_a_kind_column_and_the_card_counts_them(image_folder, tiny_llm, tmp_path):
    from data_gen.prompts import KINDS_OF_CHANGE

    triplets = _generate(image_folder, tmp_path / "out", "--model", tiny_llm, "--max_new_tokens", "8",
                         "--batch_size", "8", "--fallback", "templates")
    assert len(triplets) == 24 and set(triplets["kind"]) <= set(KINDS_OF_CHANGE)
    card = open(tmp_path / "out" / "README.md").read()
    assert "Kind of change:" in card  # the example prompt asks for a kind
    assert "Triplets by kind of change and generator" in card
    kind_rows = [line for line in card.splitlines() if line.startswith("| `") and line.endswith("% |")]
    assert sum(int(line.split("|")[-3]) for line in kind_rows) == len(triplets)
    # --kinds false: no kind asked for; the template rows still have the kind of their rule
    plain = _generate(image_folder, tmp_path / "plain", "--model", tiny_llm, "--max_new_tokens", "8",
                      "--batch_size", "8", "--fallback", "templates", "--kinds", "false")
    assert all(kind is None for kind, name in zip(plain["kind"], plain["generator"]) if name != "templates")
    assert all(kind in KINDS_OF_CHANGE for kind, name in zip(plain["kind"], plain["generator"]) if name == "templates")
