# Two commands: `make demo` and `make test`. Each builds .venv when needed (Python 3.11,
# CellProfiler 4.2.8.1, torch 2.13.0 CPU, msrgan editable) and reuses it otherwise.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
JAVA_HOME ?= /usr/lib/jvm/java-17-openjdk-amd64
export JAVA_HOME
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-cellprofiler.txt requirements-dev.txt Makefile
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip "setuptools<81" wheel
	$(BIN)/pip install -q "numpy<2" "Cython<3"
	$(BIN)/pip install -q --no-build-isolation python-javabridge==4.0.5
	$(BIN)/pip install -q --no-deps cellprofiler==4.2.8.1 cellprofiler-core==4.2.8.1
	$(BIN)/pip install -q -r requirements-cellprofiler.txt -r requirements-dev.txt "numpy<2"
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-build-isolation -e . "numpy<2"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m msrgan_core.demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest tests -q

clean:
	rm -rf $(VENV) $(DEMO_OUT)
