#!/usr/bin/env bash
# The adversarial properties of the suite, run far longer than `make test` does:
# hostile strings to the terminal renderers, forged log lines, label selectors,
# any event to the JSON line writer, and the schema equality of every event;
# the C JSON lines and time stamps against orjson and their Python model, and
# the C decoding of damaged and random records against its Python model.
# Usage: bench/fuzz_long.sh [EXAMPLES]   (default 20000 per property)
set -euo pipefail
cd "$(dirname "$0")/.."
export TRACER_FUZZ_EXAMPLES="${1:-20000}"
exec .venv/bin/pytest -q -p no:cacheprovider --timeout 0 \
    tests/test_adversarial.py tests/test_jsonline.py tests/test_wire_decode.py
