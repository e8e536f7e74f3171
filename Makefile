# The two commands of the README: `make demo` and `make test`.
# Both create the virtualenv and install everything they need on a fresh clone.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration kafka-jars clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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
