# The README's commands. `make demo` runs the main job, `make test` the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch 2.14.1 + torchvision 0.29.1 is the pair that imports together on the dev machines;
# users elsewhere get whatever satisfies pyproject's ranges (TORCH_SPEC= to skip the pin).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[dev,onnx,openvino,tensorboard]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check src tests benchmarks

demo: install
	$(PY) -m maskrcnn demo --out runs/demo

bench: install
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_roi_align.py

clean:
	rm -rf $(VENV) runs
