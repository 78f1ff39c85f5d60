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

.PHONY: demo test test-fast venv clean models gui-venv

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

demo: $(STAMP)
	$(BIN)/python -m msrgan_core.demo --out $(DEMO_OUT)

test: $(STAMP) $(GUI_STAMP)
	$(BIN)/python -m pytest tests -q

# The unit tier: toy networks on generated images, no CellProfiler, no subprocesses (about a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -q -m "not slow and not integration"

clean:
	rm -rf $(VENV) $(GUI_VENV) $(DEMO_OUT)

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
	$(BIN)/msrgan calibrate runs/default_models/fidelity.safetensors --hr $(HELD_OUT) --sample 24 -q \
		-o msrgan_core/weights/fidelity.safetensors
	$(BIN)/msrgan calibrate runs/default_models_adversarial/perceptual.safetensors --hr $(HELD_OUT) --sample 24 -q \
		-o msrgan_core/weights/perceptual.safetensors
