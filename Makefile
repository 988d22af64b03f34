# The two commands on the README's first screen are `make demo` and `make test`.
# Both set the environment up first (scripts/setup.sh is idempotent and fast on re-run).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Two pytest-xdist workers, a whole test file per worker at a time (a file's module fixtures, e.g. the
# one node a test_ros_node*.py file starts, stay in one process; test/conftest.py gives each worker its
# own ROS_DOMAIN_ID and hands out the slowest files first). PYTEST_XDIST= runs in one process.
PYTEST_XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: setup test demo lint doctor clean eval-bundled train-bundled

setup:
	@bash scripts/setup.sh

# no path: pytest's testpaths (test/) unless PYTEST_ARGS names files, e.g. PYTEST_ARGS=test/test_demo.py
test: setup
	$(PY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

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
