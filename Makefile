# tokenpool: `make run` serves on SQLite, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FLASK  := $(BIN)/flask --app wsgi
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test test-fast lint fmt ci bench e2e migrate-up migrate-down migrate-version migrate-create db-reset seed sweep clean

$(BIN)/activate: requirements.txt requirements-dev.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(BIN)/activate

venv: $(BIN)/activate

run: venv  ## migrate, seed and serve on http://127.0.0.1:8000 (SQLite unless DATABASE_URL is set)
	$(FLASK) db upgrade
	$(FLASK) tokens seed
	$(FLASK) run --host $(HOST) --port $(PORT)

test: venv  ## the whole suite (PostgreSQL at 127.0.0.1:5432 and Redis at :6379 expected)
	$(BIN)/pytest

test-fast: venv  ## everything but real-process end-to-end tests
	$(BIN)/pytest -m "not e2e"

e2e: venv
	$(BIN)/pytest -m e2e

lint: venv
	$(BIN)/ruff check .

fmt: venv
	$(BIN)/ruff check --fix .

ci:
	bash .ci/run

bench: venv
	$(BIN)/python bench/run.py

migrate-up: venv
	$(FLASK) db upgrade

migrate-down: venv
	$(FLASK) db downgrade

migrate-version: venv
	$(FLASK) db current

migrate-create: venv
	@test -n "$(NAME)" || (echo "usage: make migrate-create NAME=what_changes" && exit 2)
	$(FLASK) db revision --autogenerate -m "$(NAME)"

db-reset: venv  ## drop every table and rebuild the schema and the pool
	$(FLASK) db downgrade base
	$(FLASK) db upgrade
	$(FLASK) tokens seed

seed: venv
	$(FLASK) tokens seed

sweep: venv
	$(FLASK) tokens sweep

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
