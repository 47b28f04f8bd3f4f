# Quick start: `make demo` and `make test`. Both create .venv from requirements.txt on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export RAY_AUTH_MODE := disabled
export PYTHONPATH := $(CURDIR)

.PHONY: venv test demo lint clean

$(VENV)/.installed: requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache  # the layer rules in pyproject.toml [tool.importlinter]

demo: venv
	bash scripts/demo.sh

clean:
	rm -rf demo_out runs .pytest_cache
