# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
# GPU nodes: your CUDA build, e.g. TORCH_SPEC=torch==2.13.0+cu128 PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all venv

venv: $(STAMP)

# torch first: letting pip resolve it through botorch/transformers pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mixopt demo $(DEMO_ARGS)

# The dashboard's browser tests drive Debian's chromium (CI runs as root on Debian).
# Most tests wait on real servers, workers and Postgres, so three pytest-xdist processes fill two
# cores (11-12 min instead of 15.5 on the development machine); TEST_JOBS=0 runs them in one process.
TEST_JOBS ?= 3
test: $(STAMP)
	@test -x /usr/bin/chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	$(BIN)/python -m pytest -m "not slow" -q -rs -n $(TEST_JOBS) --dist worksteal $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)
