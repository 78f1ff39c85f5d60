# Two commands: `make demo` and `make test`. Each builds .venv when needed (Python 3.11,
# CellProfiler 4.2.8.1, torch 2.13.0 CPU, msrgan editable) and reuses it otherwise.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
JAVA_HOME ?= /usr/lib/jvm/java-17-openjdk-amd64
export JAVA_HOME
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output
# GUI test environment: Debian's Python 3.11 with Debian's wxPython (no Linux wheel exists) and Xvfb.
GUI_PYTHON ?= /usr/bin/python3.11
GUI_VENV := .venv-gui
GUI_BIN := $(GUI_VENV)/bin
GUI_STAMP := $(GUI_VENV)/.installed
GUI_APT := xvfb python3-wxgtk4.0
# CellProfiler's own environment: Python 3.8 (as CellProfiler 4.2.8's releases ship it) from pyenv.
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)
CP38_PYTHON ?= $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.8.*/bin/python)))
CP38_VENV := .venv-cp38
CP38_BIN := $(CP38_VENV)/bin
CP38_STAMP := $(CP38_VENV)/.installed
CP38_BASE := $(CP38_VENV)/.cellprofiler
# The bioimage.io export's extra: beside .venv, not in it (it holds pydantic below CellProfiler's 2.14).
BIO_VENV := .venv-bioimageio
BIO_STAMP := $(BIO_VENV)/.installed
# what a wheel of msrgan holds (pyproject.toml's packages and package data)
MSRGAN_FILES = $(wildcard msrgan_core/*.py msrgan_core/configs/*.toml msrgan_core/weights/*.safetensors \
	cellprofiler_plugin/*.py pipelines/*.py pipelines/*.cppipe)

.PHONY: demo test test-fast venv clean models gui-venv cp38-venv bioimageio-venv

# CellProfiler 4.2.8 calls scikit-image with its old `selem=` keyword, which scikit-image 0.20 (the
# oldest with Python 3.11 wheels) renamed `footprint=`: MeasureGranularity fails without this.
# Rename it in CellProfiler's modules, in this project's venvs only ($(1): the venv's bin folder).
CP_SELEM_MODULES := identifyprimaryobjects findmaxima enhanceorsuppressfeatures measuregranularity
define fix_selem
	d=$$($(1)/python -c 'import importlib.util as u; print(u.find_spec("cellprofiler").submodule_search_locations[0])')/modules && \
	for m in $(CP_SELEM_MODULES); do sed -i 's/selem=/footprint=/g' $$d/$$m.py; done && \
	! grep -q 'selem=' $$d/measuregranularity.py
endef

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-cellprofiler.txt requirements-dev.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip "setuptools<81" wheel
	$(BIN)/pip install -q "numpy<2" "Cython<3"
	$(BIN)/pip install -q --no-build-isolation python-javabridge==4.0.5
	$(BIN)/pip install -q --no-deps cellprofiler==4.2.8.1 cellprofiler-core==4.2.8.1
	$(BIN)/pip install -q -r requirements-cellprofiler.txt -r requirements-dev.txt "numpy<2"
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-build-isolation -e . "numpy<2"
	$(call fix_selem,$(BIN))
	touch $(STAMP)

gui-venv: $(GUI_STAMP)

# Same CellProfiler recipe as $(STAMP), in a venv that sees Debian's wx. pip -I installs numpy in
# the venv, so Debian's python3-numpy (a dependency of wx) never stands in for it. CellProfiler
# 4.2.8 passes floats to wx.Point, which leaves the settings panel blank on Python >= 3.10: cast
# them to int, in this venv only.
$(GUI_STAMP): pyproject.toml requirements-cellprofiler.txt requirements-dev.txt
	missing=; for p in $(GUI_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	rm -rf $(GUI_VENV)
	$(GUI_PYTHON) -m venv --system-site-packages $(GUI_VENV)
	$(GUI_BIN)/pip install -q -U pip "setuptools<81" wheel
	$(GUI_BIN)/pip install -q -I "numpy<2" "Cython<3"
	$(GUI_BIN)/pip install -q --no-build-isolation python-javabridge==4.0.5
	$(GUI_BIN)/pip install -q --no-deps cellprofiler==4.2.8.1 cellprofiler-core==4.2.8.1
	$(GUI_BIN)/pip install -q -r requirements-cellprofiler.txt -r requirements-dev.txt "numpy<2"
	$(GUI_BIN)/pip install -q torch==2.13.0
	$(GUI_BIN)/pip install -q --no-build-isolation -e . "numpy<2"
	f=$$($(GUI_BIN)/python -c 'import importlib.util as u; print(u.find_spec("cellprofiler").submodule_search_locations[0])')/gui/module_view/_module_sizer.py && \
	sed -i 's/item_location = wx\.Point(item_x, item_y)/item_location = wx.Point(int(item_x), int(item_y))/' $$f && \
	grep -q 'wx.Point(int(item_x), int(item_y))' $$f
	$(call fix_selem,$(GUI_BIN))
	$(GUI_BIN)/python -c 'import sys, wx, numpy, cellprofiler_core; assert numpy.__version__ < "2" and numpy.__file__.startswith(sys.prefix), numpy.__file__'
	touch $(GUI_STAMP)

# CellProfiler 4.2.8's own requirements, read from its installed metadata ($(1): the venv's bin
# folder): `except NAMES` all but those, `only NAMES` those alone.
cp_requirements = $(1)/python -c 'import re, sys; from importlib.metadata import requires; name = lambda r: re.match(r"[A-Za-z0-9._-]+", r).group().lower(); print("\n".join(sorted({r for d in ("cellprofiler", "cellprofiler-core") for r in requires(d) if ";" not in r and (name(r) in sys.argv[2:]) == (sys.argv[1] == "only")})))' $(2)
# Headless runs need neither the GUI nor MySQL export.
CP_HEADLESS_SKIP := wxpython mysqlclient
# Built against the venv's numpy (and Cython < 3) without build isolation, as in $(STAMP): an isolated
# build takes the newest numpy, and javabridge 4.0.5 does not compile against numpy 2 (Python >= 3.9).
CP_JAVA := python-javabridge python-bioformats

cp38-venv: $(CP38_STAMP)

# CellProfiler 4.2.8 on Python 3.8 with the requirements it declares, pins and all, those of
# cellprofiler-core included (installed already, it is left out of the list so that pip does not pull
# javabridge in early); its freeze is kept to compare with the one after msrgan. scikit-image 0.18.3
# still takes CellProfiler's `selem=`: no fix_selem here.
$(CP38_BASE):
	@test -x "$(CP38_PYTHON)" || { echo "no Python 3.8 under $(PYENV_ROOT)/versions: pyenv install 3.8, or make CP38_PYTHON=..." >&2; exit 1; }
	rm -rf $(CP38_VENV)
	$(CP38_PYTHON) -m venv $(CP38_VENV)
	$(CP38_BIN)/pip install -q -U pip wheel
	$(CP38_BIN)/pip install -q --no-deps cellprofiler==4.2.8 cellprofiler-core==4.2.8
	$(call cp_requirements,$(CP38_BIN),except cellprofiler-core $(CP_HEADLESS_SKIP) $(CP_JAVA)) > $(CP38_VENV)/cellprofiler-requirements.txt
	$(call cp_requirements,$(CP38_BIN),only $(CP_JAVA)) > $(CP38_VENV)/cellprofiler-java.txt
	$(CP38_BIN)/pip install -q -r $(CP38_VENV)/cellprofiler-requirements.txt
	$(CP38_BIN)/pip install -q "Cython<3"
	$(CP38_BIN)/pip install -q --no-build-isolation -r $(CP38_VENV)/cellprofiler-java.txt
	$(CP38_BIN)/pip freeze > $(CP38_VENV)/freeze-before-msrgan.txt
	touch $(CP38_BASE)

# msrgan by a plain `pip install .` (not editable, with its dependencies), as a user installs it
# into CellProfiler's own environment; again whenever msrgan's files change. pip must change none
# of CellProfiler's packages: every line of the freeze before msrgan is in the freeze after it
# (tests/test_cellprofiler_env.py checks the pins against CellProfiler's metadata too). On Python 3.8
# PyPI's torch is a CUDA build (about 5 GB installed): --no-cache-dir keeps its 2.6 GB of downloads
# from staying in pip's cache as well.
$(CP38_STAMP): $(CP38_BASE) pyproject.toml $(MSRGAN_FILES)
	leftover=$$(test -d build || echo yes); $(CP38_BIN)/pip install -q --no-cache-dir .; ok=$$?; \
	if [ -n "$$leftover" ]; then rm -rf build; fi; exit $$ok
	$(CP38_BIN)/pip freeze > $(CP38_VENV)/freeze-after-msrgan.txt
	changed=$$(grep -vxFf $(CP38_VENV)/freeze-after-msrgan.txt $(CP38_VENV)/freeze-before-msrgan.txt); \
	if [ -n "$$changed" ]; then echo "pip install . changed CellProfiler's packages:" $$changed >&2; exit 1; fi
	touch $(CP38_STAMP)

demo: $(STAMP)
	$(BIN)/python -m msrgan_core.demo --out $(DEMO_OUT)

bioimageio-venv: $(BIO_STAMP)

# `msrgan export --bioimageio` and its test (tests/test_export.py): msrgan editable with its extra.
$(BIO_STAMP): pyproject.toml
	rm -rf $(BIO_VENV)
	$(PYTHON) -m venv $(BIO_VENV)
	$(BIO_VENV)/bin/pip install -q -U pip "setuptools<81" wheel
	$(BIO_VENV)/bin/pip install -q torch==2.13.0
	$(BIO_VENV)/bin/pip install -q -e ".[bioimageio]"
	touch $(BIO_STAMP)

test: $(STAMP) $(GUI_STAMP) $(CP38_STAMP) $(BIO_STAMP)
	$(BIN)/python -m pytest tests -q

# The unit tier: toy networks on generated images, no CellProfiler, no subprocesses (about a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -q -m "not slow and not integration"

clean:
	rm -rf $(VENV) $(GUI_VENV) $(CP38_VENV) $(BIO_VENV) $(DEMO_OUT)

# The packaged models' recipe, sized for CPUs (docs/training.md has the measured times): stage 1
# trains the compact generator with the pixel loss (fidelity), stage 2 trains it on with the
# adversarial loss (perceptual); each model's uncertainty image is then calibrated on 24 images
# spread through the validation split that stage 1 held out. An interrupted stage resumes.
MSRGAN_DATA ?= ../shared/data
export MSRGAN_DATA
MODEL_STAGES = default_models default_models_adversarial
HELD_OUT = $$($(BIN)/python -c 'import json; print(" ".join(json.load(open("runs/default_models/split.json"))["val"]))')
models: $(STAMP)
	for stage in $(MODEL_STAGES); do \
		$(BIN)/msrgan train -q --config msrgan_core/configs/$$stage.toml --out runs/$$stage \
			$$(test -f runs/$$stage/checkpoint.pt && echo --resume) || exit 1; \
	done
	$(BIN)/msrgan calibrate runs/default_models/fidelity.safetensors --hr $(HELD_OUT) --sample 24 -q --overwrite \
		-o msrgan_core/weights/fidelity.safetensors
	$(BIN)/msrgan calibrate runs/default_models_adversarial/perceptual.safetensors --hr $(HELD_OUT) --sample 24 -q --overwrite \
		-o msrgan_core/weights/perceptual.safetensors

# fidelity-clean is round 1's fidelity (16 x 64 SRResNet, trained on one H200; commit 80827f6), kept
# for noise-free binned inputs, where it is still the best (README): one pass with output bins
# matched (a second orientation gained 0.02 dB), calibrated as above on the same split (seed 0
# drew the same held-out files for both rounds), named after its new role.
ROUND1 = runs/round1
fidelity-clean: $(STAMP)
	mkdir -p $(ROUND1)
	git show 80827f6:msrgan_core/weights/fidelity.safetensors > $(ROUND1)/fidelity.safetensors
	$(BIN)/msrgan set-defaults $(ROUND1)/fidelity.safetensors --ensemble 1 --match-bins --overwrite -o $(ROUND1)/one_pass.safetensors
	$(BIN)/msrgan calibrate $(ROUND1)/one_pass.safetensors --hr $(HELD_OUT) --sample 24 -q --overwrite -o $(ROUND1)/calibrated.safetensors
	$(BIN)/python -c 'import sys; from msrgan_core.modelfile import load_model, save_model; m = load_model(sys.argv[1]); \
		save_model(sys.argv[2], m.generator, dict(m.metadata, name="fidelity-clean"))' \
		$(ROUND1)/calibrated.safetensors msrgan_core/weights/fidelity-clean.safetensors
