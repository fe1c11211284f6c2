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
	$(PY) -m pip install -q -e ".[test,ray,tensorboard,wandb]"
	$(PY) -c "import importlib.metadata as m; v = m.version('transformer-lens'); assert v.startswith('3.'), v"
	touch $(STAMP)

# TransformerLens 4.x (TransformerBridge) in a second venv: torch first, then transformer-lens 4.3, then sslens with
# its test extras, both pins repeated so pip keeps them (sslens allows transformer-lens>=3,<5).
VENV4  := .venv4
PY4    := $(VENV4)/bin/python
STAMP4 := $(VENV4)/.sslens-installed
TL4    ?= transformer-lens==4.3.0
# the 4.x subset (tests marked tl4 run on both lines): models equal their formulas, compat, checkpoints and run dirs of
# either line (loaded, resumed, analysed), the recorder and series analysis on boot_native models, analyses that
# touch attention internals, the count engine's run stores, a sweep grid, the tutorial notebook
TEST4  ?= tests/test_compat.py tests/test_checkpoint_lines.py tests/test_readme.py tests/test_scan_snap_model.py \
	tests/test_rank_collapse_model.py tests/test_train.py tests/test_qk_gradient.py tests/test_entropy_bound.py \
	tests/test_engine.py::test_loss_and_gradients_equal_hooked_transformer \
	tests/test_engine.py::test_engine_run_store_is_a_normal_run_store \
	tests/test_sweep_grid.py::test_toml_spec_engine_and_hooked_runs_equal_direct_training \
	tests/test_notebook.py tests/test_pretrained_series.py

venv4: $(STAMP4)

$(STAMP4): pyproject.toml
	test -x $(PY4) || $(PYTHON) -m venv $(VENV4)
	# with .venv built (make test builds it first) and the same Python: start from hard links of its packages (no
	# second torch unpacked; pip then swaps TransformerLens 3.9 for 4.3 and what 4.3 needs, replacing files, never
	# editing them, so .venv is untouched); otherwise a fresh install
	if [ -f $(STAMP) ] && [ "$$($(PY) -c 'import sys; print(sys.version)')" = "$$($(PY4) -c 'import sys; print(sys.version)')" ]; \
		then cp -alf $(VENV)/lib/. $(VENV4)/lib/ || true; fi
	$(PY4) -m pip install -q --upgrade pip
	$(PY4) -m pip install -q $(TORCH)
	$(PY4) -m pip install -q $(TL4)
	$(PY4) -m pip install -q -e ".[test]" "$(TORCH)" "$(TL4)"
	$(PY4) -c "import importlib.metadata as m; v = m.version('transformer-lens'); assert v.startswith('4.'), v"
	touch $(STAMP4)

test4: $(STAMP4)
	$(PY4) -m pytest -q -p no:cacheprovider $(TEST4)

demo: $(STAMP)
	$(VENV)/bin/sslens reproduce scan-snap --out $(OUT)/ss

# the whole suite on the reference line (3.9), then the 4.x subset on 4.3 (CI: .ci/run calls make test)
test: $(STAMP) $(STAMP4)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests
	$(PY4) -m pytest -q -p no:cacheprovider $(TEST4)

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) $(VENV4) build dist *.egg-info
