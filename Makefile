# Every target bootstraps .venv on a fresh machine: torch's CPU build first, then the project.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sslens-installed
TORCH  ?= torch==2.13.0
OUT    ?= runs

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sslens reproduce scan-snap --out $(OUT)/ss

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info
