# `make test` is the README's test command and what CI runs (.ci/run).
.PHONY: test demo

test:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) 2>/dev/null || \
	    echo "note: chromium not installed; the HTML browser test will skip" )
	python -m pip install -q -e ".[test]"
	python -m pytest -q

demo:
	python -m pip install -q -e ".[demo]"
	bisect demo
