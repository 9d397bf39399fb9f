#!/usr/bin/env bash
# Installs the moto S3 server used by the storage tests into .cache/moto-venv.
# Idempotent: does nothing when the pinned version is already installed.
set -euo pipefail

MOTO_VERSION="${MOTO_VERSION:-5.2.5}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.cache/moto-venv"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    exit 0
fi

mkdir -p "$ROOT/.cache"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
"$VENV/bin/moto_server" --help >/dev/null
echo "moto $MOTO_VERSION installed in $VENV"
