# Two commands do everything: `make demo` (main job on the sample) and `make test` (the suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export QT_QPA_PLATFORM ?= offscreen
# Qt's offscreen platform gets no OpenGL context without an X display, and napari's canvas needs one as soon
# as a layer is added: with no DISPLAY, run the tests inside Xvfb when it is installed (.ci/run installs it).
XVFB := $(if $(DISPLAY),,$(shell command -v xvfb-run >/dev/null 2>&1 && echo 'xvfb-run -a -s "-screen 0 1600x1000x24"'))

$(BIN)/spermmorph: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e ".[testing]"
	touch $(BIN)/spermmorph

venv: $(BIN)/spermmorph

test: venv
	$(XVFB) $(BIN)/python -m pytest -q tests

demo: venv
	$(BIN)/spermmorph demo

lint: venv
	$(BIN)/ruff check src tests benchmarks scripts

.PHONY: venv test demo lint
