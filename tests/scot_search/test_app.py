"""The Gradio web demo, end to end in headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium):
upload a reference image, type the change, submit, and check what the page shows — results or a clear message. What
the page cannot send (a `data:` URL, a server path) is sent to the same handler through Gradio's HTTP API."""

import base64
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from scot_search.app import NOT_UPLOADED, build_app, check_reference_image, example_images, launch_app

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

# CI installs the browser (.ci/run); elsewhere the browser tests skip with the reason rather than fail
needs_browser = pytest.mark.skipif(
    (CHROMIUM is None or CHROMEDRIVER is None) and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (make browser-packages)",
)

MAX_PIXELS = 200_000
MAX_UPLOAD_MB = 0.2
# what refusing an image over a limit may cost the server at most: it must not decode it
REFUSAL_SECONDS = 1.0
REFUSAL_RSS_MB = 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def searcher(gallery_index):
    from scot_search import GallerySearcher

    return GallerySearcher.from_pretrained(gallery_index)


@pytest.fixture(scope="module")
def served_app(searcher, gallery_folder):
    """(the page, its URL), served from this process's threads; warmed up by one search (a fresh server's first
    answer takes seconds, which is no cost of the query)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app(searcher, max_pixels=MAX_PIXELS, max_upload_mb=MAX_UPLOAD_MB,
                    examples=example_images(searcher.index, 4))
    port = free_port()
    launch_app(app, port=port, prevent_thread_lock=True)
    url = f"http://127.0.0.1:{port}/"
    assert api_search(url, api_upload(url, gallery_folder / "round" / "circle-red.png"))[0] == "complete"
    yield app, url
    app.close()


@pytest.fixture(scope="module")
def app_url(served_app):
    return served_app[1]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # a given driver: nothing downloaded
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def over_the_limits(tmp_path_factory) -> dict[str, Path]:
    """Images over one limit of the app each. "bomb-L" / "bomb-1" / "bomb-P": 144 MP in grey, 1-bit and palette modes
    (all black: 18-140 KB files, under the byte limit; decoded to RGB, 432 MB), which Gradio's `gr.Image` would convert
    before any check of ours; "cmyk": a CMYK JPEG over the pixel limit; "pixels": 0.36 MP RGB; "bytes": noise, over
    the byte limit and under the pixel limit."""
    folder = tmp_path_factory.mktemp("over-the-limits")
    images = {}
    for mode in ("L", "1", "P"):
        images[f"bomb-{mode}"] = folder / f"bomb-{mode}.png"
        Image.new(mode, (12_000, 12_000)).save(images[f"bomb-{mode}"])
        assert images[f"bomb-{mode}"].stat().st_size < MAX_UPLOAD_MB * 1024 * 1024
    images["cmyk"] = folder / "cmyk.jpg"
    Image.new("CMYK", (600, 600), (0, 80, 160, 0)).save(images["cmyk"])
    images["pixels"] = folder / "big.png"
    Image.new("RGB", (600, 600), "white").save(images["pixels"])
    images["bytes"] = folder / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(images["bytes"])
    assert images["bytes"].stat().st_size > MAX_UPLOAD_MB * 1024 * 1024
    return images


@contextmanager
def server_cost(app):
    """What the page's server spends while the block runs: `cost.seconds` in Gradio's `process_api` (the input's
    preprocess, the handler, the postprocess) and `cost.rss_mb`, how far the peak RSS of this process (the server runs
    in its threads) rose above the RSS before. Linux: the peak is reset through /proc/self/clear_refs."""
    clear_refs = Path("/proc/self/clear_refs")
    if not os.access(clear_refs, os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to measure the peak RSS")

    def status_mb(field: str) -> float:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
        return int(line.split()[1]) / 1024

    cost = SimpleNamespace(seconds=0.0, rss_mb=0.0)
    process_api = app.process_api

    async def timed_process_api(*args, **kwargs):
        start = time.perf_counter()
        try:
            return await process_api(*args, **kwargs)
        finally:
            cost.seconds += time.perf_counter() - start

    app.process_api = timed_process_api  # an instance attribute over the method, removed again below
    clear_refs.write_text("5")  # the peak (VmHWM) starts again from the current RSS
    before = status_mb("VmRSS:")
    try:
        yield cost
    finally:
        cost.rss_mb = status_mb("VmHWM:") - before
        del app.process_api


def assert_refused_cheaply(cost) -> None:
    assert 0 < cost.seconds < REFUSAL_SECONDS and cost.rss_mb < REFUSAL_RSS_MB, cost


def api_upload(app_url: str, path: Path) -> dict:
    """Upload `path` as the page does (Gradio's upload route); the FileData of the search API's image input."""
    import httpx

    response = httpx.post(f"{app_url}gradio_api/upload", files={"files": (path.name, path.read_bytes())}, timeout=60)
    response.raise_for_status()
    return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def api_search(app_url: str, image: dict, text: str = "in blue", k: int = 5) -> tuple[str, object]:
    """Call the page's search through Gradio's HTTP API: ("complete", outputs) or ("error", the page's message)."""
    import httpx

    started = httpx.post(f"{app_url}gradio_api/call/search", json={"data": [image, text, k]}, timeout=60)
    started.raise_for_status()
    stream = httpx.get(f"{app_url}gradio_api/call/search/{started.json()['event_id']}", timeout=60).text
    events = [line.removeprefix("event: ") for line in stream.splitlines() if line.startswith("event: ")]
    data = [json.loads(line.removeprefix("data: ")) for line in stream.splitlines() if line.startswith("data: ")]
    if events[-1] == "error":
        return "error", data[-1]["error"]
    return events[-1], data[-1]


def data_url(path: Path) -> dict:
    return {"url": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(),
            "meta": {"_type": "gradio.FileData"}}


def submit(browser, url, image_path, text, *, press: bool = True):
    """Load the page fresh, upload `image_path`, type `text`, press Search (unless not `press`); returns a
    WebDriverWait."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#reference-image input[type=file]")))
    upload.send_keys(str(image_path))
    # the upload is done when the preview image shows (or Gradio reports a refused upload)
    wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#reference-image img") or toast_text(page))
    box = browser.find_element(By.CSS_SELECTOR, "#change-text textarea, #change-text input")
    box.clear()
    box.send_keys(text)
    if press:
        browser.find_element(By.CSS_SELECTOR, "#search-button").click()
    return wait


def toast_text(browser) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(element.text for element in browser.find_elements(By.CSS_SELECTOR, ".toast-wrap")).strip()


def wait_for_message(browser, wait) -> str:
    # the text the wait saw: read again, a toast may already have been dismissed on a busy machine
    return wait.until(lambda page: toast_text(page))


@needs_browser
@pytest.mark.slow
def test_search_renders_results_and_lambda(browser, app_url, gallery_folder, searcher):
    from selenium.webdriver.common.by import By

    reference = gallery_folder / "round" / "circle-red.png"
    wait = submit(browser, app_url, reference, "make it blue")
    wait.until(lambda page: len(page.find_elements(By.CSS_SELECTOR, "#result-gallery img")) >= 10)
    wait.until(lambda page: "λ" in page.find_element(By.CSS_SELECTOR, "#result-summary").text)

    expected = searcher.query(image=reference, text="make it blue", k=10)
    summary = browser.find_element(By.CSS_SELECTOR, "#result-summary").text
    assert f"text λ = {expected.text_weight:.2f}" in summary and "top 10 of 12" in summary
    assert len(browser.find_elements(By.CSS_SELECTOR, "#result-gallery img")) == 10
    table = browser.find_element(By.CSS_SELECTOR, "#result-table").text
    assert expected.hits[0].id in table and f"{expected.hits[0].score:.4f}".rstrip("0") in table
    # the result thumbnails are served by the app (the gallery folder is the only one it may read)
    sources = [image.get_attribute("src") for image in browser.find_elements(By.CSS_SELECTOR, "#result-gallery img")]
    assert all(source.startswith(app_url) for source in sources)
    assert toast_text(browser) == ""


@needs_browser
@pytest.mark.slow
def test_bad_input_shows_a_message_not_a_traceback(browser, app_url, gallery_folder, over_the_limits):
    cases = [
        (gallery_folder / "round" / "circle-red.png", "   ", "Type the change"),
        (gallery_folder / "broken.png", "in blue", "not an image this demo can read"),
        (over_the_limits["pixels"], "in blue", "megapixels"),  # 0.36 MP, small file: over the pixel limit only
        (over_the_limits["cmyk"], "in blue", "megapixels"),
        (over_the_limits["bytes"], "in blue", "exceed the maximum allowed size"),  # refused by Gradio's upload route
    ]
    for image, text, message in cases:
        wait = submit(browser, app_url, image, text)
        shown = wait_for_message(browser, wait)
        assert message in shown, (image.name, shown)
        assert "Traceback" not in browser.page_source


@needs_browser
@pytest.mark.slow
def test_a_grey_pixel_bomb_is_refused_in_the_page_before_decoding(browser, served_app, over_the_limits):
    from selenium.webdriver.common.by import By

    app, url = served_app
    wait = submit(browser, url, over_the_limits["bomb-L"], "in blue", press=False)  # 140 KB, 144 MP
    with server_cost(app) as cost:
        browser.find_element(By.CSS_SELECTOR, "#search-button").click()
        shown = wait_for_message(browser, wait)
    assert f"at most {MAX_PIXELS / 1e6:.1f} megapixels" in shown
    assert_refused_cheaply(cost)
    assert "Traceback" not in browser.page_source


@pytest.mark.parametrize("name", ["bomb-L", "bomb-1", "bomb-P", "cmyk"])
def test_uploads_of_every_mode_are_held_to_the_pixel_limit_before_decoding(served_app, over_the_limits, name):
    app, url = served_app
    image = api_upload(url, over_the_limits[name])
    with server_cost(app) as cost:
        event, message = api_search(url, image)
    assert event == "error" and f"at most {MAX_PIXELS / 1e6:.1f} megapixels" in message, message
    assert_refused_cheaply(cost)


def test_data_urls_are_held_to_both_limits(served_app, gallery_folder, over_the_limits):
    app, url = served_app
    event, outputs = api_search(url, data_url(gallery_folder / "round" / "circle-red.png"))
    assert event == "complete" and "top 5 of 12" in outputs[2]  # a data: URL within the limits is searched

    for name, message in (("bytes", f"at most {MAX_UPLOAD_MB:g} MB"), ("bomb-1", "megapixels")):
        image = data_url(over_the_limits[name])
        with server_cost(app) as cost:
            event, shown = api_search(url, image)
        assert event == "error" and message in shown, (name, shown)
        assert_refused_cheaply(cost)


def test_only_uploaded_files_are_read(app_url, gallery_folder):
    # a path on the server without Gradio's file metadata is not moved through Gradio's upload check: never opened
    event, message = api_search(app_url, {"path": str(gallery_folder / "round" / "circle-red.png")})
    assert (event, message) == ("error", NOT_UPLOADED)


def test_the_byte_limit_holds_for_the_file_the_handler_gets(over_the_limits):
    noisy = over_the_limits["bytes"]
    for source in (noisy, noisy.read_bytes()):
        with pytest.raises(ValueError, match=f"at most {MAX_UPLOAD_MB:g} MB"):
            check_reference_image(source, max_pixels=MAX_PIXELS, max_upload_mb=MAX_UPLOAD_MB)
    assert check_reference_image(noisy, max_pixels=MAX_PIXELS, max_upload_mb=1).size == (300, 300)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (2000, 1000)).save(path)
    with pytest.raises(ValueError, match="at most 1.0 megapixels") as refused:
        check_reference_image(path, max_pixels=1_000_000)
    assert str(tmp_path) not in str(refused.value)  # the page does not show where the upload was stored
    assert check_reference_image(path, max_pixels=2_000_000).size == (2000, 1000)


def test_web_demo_indexes_its_gallery_once_and_again_for_a_new_encoder(gallery_folder, scot_folder, tmp_path):
    import torch

    from modeling_scot import ScotModel, ScotProcessor
    from scot_search.app import load_or_build_searcher

    index_dir = tmp_path / "gallery-index"
    first = load_or_build_searcher(index_dir, model=str(scot_folder), gallery=gallery_folder)
    assert len(first.index) == 12 and (index_dir / "index.json").is_file()
    written = (index_dir / "embeddings.safetensors").stat().st_mtime_ns
    again = load_or_build_searcher(index_dir, gallery=gallery_folder)  # the model recorded in the index
    assert (index_dir / "embeddings.safetensors").stat().st_mtime_ns == written  # reused, not re-encoded
    np.testing.assert_array_equal(again.index.embeds, first.index.embeds)

    retrained = ScotModel.from_pretrained(scot_folder)
    with torch.no_grad():
        projection = retrained.encoder.visual_projection.weight  # the tiny CLIP's image projection
        projection.add_(0.5 * torch.randn(projection.shape, generator=torch.Generator().manual_seed(0)))
    retrained.save_pretrained(tmp_path / "retrained")
    ScotProcessor.from_pretrained(scot_folder).save_pretrained(tmp_path / "retrained")
    rebuilt = load_or_build_searcher(index_dir, model=str(tmp_path / "retrained"), gallery=gallery_folder)
    assert rebuilt.index.metadata["model_name_or_path"] == str((tmp_path / "retrained").resolve())
    assert not np.allclose(rebuilt.index.embeds, first.index.embeds)
    with pytest.raises(FileNotFoundError, match="no gallery folder"):
        load_or_build_searcher(tmp_path / "nothing-here")


def test_building_the_page_writes_nothing_beside_the_package(searcher):
    import scot_search.app

    build_app(searcher)
    assert not Path(scot_search.app.__file__).with_suffix(".pyi").exists()  # Gradio's stub writer stays out


@needs_browser
@pytest.mark.slow
def test_dataset_gallery_results_show_their_images(browser, gallery_folder, scot_folder, tmp_path):
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from selenium.webdriver.common.by import By

    from scot_search import GallerySearcher
    from scot_search.cli import main

    paths = sorted(str(path) for path in gallery_folder.rglob("*.png") if path.name != "broken.png")
    (tmp_path / "shapes" / "data").mkdir(parents=True)
    Dataset.from_dict({"image": paths}).cast_column("image", ImageFeature()).to_parquet(
        tmp_path / "shapes" / "data" / "train.parquet")
    assert main(["index", str(tmp_path / "shapes"), "--dataset", "--model", str(scot_folder),
                 "--output", str(tmp_path / "index")]) == 0
    searcher = GallerySearcher.from_pretrained(tmp_path / "index")
    app = build_app(searcher)
    port = free_port()
    launch_app(app, port=port, prevent_thread_lock=True)
    try:
        wait = submit(browser, f"http://127.0.0.1:{port}/", gallery_folder / "round" / "circle-red.png", "in blue")
        wait.until(lambda page: len(page.find_elements(By.CSS_SELECTOR, "#result-gallery img")) >= 10)
        assert toast_text(browser) == ""
    finally:
        app.close()


def test_no_file_of_the_gallery_folder_is_served_by_its_path(app_url, gallery_folder):
    import urllib.error
    import urllib.request

    # not indexed (a secret, a repository's config, notes, an unreadable image) — and not even an indexed image:
    # the page shows decoded copies, which Gradio serves from its own cache
    for name in (".env", ".git/config", "notes.txt", "broken.png", "round/circle-red.png"):
        assert (gallery_folder / name).is_file()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{app_url}gradio_api/file={gallery_folder / name}", timeout=30)
        assert refused.value.code == 403, name


def test_results_show_the_indexed_images_only(searcher, gallery_folder, tmp_path):
    import shutil

    from scot_search import SearchHit
    from scot_search.app import result_thumbnail

    hit = searcher.query(image=gallery_folder / "round" / "circle-red.png", text="in blue", k=1).hits[0]
    expected = Image.open(gallery_folder / hit.id).convert("RGB")
    np.testing.assert_array_equal(np.asarray(result_thumbnail(searcher, hit)), np.asarray(expected))

    # an indexed file replaced since by a link to a file outside the gallery is not shown
    gallery = tmp_path / "photos"
    shutil.copytree(gallery_folder, gallery)
    indexed = SearchHit(rank=1, id=hit.id, score=hit.score, path=str((gallery / hit.id).resolve()))
    assert searcher.hit_image(indexed) is not None
    shutil.copy(gallery_folder / hit.id, tmp_path / "outside.png")
    (gallery / hit.id).unlink()
    (gallery / hit.id).symlink_to(tmp_path / "outside.png")
    assert searcher.hit_image(indexed) is None
