# Lineside: the two commands a user needs are `make demo` and `make test`.
# Python packages go into .venv. Outside it, and only when missing, things come from apt
# (with sudo when not root): python3-venv, the Mosquitto broker with its clients
# (mosquitto, mosquitto-clients), which the demo and the tests start themselves, and for
# the tests Debian's Chromium, which the dashboard's browser tests drive headless.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# onnxruntime-gpu on machines with an NVIDIA driver, the CPU build elsewhere (never both).
ORT_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: broker browser screenshots setup demo test test-unit test-integration lint format train evaluate bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Lineside needs Python 3.11+; found " + sys.version.split()[0])'
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		echo "python3 -m venv failed: installing Debian/Ubuntu's python3-venv"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[server,$(ORT_EXTRA),dev]"
	@echo "installed Lineside into $(VENV) with onnxruntime ($(ORT_EXTRA))"
	@touch $(STAMP)

broker:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] && command -v mosquitto_pub >/dev/null 2>&1 || { \
		echo "installing the Mosquitto MQTT broker and clients with apt"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients; }

browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		echo "installing Debian's Chromium for the dashboard's browser tests with apt"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# `make demo DEMO_ARGS=` streams until Ctrl-C (the default stops after 5 minutes); `lineside demo --help`.
# 4 robots x 3 frames/s: the model the demo fits on the line's parts and rolls out judges about 18 frames/s
# per replica on 2 cores (the bundled classifier about 290), so at lineside demo's own 8 x 5 its shadow step
# lags and the rollout rolls back on p99 (no frame lost, the line keeps the bundled model).
DEMO_ARGS ?= --duration 300 --robots 4 --fps 3

demo: setup broker
	$(VENV)/bin/lineside demo $(DEMO_ARGS)

# Two workers: the Ray, demo and browser modules on one, one after another; the rest on the other.
test: setup broker browser
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15

test-unit: setup
	$(PY) -m pytest tests/unit

test-integration: setup broker browser
	$(PY) -m pytest tests/integration

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

train: setup
	$(PY) -m pip install --quiet -e ".[server,$(ORT_EXTRA),dev,train]"
	$(PY) -m training.train
	$(PY) -m training.evaluate --write-card

evaluate: setup
	$(PY) -m training.evaluate --json

bench: setup broker
	$(VENV)/bin/lineside bench runtime --json
	$(VENV)/bin/lineside bench pipeline --json

# README screenshots of each role's page, from a running demo in headless Chromium.
screenshots: setup broker browser
	$(PY) -m docs.screenshots --warmup 90  # the demo's rollout has moved the line to its fitted model by then

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
