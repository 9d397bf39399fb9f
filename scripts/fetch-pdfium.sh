#!/usr/bin/env bash
# Installs libpdfium.so into .cache/pdfium/ from the pypdfium2 wheel on PyPI.
#
# The wheel is pinned by version and by sha256 (pip's --require-hashes refuses anything else),
# so every machine renders with the same pdfium build (chromium/8149, which pdfium-render's
# `pdfium_8125` feature matches). Needs only Python 3 with pip. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYPDFIUM2_VERSION=5.15.2
DEST=.cache/pdfium
PYTHON=${PYTHON:-python3}

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)
    PLATFORM=manylinux_2_17_x86_64
    SHA256=dc31aea5b0fb9fefc9b537a65f4113980b2c40798445736a7e6565bc85161e37 ;;
  Linux-aarch64)
    PLATFORM=manylinux_2_17_aarch64
    SHA256=dd46e93c0c3a73f6cea8489baff6d77a5d0759dd53fbbce0aeb49c91830176fc ;;
  *)
    echo "fetch-pdfium: no pinned pypdfium2 wheel for $(uname -s)-$(uname -m); put libpdfium in $DEST/ or set PDFIUM_LIB" >&2
    exit 1 ;;
esac

if [ -f "$DEST/libpdfium.so" ] && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "pypdfium2 $PYPDFIUM2_VERSION $SHA256" ]; then
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'pypdfium2==%s --hash=sha256:%s\n' "$PYPDFIUM2_VERSION" "$SHA256" >"$work/requirements.txt"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform "$PLATFORM" --require-hashes -r "$work/requirements.txt" -d "$work"

wheel=$(ls "$work"/pypdfium2-"$PYPDFIUM2_VERSION"-*.whl)
echo "$SHA256  $wheel" | sha256sum --check --quiet

mkdir -p "$DEST"
"$PYTHON" - "$wheel" "$DEST" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    data = zf.read("pypdfium2_raw/libpdfium.so")
tmp = os.path.join(dest, "libpdfium.so.tmp")
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, os.path.join(dest, "libpdfium.so"))
PY
echo "pypdfium2 $PYPDFIUM2_VERSION $SHA256" >"$DEST/VERSION"
echo "fetch-pdfium: installed $DEST/libpdfium.so (pypdfium2 $PYPDFIUM2_VERSION)"
