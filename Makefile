# Two commands on a fresh machine: `make demo` (the offline demo) and `make test` (the whole suite).
# Both build the environment first. torch is pinned here, for this dev/CI setup only: the
# package itself asks for a range (torch>=2.4), and 2.13.0 is the CPU wheel on this disk.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test torture bench screenshots clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(VENV)/bin/loratui demo

test: setup
	$(PY) -m pytest -q

torture: setup
	LORATUI_TORTURE=full $(PY) -m pytest -q -m slow

bench: setup
	$(PY) bench/run_all.py

screenshots: setup
	$(PY) scripts/render_screenshots.py

clean:
	rm -rf $(VENV) runs .pytest_cache
