#!/usr/bin/env bash
# System packages the tests use (Debian): nothing yet beyond the Python venv.
set -euo pipefail
exit 0
