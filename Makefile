# Two commands set up everything on a fresh machine:
#   make demo   create .venv, install finecut, run the main job on the embedded default
#   make test   create .venv with dev extras, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned here (not in pyproject) so a fresh machine takes the CPU build on its disk;
# pyproject only bounds the range users may bring.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv dev demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/finecut demo -o demo_out

test: venv
	@# pytest exits 5 when it collected no test; that is not a failure of the suite
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo 'pytest collected no tests'; exit 0; fi; exit $$rc

lint: venv
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) demo_out build *.egg-info src/*.egg-info

# ---------------------------------------------------------------------------------- serve
# `make serve`: the web page and API on http://127.0.0.1:8000/ (Ctrl-C stops);
# `make browser-deps`: Debian's chromium + chromedriver for tests/serve/test_browser.py
.PHONY: serve browser-deps

serve: venv
	$(VENV)/bin/finecut serve

browser-deps:
	bash .ci/install-chromium
