# tokenpool: `make run` serves on SQLite, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FLASK  := $(BIN)/flask --app wsgi
HOST   ?= 127.0.0.1
PORT   ?= 8000
N      ?= 1

.PHONY: run test test-fast lint fmt ci bench e2e console-screenshots migrate-up migrate-down migrate-version migrate-create \
        migrate-force migrate-drop db-shell db-reset seed sweep clean

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

console-screenshots: venv  ## the console's browser test, keeping its two screenshots in docs/images
	CONSOLE_SCREENSHOTS_DIR=docs/images $(BIN)/pytest -q tests/e2e/test_e2e_console.py

lint: venv  ## ruff (docstring rules included), ruff format, mypy over service/ (tests/test_static_checks.py too)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff check --fix .

ci:
	bash .ci/run

bench: venv
	$(BIN)/python bench/run.py

migrate-up: venv
	$(FLASK) db upgrade

migrate-down: venv  ## step back N revisions (default 1): make migrate-down N=2
	@case "$(N)" in ''|0|*[!0-9]*) echo "usage: make migrate-down N=<revisions to step back, 1 or more>" >&2; exit 2;; esac
	$(FLASK) db downgrade -- -$(N)

migrate-version: venv
	$(FLASK) db current

migrate-create: venv
	@test -n "$(NAME)" || (echo "usage: make migrate-create NAME=what_changes" && exit 2)
	$(FLASK) db revision --autogenerate -m "$(NAME)"

migrate-force: venv  ## recovery: record revision V as applied without running anything (flask db stamp)
	@test -n "$(V)" || (echo "usage: make migrate-force V=<revision>   (a revision id, or head)" >&2 && exit 2)
	$(FLASK) db stamp --purge $(V)

migrate-drop: venv  ## drop every table, function and type (refused when APP_ENV=production); YES=1 skips the question
	$(FLASK) database drop $(if $(filter 1 yes true,$(YES)),--yes)

db-shell: venv  ## psql or sqlite3 on DATABASE_URL (the SQLite file under instance/ by default)
	$(FLASK) database shell

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
