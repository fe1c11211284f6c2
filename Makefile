# Every target bootstraps .venv on a fresh machine: torch's CPU build first, then the project.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sslens-installed
TORCH  ?= torch==2.13.0
# the reference TransformerLens line (sslens allows >=3,<5; `make test4` runs the 4.x subset in .venv4)
TL3    ?= transformer-lens>=3.9,<4
OUT    ?= runs

.PHONY: demo test test4 bench venv venv4 clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q "$(TL3)"
	$(PY) -m pip install -q -e ".[test,ray]"
	$(PY) -c "import importlib.metadata as m; v = m.version('transformer-lens'); assert v.startswith('3.'), v"
	touch $(STAMP)

# TransformerLens 4.x (TransformerBridge) in a second venv: torch first, then transformer-lens 4.3, then sslens
# without letting pip touch either (sslens allows transformer-lens>=3,<5).
VENV4  := .venv4
PY4    := $(VENV4)/bin/python
STAMP4 := $(VENV4)/.sslens-installed
TL4    ?= transformer-lens==4.3.0
# the 4.x-relevant subset: tests marked tl4 plus the model and trainer files that run unchanged on both lines
TEST4  ?= tests/test_compat.py tests/test_scan_snap_model.py tests/test_rank_collapse_model.py tests/test_train.py

venv4: $(STAMP4)

$(STAMP4): pyproject.toml
	test -x $(PY4) || $(PYTHON) -m venv $(VENV4)
	$(PY4) -m pip install -q --upgrade pip
	$(PY4) -m pip install -q $(TORCH)
	$(PY4) -m pip install -q $(TL4)
	$(PY4) -m pip install -q --no-deps -e .
	$(PY4) -m pip install -q einops circuitsvis datasets safetensors jaxtyping tqdm numpy scipy matplotlib \
		pytest build setuptools ruff beartype hypothesis psutil
	$(PY4) -c "import importlib.metadata as m; v = m.version('transformer-lens'); assert v.startswith('4.'), v"
	touch $(STAMP4)

test4: $(STAMP4)
	$(PY4) -m pytest -q -p no:cacheprovider $(TEST4)

demo: $(STAMP)
	$(VENV)/bin/sslens reproduce scan-snap --out $(OUT)/ss

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) $(VENV4) build dist *.egg-info
