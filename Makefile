# Two entry points: `make demo` (whole chain on an embedded default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/crisis-tool demo --out demo_out

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) demo_out
