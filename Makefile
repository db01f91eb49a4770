# `make test` is the README's test command and what CI runs (.ci/run).
.PHONY: test test-long demo

test:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) 2>/dev/null || \
	    echo "note: chromium not installed; the HTML browser test will skip" )
	python -m pip install -q -e ".[test]"
	@# llama.cpp (llama-cpp-python 0.3.36) compiled from source once per machine, wheel cached;
	@# the tests that need it skip with a reason if this fails.
	./scripts/ensure_llamacpp.sh || echo "note: llama-cpp-python not installed; llama.cpp tests will skip"
	python -m pytest -q

# The fault suite's every case (tests/faults, marker `long`): ~15 min more on 2 cores.
test-long: test
	python -m pytest -q -m long

demo:
	python -m pip install -q -e ".[demo]"
	bisect demo
