import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_scot import ScotModel, ScotProcessor
from scot_search import GalleryIndex, build_gallery_index, list_dataset_images, list_image_folder


@pytest.fixture(scope="module")
def model_and_processor(scot_folder):
    return ScotModel.from_pretrained(scot_folder).eval(), ScotProcessor.from_pretrained(scot_folder)


def encode(model, processor, paths) -> np.ndarray:
    images = [Image.open(path).convert("RGB") for path in paths]
    with torch.no_grad():
        return model.get_image_features(processor(images=images, return_tensors="pt")["pixel_values"]).numpy()


def test_folder_listing_skips_hidden_and_counts_other_files(gallery_folder, tmp_path):
    items, skipped = list_image_folder(gallery_folder)
    assert len(items) == 13  # 12 drawings + broken.png; notes.txt ignored, .env and .git/ hidden
    assert skipped == {"not_an_image_file": 1, "link_outside_gallery": 0}
    assert [item.id for item in items] == sorted(item.id for item in items)
    assert "round/circle-red.png" in {item.id for item in items}
    with pytest.raises(NotADirectoryError, match="does not exist"):
        list_image_folder(tmp_path / "missing")


def test_index_holds_the_models_embeddings_and_skips_unreadable_files(gallery_index, gallery_folder,
                                                                        model_and_processor):
    index = GalleryIndex.load(gallery_index)
    assert len(index) == 12 and index.index_type == "flat"
    assert index.metadata["skipped"] == {"unreadable_image": 1, "not_an_image_file": 1, "link_outside_gallery": 0}
    assert index.metadata["unreadable_images"] == ["broken.png"]
    assert not (gallery_index / "chunks").exists()  # the resume state is removed once the index is complete
    expected = encode(*model_and_processor, [gallery_folder / item_id for item_id in index.ids])
    np.testing.assert_allclose(index.embeds, expected, atol=1e-5)
    assert index.paths[0] == str((gallery_folder / index.ids[0]).resolve())
    # an image-only query with a gallery image finds that image first, at cosine 1
    scores, positions = index.search(expected[3:4], k=3)
    assert positions[0, 0] == 3 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_flat_search_equals_brute_force_ranking():
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((500, 16)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    index = GalleryIndex(gallery, [str(i) for i in range(500)])
    scores, positions = index.search(torch.from_numpy(queries), k=20)
    expected = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(positions, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ gallery.T, expected, axis=1), atol=1e-5)
    assert index.search(queries[0], k=10_000)[1].shape == (1, 500)  # k beyond the gallery: the whole gallery


def assert_exact_top_k(scores: np.ndarray, positions: np.ndarray, all_scores: np.ndarray) -> None:
    """`scores` are the k best of each row of `all_scores`, `positions` where they are, listed by score and equal
    scores by position."""
    k = scores.shape[1]
    np.testing.assert_array_equal(scores, -np.sort(-all_scores, axis=1)[:, :k])
    np.testing.assert_array_equal(np.take_along_axis(all_scores, positions, axis=1), scores)
    for row_scores, row_positions in zip(scores, positions):
        np.testing.assert_array_equal(np.lexsort((row_positions, -row_scores)), np.arange(k))


def test_one_query_and_blocks_of_many_find_the_exact_top_k_with_ties(monkeypatch):
    import scot_search.index

    # small integers: every score is exact whatever the order of summation, and many are equal
    rng = np.random.default_rng(2)
    gallery = rng.integers(-3, 4, (300, 16)).astype(np.float32)
    queries = rng.integers(-3, 4, (25, 16)).astype(np.float32)
    all_scores = queries @ gallery.T
    index = GalleryIndex(gallery, [str(i) for i in range(300)])
    one_by_one = [index.search(query, k=30) for query in queries]  # matrix-vector product + one selection
    assert_exact_top_k(np.concatenate([scores for scores, _ in one_by_one]),
                       np.concatenate([positions for _, positions in one_by_one]), all_scores)
    scores, positions = index.search(queries, k=30)  # matrix product + torch.topk
    assert_exact_top_k(scores, positions, all_scores)
    assert positions.dtype == np.int64 and scores.dtype == np.float32

    monkeypatch.setattr(scot_search.index, "SCORE_BLOCK_BYTES", 4 * 300 * 4)  # blocks of 4 queries (and one of 1)
    assert_exact_top_k(*index.search(queries, k=30), all_scores)


@pytest.mark.parametrize("index_type, options", [("ivf", {"nlist": 16, "nprobe": 8}), ("hnsw", {"hnsw_m": 16})])
def test_approximate_indexes_find_most_exact_neighbours_and_round_trip(tmp_path, index_type, options):
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 32))
    gallery = (centres[rng.integers(0, 20, 4000)] + 0.3 * rng.standard_normal((4000, 32))).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[:50] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
    exact = GalleryIndex(gallery, [str(i) for i in range(4000)]).search(queries, 10)[1]
    index = GalleryIndex(gallery, [str(i) for i in range(4000)], index_type=index_type, **options)
    found = index.search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.9, recall
    index.save(tmp_path / "index")
    assert (tmp_path / "index" / "index.faiss").is_file()
    reloaded = GalleryIndex.load(tmp_path / "index")
    assert reloaded.index_type == index_type and reloaded.index_options == index.index_options
    np.testing.assert_array_equal(reloaded.search(queries, 10)[1], found)


def test_index_options_faiss_would_fail_on_are_refused_with_the_gallery_size():
    from scot_search.index import check_index_options

    assert check_index_options("ivf", 4000, {}) == {"nlist": 102, "nprobe": 16}
    assert check_index_options("ivf", 13, {"nlist": 13})["nlist"] == 13
    with pytest.raises(ValueError, match=r"nlist = 14 \(--nlist\) is more lists than the gallery has images \(13\)"):
        check_index_options("ivf", 13, {"nlist": 14})
    with pytest.raises(ValueError, match="must be at least 1: hnsw_m = -2"):
        check_index_options("hnsw", 100, {"hnsw_m": -2})
    with pytest.raises(ValueError, match="more lists than the gallery"):  # the Python API checks as the CLI does
        GalleryIndex(np.eye(8, dtype=np.float32), [str(i) for i in range(8)], index_type="ivf", nlist=9)


def test_interrupted_encoding_resumes_at_the_first_missing_chunk(gallery_folder, model_and_processor, tmp_path,
                                                                 monkeypatch):
    model, processor = model_and_processor
    items, _ = list_image_folder(gallery_folder)
    straight = build_gallery_index(model, processor, items, tmp_path / "straight", chunk_size=4, batch_size=2,
                                   show_progress=False)

    original = type(model).get_image_features
    calls = {"count": 0}

    def failing_after_two_chunks(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] > 4:  # 2 batches per chunk: chunks 0 and 1 are saved, then the "crash"
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "get_image_features", failing_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        build_gallery_index(model, processor, items, tmp_path / "resumed", chunk_size=4, batch_size=2,
                            show_progress=False)
    assert sorted(path.name for path in (tmp_path / "resumed" / "chunks").glob("*.safetensors")) == [
        "images-00000.safetensors", "images-00001.safetensors"]
    with pytest.raises(FileNotFoundError, match="interrupted"):
        GalleryIndex.load(tmp_path / "resumed")

    calls["count"] = -10_000  # no more crashes; count what the rerun encodes
    resumed = build_gallery_index(model, processor, items, tmp_path / "resumed", chunk_size=4, batch_size=2,
                                  show_progress=False)
    assert calls["count"] + 10_000 == 3  # 13 images = chunks of 4, 4, 4, 1: only chunks 2 and 3 (3 batches) re-run
    assert resumed.ids == straight.ids
    np.testing.assert_allclose(resumed.embeds, straight.embeds, atol=1e-6)


def test_changed_image_list_starts_over(gallery_folder, model_and_processor, tmp_path, caplog):
    model, processor = model_and_processor
    items, _ = list_image_folder(gallery_folder)
    chunks = tmp_path / "index" / "chunks"
    chunks.mkdir(parents=True)
    (chunks / "plan.json").write_text(json.dumps({"digest": "another gallery", "num_images": 3}))
    (chunks / "images-00000.safetensors").write_bytes(b"stale")
    index = build_gallery_index(model, processor, items[:5], tmp_path / "index", show_progress=False)
    assert "encoding from the start" in caplog.text
    assert index.ids == [item.id for item in items[:5] if item.id != "broken.png"]


def test_dataset_gallery_with_id_column(model_and_processor, tmp_path, gallery_folder):
    from datasets import Dataset
    from datasets import Image as ImageFeature

    model, processor = model_and_processor
    paths = sorted(str(path) for path in gallery_folder.rglob("*-red.png"))
    cells = [{"bytes": open(path, "rb").read(), "path": None} for path in paths] + [{"bytes": b"junk", "path": None}]
    dataset = Dataset.from_dict({"picture": cells, "sku": [f"sku-{i}" for i in range(len(cells))]})
    dataset = dataset.cast_column("picture", ImageFeature())
    items = list_dataset_images(dataset, image_column="picture", id_column="sku")
    index = build_gallery_index(model, processor, items, tmp_path / "index", show_progress=False)
    assert index.ids == [f"sku-{i}" for i in range(len(paths))]
    assert index.metadata["skipped"]["unreadable_image"] == 1
    np.testing.assert_allclose(index.embeds, encode(model, processor, paths), atol=1e-5)
    with pytest.raises(ValueError, match="lacks column"):
        list_dataset_images(dataset, image_column="image")


def test_bad_input_is_named(model_and_processor, tmp_path):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="gallery is empty"):
        build_gallery_index(model, processor, [], tmp_path / "empty")
    with pytest.raises(ValueError, match="do not apply to a 'flat' index"):
        GalleryIndex(np.eye(3, dtype=np.float32), ["a", "b", "c"], nprobe=4)
    with pytest.raises(ValueError, match="index_type must be one of"):
        GalleryIndex(np.eye(3, dtype=np.float32), ["a", "b", "c"], index_type="lsh")
    index = GalleryIndex(np.eye(3, dtype=np.float32), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"queries must be \[Q, 3\]"):
        index.search(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(np.zeros((1, 3), np.float32), k=0)
    with pytest.raises(FileNotFoundError, match="not a complete gallery index"):
        GalleryIndex.load(tmp_path)


def test_indexing_again_encodes_only_new_and_changed_images(gallery_folder, model_and_processor, tmp_path,
                                                           monkeypatch):
    import shutil

    from tests.trainers.triplet_fixtures import draw

    model, processor = model_and_processor
    folder = tmp_path / "photos"
    shutil.copytree(gallery_folder, folder)
    first = build_gallery_index(model, processor, list_image_folder(folder)[0], tmp_path / "index",
                                index_type="hnsw", show_progress=False)
    assert first.metadata["last_build"] == {"reused": 0, "encoded": 13, "removed": 0}

    draw("circle", "yellow").save(folder / "round" / "circle-yellow.png")             # new
    draw("square", "yellow").save(folder / "angular" / "square-red.png")              # changed
    (folder / "angular" / "bar-green.png").unlink()                                   # gone
    encoded = []
    original = type(model).get_image_features

    def counting(self, pixel_values, *args, **kwargs):
        encoded.append(len(pixel_values))
        return original(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(type(model), "get_image_features", counting)
    items = list_image_folder(folder)[0]
    updated = build_gallery_index(model, processor, items, tmp_path / "index", show_progress=False)
    # new + changed encoded; broken.png, unreadable before, is tried again (and skipped again)
    assert updated.metadata["last_build"] == {"reused": 10, "encoded": 3, "removed": 1}
    assert sum(encoded) == 2
    assert "angular/bar-green.png" not in updated.ids and "round/circle-yellow.png" in updated.ids
    assert updated.index_type == "flat" and not (tmp_path / "index" / "index.faiss").exists()

    monkeypatch.setattr(type(model), "get_image_features", original)
    fresh = build_gallery_index(model, processor, items, tmp_path / "fresh", show_progress=False)
    assert updated.ids == fresh.ids
    np.testing.assert_allclose(updated.embeds, fresh.embeds, atol=1e-6)
    reloaded = GalleryIndex.load(tmp_path / "index")
    assert reloaded.versions == fresh.versions and all(reloaded.versions)


def snapshot(folder) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_folder_that_is_not_an_index_is_refused_untouched(gallery_folder, model_and_processor, tmp_path):
    model, processor = model_and_processor
    items = list_image_folder(gallery_folder)[0][:3]
    folder = tmp_path / "my-documents"
    (folder / "chunks").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "chunks" / "draft.txt").write_text("mine too")
    (folder / "index.faiss").write_bytes(b"not faiss")  # a name an index uses, but not written by one
    before = snapshot(folder)
    with pytest.raises(ValueError, match="not empty and is not a SCOT gallery index"):
        build_gallery_index(model, processor, items, folder, show_progress=False)
    with pytest.raises(ValueError, match="not empty and is not a SCOT gallery index"):
        GalleryIndex(np.eye(3, dtype=np.float32), ["a", "b", "c"]).save(folder)
    assert snapshot(folder) == before

    # a new folder is marked before anything else is written, and is an index folder from then on
    index = build_gallery_index(model, processor, items, tmp_path / "new" / "index", show_progress=False)
    assert (tmp_path / "new" / "index" / ".scot-index").is_file()
    assert len(build_gallery_index(model, processor, items, tmp_path / "new" / "index", show_progress=False)) == len(
        index)


def test_only_the_index_files_are_ever_removed(gallery_folder, model_and_processor, tmp_path, caplog):
    model, processor = model_and_processor
    items = list_image_folder(gallery_folder)[0]
    folder = tmp_path / "index"
    build_gallery_index(model, processor, items[:4], folder, index_type="hnsw", show_progress=False)
    # files a user left in the index folder, one of them inside chunks/ with the stale chunks of another plan
    (folder / "README.txt").write_text("my notes about this index")
    (folder / "chunks").mkdir()
    (folder / "chunks" / "plan.json").write_text(json.dumps({"digest": "another plan", "num_images": 1}))
    (folder / "chunks" / "images-00000.safetensors").write_bytes(b"stale")
    (folder / "chunks" / "keep-me.txt").write_text("mine")
    build_gallery_index(model, processor, items, folder, show_progress=False)
    assert (folder / "README.txt").read_text() == "my notes about this index"
    assert sorted(path.name for path in (folder / "chunks").iterdir()) == ["keep-me.txt"]
    assert "did not write: left in place" in caplog.text
    assert not (folder / "index.faiss").exists()  # the hnsw build's own file, replaced by a flat index


def test_a_torn_plan_file_starts_the_encoding_over(gallery_folder, model_and_processor, tmp_path, caplog):
    model, processor = model_and_processor
    items = list_image_folder(gallery_folder)[0][:5]
    folder = tmp_path / "index"
    (folder / "chunks").mkdir(parents=True)
    (folder / ".scot-index").write_text("")  # an index folder of an interrupted run
    (folder / "chunks" / "plan.json").write_text('{"digest": "ab')  # torn in place by a crash
    (folder / "chunks" / "images-00000.safetensors").write_bytes(b"half a chunk")
    index = build_gallery_index(model, processor, items, folder, show_progress=False)
    assert "plan.json" in caplog.text and "encoding from the start" in caplog.text
    assert index.ids == [item.id for item in items if item.id != "broken.png"]
    assert not (folder / "chunks").exists()


def test_a_second_run_into_the_same_folder_is_refused(gallery_folder, model_and_processor, tmp_path):
    import fcntl

    model, processor = model_and_processor
    items = list_image_folder(gallery_folder)[0][:3]
    folder = tmp_path / "index"
    build_gallery_index(model, processor, items, folder, show_progress=False)
    with open(folder / ".scot-index.lock", "a") as other_run:  # what a concurrent run holds while it writes
        fcntl.flock(other_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OSError, match="Another run is writing here"):
            build_gallery_index(model, processor, items, folder, show_progress=False)
    # released: the next run goes ahead
    assert len(build_gallery_index(model, processor, items, folder, show_progress=False)) == 3


def test_links_to_files_outside_the_gallery_are_left_out(gallery_folder, tmp_path):
    import shutil

    folder = tmp_path / "photos"
    shutil.copytree(gallery_folder, folder)
    outside = tmp_path / "private"
    outside.mkdir()
    shutil.copy(gallery_folder / "round" / "circle-red.png", outside / "passport.png")
    (folder / "passport.png").symlink_to(outside / "passport.png")
    (folder / "round" / "favourite.png").symlink_to(folder / "round" / "circle-blue.png")  # inside: kept
    (folder / "linked-folder").symlink_to(outside, target_is_directory=True)
    items, skipped = list_image_folder(folder)
    ids = {item.id for item in items}
    assert "passport.png" not in ids and not any(item_id.startswith("linked-folder") for item_id in ids)
    assert skipped == {"not_an_image_file": 1, "link_outside_gallery": 1}
    favourite = next(item for item in items if item.id == "round/favourite.png")
    assert favourite.path == str((folder / "round" / "circle-blue.png").resolve())
    assert all(Path(item.path).is_relative_to(folder.resolve()) for item in items)


def test_the_gallery_is_no_place_for_its_index(gallery_folder, model_and_processor, tmp_path):
    import shutil

    model, processor = model_and_processor
    gallery = tmp_path / "photos"
    shutil.copytree(gallery_folder, gallery)
    items = list_image_folder(gallery)[0]
    before = snapshot(gallery)
    with pytest.raises(ValueError, match="would mix with the images"):  # known from the items' own paths
        build_gallery_index(model, processor, items, gallery, show_progress=False)
    with pytest.raises(ValueError, match="would mix with the images"):
        build_gallery_index(model, processor, items, gallery / "index", source={"folder": str(gallery)},
                            show_progress=False)
    assert snapshot(gallery) == before


@pytest.fixture
def blocked_and_plain(monkeypatch):
    """`search(index, queries, k)` twice: with the product and selection block by block of the gallery (blocks of
    250 rows: not a multiple of the 32-score groups, so each block's last columns are taken without screening, and
    3001 rows leave a last block of one), and with all scores at once (the plain path)."""
    import scot_search.index

    def search(index, queries, k):
        all_scores_bytes = 4 * len(queries) * len(index)
        monkeypatch.setattr(scot_search.index, "SCORE_BLOCK_BYTES", all_scores_bytes - 1)
        monkeypatch.setattr(scot_search.index, "SCORE_TILE_BYTES", 4 * len(queries) * 250)
        monkeypatch.setattr(scot_search.index, "MIN_BLOCK_ROWS", 250)
        blocked = index.search(queries, k)
        monkeypatch.setattr(scot_search.index, "SCORE_BLOCK_BYTES", all_scores_bytes)
        return blocked, index.search(queries, k)

    return search


def test_blocked_top_k_equals_the_plain_one_ties_included(blocked_and_plain):
    # small integers: every score is exact whatever the order of summation, and many are equal, also across blocks
    rng = np.random.default_rng(3)
    gallery = rng.integers(-3, 4, (3001, 16)).astype(np.float32)
    gallery[2900:2950] = gallery[:50]  # equal rows in the first and the last blocks
    queries = np.concatenate([gallery[:3], rng.integers(-3, 4, (6, 16)).astype(np.float32)])
    all_scores = queries @ gallery.T
    index = GalleryIndex(gallery, [str(i) for i in range(len(gallery))])
    for k in (1, 40, 600):
        (blocked_scores, blocked_positions), (plain_scores, plain_positions) = blocked_and_plain(index, queries, k)
        assert_exact_top_k(blocked_scores, blocked_positions, all_scores)
        assert_exact_top_k(plain_scores, plain_positions, all_scores)
        np.testing.assert_array_equal(blocked_scores, plain_scores)
        # the same rows in the same order, except which rows of a tie at the k-th score are kept ("any of them")
        above_kth = blocked_scores > blocked_scores[:, -1:]
        np.testing.assert_array_equal(blocked_positions[above_kth], plain_positions[above_kth])
        assert blocked_positions.dtype == np.int64 and blocked_scores.dtype == np.float32
    # the three queries that are gallery rows: their equal copy (row i and row 2900 + i) come next to each other
    top = blocked_and_plain(index, queries[:3], 2)[0][1]
    assert [set(row) for row in top] == [{0, 2900}, {1, 2901}, {2, 2902}]


def test_blocked_top_k_equals_the_plain_one_on_unit_vectors(blocked_and_plain):
    rng = np.random.default_rng(4)
    gallery = rng.standard_normal((3001, 32)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = GalleryIndex(gallery, [str(i) for i in range(len(gallery))])
    (blocked_scores, blocked_positions), (plain_scores, plain_positions) = blocked_and_plain(index, queries, 50)
    np.testing.assert_array_equal(blocked_positions, plain_positions)
    # the same products, up to the BLAS's order of summation for matrices of other shapes
    np.testing.assert_allclose(blocked_scores, plain_scores, rtol=0, atol=1e-6)


def unit_rows(rng, count: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def screened_and_float32(monkeypatch):
    """`search(index, queries, k)` -> (screened, float32, fallback): the search screened in bfloat16 on any gallery
    and batch (gallery blocks of 250 rows: not a multiple of the 32-score groups, so each block ends in columns of
    their own), the float32 search, and which queries the screen left to the float32 path. The screen runs on any
    CPU here: its gate is about speed, while what is tested, the results, does not depend on it."""
    import scot_search.index

    falling_back = []

    def recording(*args):
        owners, positions, fallback = screened_candidates(*args)
        falling_back.append(fallback)
        return owners, positions, fallback

    screened_candidates = scot_search.index.screened_candidates
    monkeypatch.setattr(scot_search.index, "screened_candidates", recording)
    monkeypatch.setattr(scot_search.index, "bfloat16_matmul_is_native", lambda: True)

    def search(index, queries, k):
        for name, value in (("SCREEN_MIN_IMAGES", 0), ("SCREEN_MIN_QUERIES", 1), ("SCREEN_TILE_BYTES", 0),
                            ("MIN_BLOCK_ROWS", 250)):
            monkeypatch.setattr(scot_search.index, name, value)
        falling_back.clear()
        screened = index.search(queries, k)
        assert len(falling_back) == 1, "the screen did not run"
        monkeypatch.setattr(scot_search.index, "SCREEN_MIN_IMAGES", len(index) + 1)
        return screened, index.search(queries, k), falling_back[0]

    return search


def assert_same_top_k(found, expected, gallery: np.ndarray, queries: np.ndarray, tie: float = 1e-6) -> None:
    """The same scores and the same rows, up to the float32 rounding of products of other shapes: rows may trade
    places only with rows whose exact (float64) scores are within `tie` (bench/bench_search.py's tie swaps)."""
    (found_scores, found_positions), (expected_scores, expected_positions) = found, expected
    assert found_positions.dtype == np.int64 and found_scores.dtype == np.float32
    np.testing.assert_allclose(found_scores, expected_scores, rtol=0, atol=1e-6)
    rows, slots = np.nonzero(found_positions != expected_positions)
    exact = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    gaps = np.abs(exact[rows, found_positions[rows, slots]] - exact[rows, expected_positions[rows, slots]])
    assert (gaps <= tie).all(), f"{len(rows)} rows differ, exact score gaps up to {gaps.max()}"
    for row_scores, row_positions in zip(found_scores, found_positions):  # best first, equal scores by position
        np.testing.assert_array_equal(np.lexsort((row_positions, -row_scores)), np.arange(len(row_positions)))


@pytest.mark.parametrize("size, dim", [(1000, 64), (3001, 256), (20000, 256)])
def test_screened_search_equals_the_float32_one_on_unit_vectors(screened_and_float32, size, dim):
    rng = np.random.default_rng(size)
    gallery, queries = unit_rows(rng, size, dim), unit_rows(rng, 40, dim)
    index = GalleryIndex(gallery, [str(i) for i in range(size)])
    for k in (1, 10, 50, 600):
        for batch in (queries[:1], queries):
            screened, float32, fallback = screened_and_float32(index, batch, k)
            assert_same_top_k(screened, float32, gallery, batch)
            assert not fallback.any()


def test_screened_search_tells_apart_rows_bfloat16_cannot(screened_and_float32, monkeypatch):
    """300 rows within 1e-4 of each other (bfloat16 resolves ~4e-3): their bfloat16 scores tie in clumps, their
    float32 ones do not (and 20 exact copies tie in float32 too)."""
    import scot_search.index

    rng = np.random.default_rng(7)
    centre = unit_rows(rng, 1, 256)
    near_copies = centre + 1e-4 * unit_rows(rng, 300, 256)
    gallery = np.concatenate([unit_rows(rng, 3000, 256), near_copies, near_copies[:20]])  # the last 20: copies
    gallery = gallery[rng.permutation(len(gallery))]
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = np.concatenate([centre + 0.01 * unit_rows(rng, 5, 256), unit_rows(rng, 4, 256)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = GalleryIndex(gallery, [str(i) for i in range(len(gallery))])
    bfloat16_scores = torch.from_numpy(queries[:1]).bfloat16() @ torch.from_numpy(near_copies).bfloat16().T
    assert len(torch.unique(bfloat16_scores)) < 30  # the near copies really are clumped in bfloat16
    for k in (10, 50, 400):
        screened, float32, fallback = screened_and_float32(index, queries, k)
        assert_same_top_k(screened, float32, gallery, queries)
        assert not fallback.any()
    # without the error bound's margin (candidates: only the rows at least the k-th best bfloat16 score), the
    # screen misses rows of the float32 top k
    monkeypatch.setattr(scot_search.index, "SCREEN_SAFETY", 0.0)
    screened, float32, _ = screened_and_float32(index, queries[:5], 50)
    assert (screened[1] != float32[1]).any()


def test_screened_search_with_only_negative_scores(screened_and_float32):
    """A query opposite a clustered gallery: every score and threshold is negative (group maxima on the bits then
    need the magnitudes of negative numbers flipped)."""
    rng = np.random.default_rng(10)
    centre = unit_rows(rng, 1, 256)
    gallery = centre + unit_rows(rng, 20000, 256)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = np.concatenate([-centre, -gallery[:3]])
    index = GalleryIndex(gallery, [str(i) for i in range(len(gallery))])
    screened, float32, fallback = screened_and_float32(index, queries, 50)
    assert (screened[0] < 0).all()
    assert_same_top_k(screened, float32, gallery, queries)
    assert not fallback.any()


def test_screen_falls_back_to_float32_on_too_many_near_equal_rows(screened_and_float32, monkeypatch):
    import scot_search.index

    monkeypatch.setattr(scot_search.index, "SCREEN_MAX_CANDIDATES", 500)
    rng = np.random.default_rng(8)
    centre = unit_rows(rng, 1, 256)
    gallery = np.concatenate([unit_rows(rng, 2000, 256), centre + 1e-4 * unit_rows(rng, 1500, 256)])
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = np.concatenate([centre + 0.01 * unit_rows(rng, 3, 256), unit_rows(rng, 5, 256)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = GalleryIndex(gallery, [str(i) for i in range(len(gallery))])
    screened, float32, fallback = screened_and_float32(index, queries, 50)
    np.testing.assert_array_equal(fallback, [True] * 3 + [False] * 5)  # 1500 candidates > 500, for those near
    assert_same_top_k(screened, float32, gallery, queries)
    # a gallery of one row repeated: every query falls back, and gets the float32 path's answer itself
    same = GalleryIndex(np.repeat(gallery[:1], 3000, axis=0), [str(i) for i in range(3000)])
    screened, float32, fallback = screened_and_float32(same, queries, 50)
    assert fallback.all()
    for found, expected in zip(screened, float32):
        np.testing.assert_array_equal(found, expected)


def test_screening_error_bound_holds_on_random_and_worst_case_vectors():
    from scot_search.index import screening_error_bound

    def bfloat16_scores(queries, gallery):  # the screen's product: bfloat16 inputs, a bfloat16 result
        return (torch.from_numpy(queries).bfloat16() @ torch.from_numpy(gallery).bfloat16().T).float().numpy()

    rng = np.random.default_rng(9)
    for dim in (64, 256, 1024):
        gallery, queries = unit_rows(rng, 4000, dim), unit_rows(rng, 64, dim)
        errors = np.abs(bfloat16_scores(queries, gallery) - queries @ gallery.T)
        bound = screening_error_bound(np.linalg.norm(queries, axis=1), 1.0, dim)
        assert (errors.max(axis=1) <= bound).all() and bound.max() < 0.02
        # the norms scale it: ten times longer queries, ten times the error and the bound
        errors = np.abs(bfloat16_scores(10 * queries, gallery) - (10 * queries) @ gallery.T)
        assert (errors.max(axis=1) <= screening_error_bound(10 * np.linalg.norm(queries, axis=1), 1.0, dim)).all()
    # worst case: every entry 1/16 (1 + 2^-8 - 2^-20) rounds down by almost a relative 2^-8, all with the same sign,
    # so the bfloat16 score (exactly 1) misses the float32 one (~1 + 2^-7) by ~2 u S: more than half the bound
    worst = np.full((1, 256), (1 + 2.0**-8 - 2.0**-20) / 16, np.float32)
    error = np.abs(bfloat16_scores(worst, worst) - worst @ worst.T).item()
    bound = screening_error_bound(np.linalg.norm(worst, axis=1), float(np.linalg.norm(worst)), 256).item()
    assert 0.5 * bound < error <= bound


def test_screen_is_used_for_batches_on_large_galleries_only():
    import scot_search.index

    index = GalleryIndex(np.eye(4, dtype=np.float32)[np.arange(2**18) % 4], [str(i) for i in range(2**18)])
    native = scot_search.index.bfloat16_matmul_is_native()
    assert index._screens(16, 50) == native and index._screens(256, 1024) == native
    assert not index._screens(1, 50) and not index._screens(15, 50) and not index._screens(256, 1025)
    small = GalleryIndex(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
    assert not small._screens(256, 2)


def assert_stable_sort_top_k(found, scores: np.ndarray, k: int) -> None:
    """`found` is exactly a full stable sort's top k of `scores`: the same rows in the same order, ties by position."""
    expected = np.argsort(-scores, kind="stable")[:k]
    found_scores, found_positions = found
    assert found_positions.dtype == np.int64 and found_scores.dtype == scores.dtype
    np.testing.assert_array_equal(found_positions, expected)
    np.testing.assert_array_equal(found_scores, scores[expected])


@pytest.mark.parametrize("size", [1, 7, 31, 32, 33, 1000, 1600, 1601, 3001, 20000, 65537])
def test_single_top_k_equals_a_stable_full_sort(size):
    from scot_search.index import single_top_k

    rng = np.random.default_rng(size)
    draws = {"uniform": rng.standard_normal(size).astype(np.float32),
             "negative": -1 - rng.random(size).astype(np.float32),
             "integers": rng.integers(-3, 4, size).astype(np.float32),  # every score ties with ~size / 7 others
             "negative integers": -rng.integers(1, 4, size).astype(np.float32),
             "equal": np.full(size, 0.25, np.float32)}
    # sizes < 32 have no group; 1000 has 31 groups, fewer than k = 40, 50, 600; from 1600 on k = 50 has enough
    ks = sorted({k for k in (1, 2, 10, 40, 50, 600, size // 2, size - 1, size) if 1 <= k <= size})
    for scores in draws.values():
        for k in ks:
            for grouped_from in (0, 2**14):  # the group maxima wherever there are k groups; the default
                assert_stable_sort_top_k(single_top_k(scores, k, 32, grouped_from), scores, k)


def test_single_top_k_finds_ties_across_groups_and_in_the_ungrouped_tail():
    from scot_search.index import single_top_k

    # 3001 = 93 groups of 32 + 25 ungrouped: the best score sits once in the tail, in many groups, and at group starts
    scores = np.zeros(3001, np.float32)
    stride = 3001 // 32
    scores[[3000, 2990, 5, 5 + stride, 5 + 31 * stride, 17, 0]] = 2.0
    scores[[1, 2976]] = 3.0  # one in the last group, one in the tail's first column
    found = single_top_k(scores, 5, 32, 0)
    assert_stable_sort_top_k(found, scores, 5)
    assert found[1].tolist() == [1, 2976, 0, 5, 17]
    for k in (7, 9, 10, 100):  # the k-th best is 2.0, then 0.0: the lowest positions of each tie are kept
        assert_stable_sort_top_k(single_top_k(scores, k, 32, 0), scores, k)


def test_one_query_search_equals_a_stable_full_sort_with_ties():
    # 20000 rows (above SINGLE_GROUPED_MIN_IMAGES: screened by group maxima) of small integers: every score exact
    # whatever the order of summation, and equal to many others, also at the k-th score
    rng = np.random.default_rng(11)
    gallery = rng.integers(-3, 4, (20000, 16)).astype(np.float32)
    gallery[19990:] = gallery[:10]  # equal rows at both ends
    queries = np.concatenate([gallery[:2], rng.integers(-3, 4, (4, 16)).astype(np.float32)])
    index = GalleryIndex(gallery, [str(i) for i in range(len(gallery))])
    for query in queries:
        scores = gallery.astype(np.float64) @ query.astype(np.float64)
        for k in (1, 50, 600):
            found_scores, found_positions = index.search(query, k)
            assert found_scores.shape == found_positions.shape == (1, k)
            np.testing.assert_array_equal(found_positions[0], np.argsort(-scores, kind="stable")[:k])
            np.testing.assert_array_equal(found_scores[0], np.sort(scores)[::-1][:k].astype(np.float32))
    assert index.search(queries[0], 2)[1].tolist() == [[0, 19990]]
