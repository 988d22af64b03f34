# The two commands on the README's first screen are `make demo` and `make test`.
# Both set the environment up first (scripts/setup.sh is idempotent and fast on re-run).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo lint doctor clean eval-bundled train-bundled

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest test $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/sparse-perception demo

# held-out synthetic scenes through the ROS path for the bundled models (models/README.md)
eval-bundled: setup
	PY=$(PY) bash scripts/eval_bundled.sh

# retrain both bundled models from scratch (hours on 2 cores; resumable in pieces, MINUTES=M)
train-bundled: setup
	PY=$(PY) bash scripts/train_bundled.sh

lint: setup
	$(PY) -m ruff check .

doctor: setup
	$(VENV)/bin/sparse-perception doctor

clean:
	rm -rf _build_interfaces build install log .pytest_cache
