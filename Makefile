# `make run` sets up .venv and runs the main job on the bundled default; `make test` sets up and runs the tests.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[test,slurm]'
	touch $@

.PHONY: install run test bench nightly screenshots
install: $(VENV)/.installed

run: install
	$(BIN)/python -m pipeline.run method=lrp composite=epsilon_gamma_box

test: install
	$(BIN)/python -m pytest tests

bench: install
	$(BIN)/python scripts/bench_gradients.py
	$(BIN)/python scripts/bench_lrp.py
	$(BIN)/python scripts/bench_evaluation.py
	$(BIN)/python scripts/bench_pipeline.py
	$(BIN)/python scripts/bench_scaleout.py

nightly: install  # what cron/systemd run: lock, nightly sweep, regression check (exit codes in README)
	$(BIN)/python -m pipeline.scheduled

screenshots: install  # docs/mlflow_*.png, docs/report.png: headless chromium (apt: chromium chromium-driver)
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/python scripts/screenshot_mlflow_ui.py
	$(BIN)/python scripts/screenshot_report.py
