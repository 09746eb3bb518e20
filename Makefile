# lited: two commands on a fresh machine: `make demo` and `make test`.
PY := .venv/bin/python
SHARED ?= ../shared
# test processes side by side (pytest-xdist, one test file each at a time): the suite was tuned on 2 cores
TEST_JOBS ?= 2

.PHONY: demo demo-cloud test test-fast bundles bench venv venv-test tools-venv clean

venv:
	@tools/bootstrap.sh runtime

venv-test:
	@tools/bootstrap.sh test

## tools-venv: the model-conversion tools (paddlepaddle, x2paddle, paddle_lite_opt), never in the daemon's venv
tools-venv:
	@tools/bootstrap.sh tools

## bundles: assemble build/bundles/<name>/ for each model in ../shared/models
bundles: venv
	@$(PY) tools/make_bundles.py --models $(SHARED)/models

## demo: the daemon on the committed PP-OCRv4 demo bundle
demo: venv
	@$(PY) tools/demo.py

## demo-cloud: a board and a server over MQTT: Mosquitto, lited serve (ultraface), lited cloud (mobilenetv2)
demo-cloud: venv-test
	@$(PY) tools/demo_cloud.py

## test: the whole suite (as CI runs it); the two venvs are made side by side
test:
	@$(MAKE) --no-print-directory -j2 venv-test tools-venv
	@$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile

## test-fast: skip the slow tests (model conversion, long soak)
test-fast: venv-test
	@$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not slow"

## bench: speed and memory beside bare Paddle Lite and onnxruntime -> docs/BENCHMARKS.md
bench: venv-test
	@$(PY) tools/bench.py

clean:
	rm -rf build .pytest_cache
