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

.PHONY: demo test test-fast venv clean models models-gpu gui-venv

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

clean:
	rm -rf $(VENV) $(GUI_VENV) $(DEMO_OUT)

# The default models' CPU recipe: one command, checked-in configs, reproducible from their seed.
# Stage 1 pretrains with the pixel loss, then adds the adversarial loss (the perceptual model);
# stage 2 trains stage 1's pixel-loss model on (the fidelity model). An interrupted stage
# resumes from its checkpoint (a finished one only reloads its data). Measured end to end on 2
# AVX2-only cores: stage 1 (8000 + 1000 steps) 86 minutes, stage 2 (2000 steps) 13 minutes,
# 99 minutes in all. Then both models are copied into the package, replacing the GPU recipe's;
# the fidelity model set, as the packaged one is, to average 2 orientations and match bins by
# default (benchmarks/quality.py measures the models so).
MSRGAN_DATA ?= ../shared/data
export MSRGAN_DATA
MODEL_STAGES = default_models default_models_refine
models: $(STAMP)
	for stage in $(MODEL_STAGES); do \
		$(BIN)/msrgan train --config msrgan_core/configs/$$stage.toml --out runs/$$stage \
			$$(test -f runs/$$stage/checkpoint.pt && echo --resume) || exit 1; \
	done
	$(BIN)/msrgan set-defaults runs/default_models_refine/fidelity.safetensors --ensemble 2 --match-bins \
		-o msrgan_core/weights/fidelity.safetensors
	cp runs/default_models/perceptual.safetensors msrgan_core/weights/

# The packaged models' GPU recipe (16 x 64 generator; run on one H200 in two leases of about 5 and
# 7 minutes, with the two adversarial runs and the refinement sharing the GPU). Needs a CUDA
# build of torch in place of the CPU one that .venv holds: GPU_PYTHON names its interpreter.
# Stage 1: L1 pretraining; stage 2a: its weight-averaged continuation, stopped at step 8000 as
# the lease was (fidelity); stage 2b: two adversarial runs from stage 1, blended (perceptual).
# The packaged files also carry their data paths as ../shared/data and the blend's validation
# figures, computed after blending on the same validation pairs as training's. The packaged
# fidelity file is stage 2a's with its inference defaults set (msrgan set-defaults): 2
# orientations averaged and bins matched, which benchmarks/quality.py measured as the best
# default (+3.51 / +3.05 dB over Lanczos, against +3.48 / +2.94 for one plain pass).
GPU_PYTHON ?= $(BIN)/python
GPU_TRAIN = $(GPU_PYTHON) -m msrgan_core.cli train --config msrgan_core/configs
models-gpu:
	$(GPU_TRAIN)/default_models_gpu.toml --out runs/gpu_models
	$(GPU_TRAIN)/default_models_gpu_refine.toml --out runs/gpu_refine --until-step 8000
	$(GPU_TRAIN)/default_models_gpu_adversarial.toml --out runs/gpu_adversarial
	$(GPU_TRAIN)/default_models_gpu_adversarial.toml --out runs/gpu_adversarial_w0.0025 --set loss.w_adv=0.0025
	$(GPU_PYTHON) -m msrgan_core.cli blend runs/gpu_adversarial/perceptual.safetensors \
		runs/gpu_adversarial_w0.0025/perceptual.safetensors --weight 0.775 -o runs/gpu_adversarial/perceptual_blend.safetensors
	$(GPU_PYTHON) -m msrgan_core.cli set-defaults runs/gpu_refine/fidelity.safetensors --ensemble 2 --match-bins \
		-o msrgan_core/weights/fidelity.safetensors
	cp runs/gpu_adversarial/perceptual_blend.safetensors msrgan_core/weights/perceptual.safetensors
