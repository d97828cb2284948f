#!/usr/bin/env bash
# Install fsood and its pinned dependencies into ./.venv (Python 3.11).
#   bash scripts/install.sh            # then: . .venv/bin/activate
#   bash scripts/install.sh --dev      # also what the tests need (requirements-dev.lock)
# PYTHON picks the interpreter (default python3.11). requirements.lock pins every
# package a rebuild needs, torch 2.14.1 / torchvision 0.29.1 included.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
LOCK=requirements.lock
if [ "${1:-}" = "--dev" ]; then LOCK=requirements-dev.lock; fi
if [ ! -x .venv/bin/python ]; then
  echo "fsood: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "fsood: installing pinned dependencies ($LOCK)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$LOCK"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
echo "fsood: installed $(.venv/bin/python -c 'import fsood, torch; print("fsood", fsood.__version__, "torch", torch.__version__)')"
