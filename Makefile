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
DIST := dist
PLUGIN_BUILD := build/plugin
PLUGIN_VERSION := $(shell sed -n 's/^version=//p' metadata.txt)
PLUGIN_ZIP := $(DIST)/glnet_qgis-$(PLUGIN_VERSION).zip

.PHONY: demo test lint qgis venv bench plugin clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev,demo,distributed,pretrained]"
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

# The zip for QGIS's "Install from ZIP": one folder glnet_qgis/ of real files
# (cp -L resolves the metadata and icon links), with the engine source copied
# into glnet_qgis/engine/ so that the plugin reads model files with no install
# (the algorithms that run the network use the engine's own environment), and
# the example Processing models in glnet_qgis/models/.
# DIST and PLUGIN_BUILD may be overridden (the tests build into a temporary folder).
plugin:
	rm -rf $(PLUGIN_BUILD)/glnet_qgis $(PLUGIN_ZIP)
	mkdir -p $(PLUGIN_BUILD)/glnet_qgis/engine $(PLUGIN_BUILD)/glnet_qgis/models $(DIST)
	cp -L glnet_qgis/*.py glnet_qgis/metadata.txt glnet_qgis/icon.svg $(PLUGIN_BUILD)/glnet_qgis/
	cp core/*.py $(PLUGIN_BUILD)/glnet_qgis/engine/
	cp resources/models/*.model3 $(PLUGIN_BUILD)/glnet_qgis/models/
	cd $(PLUGIN_BUILD) && $(PYTHON) -m zipfile -c $(abspath $(PLUGIN_ZIP)) glnet_qgis
	@echo "Built $(PLUGIN_ZIP)"

clean:
	rm -rf $(VENV) build dist *.egg-info demo_output
