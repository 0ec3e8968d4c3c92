# Two entry points: `make demo` (whole chain on an embedded default) and `make test` (ruff, mypy, pytest).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test typecheck clean
TYPECHECK := build/typecheck

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/crisis-tool demo --out demo_out

test: $(STAMP) typecheck
	HF_HUB_OFFLINE=1 $(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

# mypy over runtime/ and export/ under their import names (crisis_tool.runtime, crisis_tool.export).
typecheck: $(STAMP)
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/crisis_tool
	for f in toolkit/*; do ln -s "$$PWD/$$f" $(TYPECHECK)/crisis_tool/; done
	ln -s "$$PWD/runtime" $(TYPECHECK)/crisis_tool/runtime
	ln -s "$$PWD/export" $(TYPECHECK)/crisis_tool/export
	MYPYPATH=$(TYPECHECK) $(VENV)/bin/mypy -p crisis_tool.runtime -p crisis_tool.export

clean:
	rm -rf $(VENV) demo_out build
