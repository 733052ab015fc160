# The two set-up commands of README.md: `make demo` and `make test`.
# Both create .venv and install what they need; `make test` also installs
# Debian's QGIS (and Xvfb) when it is missing and we run as root.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision are pinned to the releases that this project's machines
# carry on disk; pip then never fetches a multi-gigabyte build. The pins live in
# glnet_qgis/torch-pins.txt because the plugin's "Set up the GLNet engine"
# installs the same ones.
TORCH_PINS_FILE := glnet_qgis/torch-pins.txt
TORCH_PINS := $(shell sed -e 's/\#.*//' $(TORCH_PINS_FILE))
QGIS_PROCESS := /usr/bin/qgis_process.bin
# The Python that builds the plugin's engine wheel: .venv's when there is one
# (it has a recent setuptools, from the dev extra), else PYTHON.
PLUGIN_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
DIST := dist
PLUGIN_BUILD := build/plugin
PLUGIN_VERSION := $(shell sed -n 's/^version=//p' metadata.txt)
PLUGIN_ZIP := $(DIST)/glnet_qgis-$(PLUGIN_VERSION).zip

.PHONY: demo test lint qgis venv bench plugin clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(TORCH_PINS_FILE)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev,demo,distributed,pretrained,openvino,int8]"
	touch $(STAMP)

# Xvfb: the desktop test runs the QGIS dialog on a virtual display.
qgis:
	@if [ -x $(QGIS_PROCESS) ] && command -v Xvfb >/dev/null; then \
		echo "QGIS found: $(QGIS_PROCESS)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qgis python3-qgis xvfb; \
	else \
		echo "QGIS or Xvfb is missing and we are not root: install Debian's qgis, python3-qgis and xvfb, or the QGIS tests will be skipped"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check core glnet_qgis tests benchmarks

# Two test processes, a test file each at a time (module fixtures are built once).
# Measured beside a CPU-bound benchmark: 20.3 min, against 23.8 min for one
# process under a similar load; CI has 30 minutes.
test: $(STAMP) qgis lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

demo: $(STAMP)
	$(BIN)/python -m glnet.demo demo_output

bench: $(STAMP)
	$(BIN)/python benchmarks/model_speed.py

# The zip for QGIS's "Install from ZIP": one folder glnet_qgis/ of real files
# (cp -L resolves the metadata and icon links), with the engine source copied
# into glnet_qgis/engine/ so that the plugin reads model files with no install
# (it imports only glnet.contract.TORCH_FREE_MODULES there, engine_loader.py; the
# algorithms that run the network use the engine's own environment), the
# engine as a wheel in glnet_qgis/wheels/ (what "Set up the GLNet engine"
# installs), the torch pins, LICENSE, and the example Processing models in
# glnet_qgis/models/. The wheel is built from a copy of the sources, without
# build isolation (no package index needed; PLUGIN_PYTHON needs setuptools 77 or
# later), so the checkout gets no build/ or egg-info of its own.
# DIST and PLUGIN_BUILD may be overridden (the tests build into a temporary folder).
plugin:
	rm -rf $(PLUGIN_BUILD)/glnet_qgis $(PLUGIN_BUILD)/wheel-src $(PLUGIN_ZIP)
	mkdir -p $(PLUGIN_BUILD)/glnet_qgis/engine $(PLUGIN_BUILD)/glnet_qgis/models \
		$(PLUGIN_BUILD)/glnet_qgis/wheels $(PLUGIN_BUILD)/wheel-src $(DIST)
	cp -L glnet_qgis/*.py glnet_qgis/metadata.txt glnet_qgis/icon.svg $(TORCH_PINS_FILE) LICENSE \
		$(PLUGIN_BUILD)/glnet_qgis/
	cp core/*.py $(PLUGIN_BUILD)/glnet_qgis/engine/
	cp resources/models/*.model3 $(PLUGIN_BUILD)/glnet_qgis/models/
	cp -r pyproject.toml README.md LICENSE core $(PLUGIN_BUILD)/wheel-src/
	find $(PLUGIN_BUILD)/wheel-src/core -name __pycache__ -prune -exec rm -rf {} +
	cd $(PLUGIN_BUILD)/wheel-src && $(PLUGIN_PYTHON) -m pip wheel --quiet --no-deps \
		--no-build-isolation --no-index -w $(abspath $(PLUGIN_BUILD))/glnet_qgis/wheels .
	rm -rf $(PLUGIN_BUILD)/wheel-src
	cd $(PLUGIN_BUILD) && $(PLUGIN_PYTHON) -m zipfile -c $(abspath $(PLUGIN_ZIP)) glnet_qgis
	@echo "Built $(PLUGIN_ZIP)"

clean:
	rm -rf $(VENV) build dist *.egg-info demo_output
