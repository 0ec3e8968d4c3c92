# Two entry points: `make demo` (whole chain on an embedded default) and `make test` (ruff, mypy, pytest).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test typecheck browser clean
TYPECHECK := build/typecheck

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/crisis-tool demo --out demo_out

test: $(STAMP) typecheck browser build/tensorrt-stubs
	HF_HUB_OFFLINE=1 $(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

# TensorRT's API names, checked against tensorrt-stubs (tests/export/test_trt_api_stubs.py). Kept out of the venv:
# its `tensorrt/` folder would make `import tensorrt` succeed as an empty package.
build/tensorrt-stubs:
	$(PY) -m pip install -q --no-deps --target build/tensorrt-stubs tensorrt-stubs || \
	  echo "note: tensorrt-stubs not installed; the TensorRT API test will skip"

# The review page's real-browser test needs Debian's chromium + chromium-driver; installed here when missing
# (as root, with apt); where that cannot be done the test skips and prints why.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	     >/dev/null) ; } || echo "note: chromium/chromium-driver not installed; the browser test will skip"

# mypy over runtime/ and export/ under their import names (crisis_tool.runtime, crisis_tool.export).
typecheck: $(STAMP)
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/crisis_tool
	for f in toolkit/*; do ln -s "$$PWD/$$f" $(TYPECHECK)/crisis_tool/; done
	ln -s "$$PWD/runtime" $(TYPECHECK)/crisis_tool/runtime
	ln -s "$$PWD/export" $(TYPECHECK)/crisis_tool/export
	MYPYPATH=$(TYPECHECK) $(VENV)/bin/mypy -p crisis_tool.runtime -p crisis_tool.export

clean:
	rm -rf $(VENV) demo_out build
