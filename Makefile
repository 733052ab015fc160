# The two set-up commands of README.md: `make demo` and `make test`.
# Both create .venv and install what they need; `make test` also installs
# Debian's QGIS when it is missing and we run as root.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision are pinned to the releases that this project's machines
# carry on disk; pip then never fetches a multi-gigabyte build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
QGIS_PROCESS := /usr/bin/qgis_process.bin

.PHONY: demo test lint qgis venv bench plugin clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

qgis:
	@if [ -x $(QGIS_PROCESS) ]; then \
		echo "QGIS found: $(QGIS_PROCESS)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qgis python3-qgis; \
	else \
		echo "QGIS is missing and we are not root: install Debian's qgis and python3-qgis, or the QGIS tests will be skipped"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check core glnet_qgis tests benchmarks

test: $(STAMP) qgis lint
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m glnet.demo demo_output

bench: $(STAMP)
	$(BIN)/python benchmarks/model_speed.py

clean:
	rm -rf $(VENV) build dist *.egg-info demo_output
