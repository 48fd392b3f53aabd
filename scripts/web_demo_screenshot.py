"""Screenshot of the web demo answering one query, for the README (docs/web_demo.png).

    python scripts/web_demo_screenshot.py [--index outputs/demo/gallery-index] [--image IMG] [--text "..."]

Starts `scot-search web`'s app in-process on a free port (indexing the demo gallery first if needed, as the app
does), drives headless Chromium (Debian's chromium + chromium-driver) to upload the image, type the text and search,
and saves the page once the results have rendered.
"""

import argparse
import os
import shutil
import socket
from pathlib import Path

from scot_search.app import build_app, example_images, launch_app, load_or_build_searcher

# what `make demo` writes (as `make web-demo` passes them)
DEMO_MODEL = "scot-demo"
DEMO_INDEX = "outputs/demo/gallery-index"
DEMO_GALLERY = "outputs/demo/benchmark/colour/dev"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEMO_MODEL)
    parser.add_argument("--index", default=DEMO_INDEX)
    parser.add_argument("--gallery", default=DEMO_GALLERY)
    parser.add_argument("--image", default=f"{DEMO_GALLERY}/kangaroo-silo-red.png")
    parser.add_argument("--text", default="change the colour to blue")
    parser.add_argument("--output", default="docs/web_demo.png")
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    searcher = load_or_build_searcher(args.index, model=args.model, gallery=args.gallery)
    app = build_app(searcher, examples=example_images(searcher.index, 8))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch_app(app, port=port, prevent_thread_lock=True)

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1400,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 60)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#reference-image input[type=file]")))
        upload.send_keys(str(Path(args.image).resolve()))
        wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#reference-image img"))
        browser.find_element(By.CSS_SELECTOR, "#change-text textarea, #change-text input").send_keys(args.text)
        browser.find_element(By.CSS_SELECTOR, "#search-button").click()
        wait.until(lambda page: len(page.find_elements(By.CSS_SELECTOR, "#result-gallery img")) >= 10)
        wait.until(lambda page: all(image.get_attribute("complete") == "true"
                                    for image in page.find_elements(By.CSS_SELECTOR, "#result-gallery img")))
        browser.save_screenshot(args.output)
        print(browser.find_element(By.CSS_SELECTOR, "#result-summary").text)
        print(f"saved {args.output}")
    finally:
        browser.quit()
        app.close()


if __name__ == "__main__":
    main()
