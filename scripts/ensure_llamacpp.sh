#!/usr/bin/env bash
# Make `import llama_cpp` work: install llama-cpp-python 0.3.36 from the wheel cached under
# $LAYERBISECT_CACHE/wheels/ (default ~/.cache/layerbisect/wheels/), building that wheel from the
# pinned source distribution first when absent (CPU, CMake; ~8 min on 2 free cores, once per
# machine). `--no-build` installs a cached wheel only. See layerbisect/producers/llamacpp_build.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m layerbisect.producers.llamacpp_build "$@"
