#!/usr/bin/env bash
# Set up from nothing (no-op when done), then run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q -rs "$@" tests
