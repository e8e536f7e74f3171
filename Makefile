# The two commands of the README: `make demo` and `make test`.
# Both create the virtualenv and install everything they need on a fresh clone.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# torch from PyPI without what a CPU never loads (triton, cuSOLVER, ...): 1.3 GB less.
TORCH_CPU := deploy/requirements-torch-cpu.txt
LEAN := $(BIN)/python deploy/lean_install.py

.PHONY: demo test lint typecheck unit integration kafka-jars clean

# `--no-deps` twice: a plain `pip install -e .` would pull torch's left-out wheels back in.
# `lean_install.py rest` lists the rest of pyproject.toml's requirements; `check` fails on any
# missing one other than those left out on purpose, and unless torch runs on the CPU.
$(INSTALLED): pyproject.toml $(TORCH_CPU) deploy/lean_install.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-deps -r $(TORCH_CPU)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(LEAN) rest > $(VENV)/requirements-rest.txt
	$(BIN)/python -m pip install --quiet -r $(VENV)/requirements-rest.txt
	$(LEAN) check
	touch $(INSTALLED)

kafka-jars: $(INSTALLED)
	$(BIN)/python -c "from deploy.kafka.harness import classpath, kafka_version; classpath(); print('Apache Kafka', kafka_version(), 'jars ready')"

demo: $(INSTALLED)
	$(BIN)/rum demo

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(INSTALLED)
	$(BIN)/mypy

unit: $(INSTALLED)
	$(BIN)/pytest tests/unit -q

integration: kafka-jars
	$(BIN)/pytest tests/integration -q

test: kafka-jars lint typecheck
	$(BIN)/pytest tests -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
