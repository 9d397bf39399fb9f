#!/usr/bin/env bash
# Builds the docpipe binary with candle's CUDA backend on a machine that has neither CUDA nor a GPU,
# and puts it in .cache/gpu/, a folder to carry to a GPU machine (see docs/gpu.md).
#
# - The compiler (nvcc, cicc, ptxas), CUDA headers and libcudart come from NVIDIA's wheels on PyPI,
#   pinned by version and sha256, installed into .cache/cuda-toolkit/. nvcc is pinned to 13.0 because
#   the PTX it writes must not be newer than what the GPU machine's driver accepts (580.x: CUDA 13.0).
# - cudarc links libcuda, cuBLAS, cuBLASLt, cuRAND and NVRTC dynamically. Rather than downloading
#   those (about 1 GB of wheels, and no wheel has libcuda), the linker gets stub libraries generated
#   from the real libraries' exported symbols (scripts/cuda-stubs/<soname>.syms): each stub carries
#   the real soname and symbol versions, so the binary binds to the real libraries on the GPU machine.
#
# - FlashAttention-2 (`flash-attn` feature, candle-flash-attn) needs CUTLASS, which its build fetches
#   from GitHub through cudaforge. The PyPI wheel nvidia-cutlass (pinned, sha256-checked) carries the
#   same headers; laid out as cudaforge's checkout of the pinned commit, the fetch is skipped. Only
#   the kernels listed in crates/docpipe-vlm/flash-attn-kernels.txt are compiled (all 53 take about
#   4 CPU-hours): the build uses a copy of the crate whose other kernel files are stubs that abort,
#   and docpipe never calls them. The compiled kernels stay in .cache/flash-attn/build.
#
# Environment: CUDA_COMPUTE_CAP (default 90, the H100), PYTHON (default python3),
# CUDAFORGE_THREADS (parallel nvcc jobs, default 2), FLASH_ATTN (default 1; 0 builds the plain
# `cuda` feature without FlashAttention). Idempotent: a second run only re-runs cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

TOOLKIT=$ROOT/.cache/cuda-toolkit
CUDA=$TOOLKIT/nvidia/cu13
STUBS=$TOOLKIT/stubs
GPU_DIR=$ROOT/.cache/gpu
FLASH=$ROOT/.cache/flash-attn
PYTHON=${PYTHON:-python3}
FLASH_ATTN=${FLASH_ATTN:-1}

# name==version sha256 (x86_64 manylinux wheels).
WHEELS=(
  "nvidia-cuda-nvcc==13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"
  "nvidia-cuda-crt==13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
  "nvidia-nvvm==13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
  "nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "nvidia-cuda-cccl==13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
)

# CUTLASS 3.5.0 headers, and the commit candle-flash-attn 0.11.1's build.rs pins.
CUTLASS_WHEEL="nvidia-cutlass==3.5.0.0 4ec3ab4820dd4ae3ebc2c5ddf23352b0dc90f779435284e7dce822006adc51f6"
CUTLASS_COMMIT=7d49e6c7e2f8896c47f586706e67e1fb215529dc
FLASH_ATTN_CRATE=candle-flash-attn-0.11.1

if [ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]; then
  echo "build-cuda: the pinned CUDA wheels are for Linux x86_64 only" >&2
  exit 1
fi

install_toolkit() {
  local requirements pins
  requirements=$(printf '%s --hash=sha256:%s\n' ${WHEELS[@]})
  pins=$(printf '%s\n' "$requirements" | sha256sum | cut -d' ' -f1)
  if [ -x "$CUDA/bin/nvcc" ] && [ "$(cat "$TOOLKIT/VERSION" 2>/dev/null)" = "$pins" ]; then
    return
  fi
  mkdir -p "$TOOLKIT/wheels"
  printf '%s\n' "$requirements" >"$TOOLKIT/requirements.txt"
  # --require-hashes: pip refuses any file whose sha256 is not the pinned one.
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_12_x86_64 --require-hashes -r "$TOOLKIT/requirements.txt" -d "$TOOLKIT/wheels"
  local fresh=$TOOLKIT/nvidia.new
  rm -rf "$fresh"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-index \
    --find-links "$TOOLKIT/wheels" --require-hashes -r "$TOOLKIT/requirements.txt" --target "$fresh"
  rm -rf "$TOOLKIT/nvidia"
  mv "$fresh/nvidia" "$TOOLKIT/nvidia"
  rm -rf "$fresh"
  # The linker wants the unversioned name; the binary records libcudart.so.13 (its soname).
  ln -sfn libcudart.so.13 "$CUDA/lib/libcudart.so"
  echo "$pins" >"$TOOLKIT/VERSION"
  echo "build-cuda: installed the CUDA 13.0 compiler wheels into $TOOLKIT"
}

# One stub per scripts/cuda-stubs/<soname>.syms: every exported symbol as an empty function, under
# the real library's symbol version (the `sym@@VERSION` lines), with the real soname.
make_stubs() {
  mkdir -p "$STUBS"
  local syms soname stem version
  for syms in scripts/cuda-stubs/*.syms; do
    soname=$(basename "$syms" .syms)
    stem=${soname%%.so*}
    if [ "$STUBS/$soname" -nt "$syms" ]; then
      continue
    fi
    version=$(awk -F'@@' 'NF == 2 { print $2; exit }' "$syms")
    awk -F'@@' -v version="$version" '$1 != version { print "void " $1 "(void) {}" }' "$syms" \
      >"$STUBS/$stem.c"
    if [ -n "$version" ]; then
      {
        echo "$version {"
        echo "  global:"
        awk -F'@@' 'NF == 2 { print "    " $1 ";" }' "$syms"
        echo "  local: *;"
        echo "};"
      } >"$STUBS/$stem.map"
      gcc -shared -fPIC -nostdlib -o "$STUBS/$soname.tmp" "$STUBS/$stem.c" \
        -Wl,-soname,"$soname" -Wl,--version-script,"$STUBS/$stem.map"
    else
      gcc -shared -fPIC -nostdlib -o "$STUBS/$soname.tmp" "$STUBS/$stem.c" -Wl,-soname,"$soname"
    fi
    mv "$STUBS/$soname.tmp" "$STUBS/$soname"
    ln -sfn "$soname" "$STUBS/$stem.so"
  done
}

# cudaforge skips its clone when $CUDAFORGE_HOME/git/checkouts/cutlass-<16 hex>/ has include/ and
# `git rev-parse HEAD` there prints the pinned commit.
install_cutlass() {
  local checkout=$FLASH/cudaforge/git/checkouts/cutlass-${CUTLASS_COMMIT:0:16}
  if [ -d "$checkout/include/cutlass" ] && [ "$(git -C "$checkout" rev-parse HEAD 2>/dev/null)" = "$CUTLASS_COMMIT" ]; then
    return
  fi
  local wheels=$FLASH/wheels
  mkdir -p "$wheels"
  printf '%s --hash=sha256:%s\n' $CUTLASS_WHEEL >"$wheels/requirements.txt"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$wheels/requirements.txt" -d "$wheels"
  local unpacked=$FLASH/cutlass.new
  rm -rf "$unpacked" "$checkout"
  "$PYTHON" -m zipfile -e "$wheels"/nvidia_cutlass-3.5.0.0-py3-none-any.whl "$unpacked"
  mkdir -p "$(dirname "$checkout")"
  mv "$unpacked/cutlass_library/source" "$checkout"
  rm -rf "$unpacked"
  git -C "$checkout" init --quiet
  echo "$CUTLASS_COMMIT" >"$checkout/.git/HEAD"
  echo "build-cuda: CUTLASS 3.5.0 headers from the nvidia-cutlass wheel in $checkout"
}

# A copy of candle-flash-attn whose kernel files not listed in flash-attn-kernels.txt define their
# kernel entry point as a stub that aborts, so nvcc spends its hours only on the kernels docpipe uses.
prepare_flash_attn() {
  local registry list=crates/docpipe-vlm/flash-attn-kernels.txt
  local crate=$FLASH/$FLASH_ATTN_CRATE
  if [ ! -f "$crate/.docpipe-ready" ] || [ "$list" -nt "$crate/.docpipe-ready" ]; then
    registry=$(cargo metadata --format-version 1 --features docpipe-cli/flash-attn |
      "$PYTHON" -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "candle-flash-attn"))')
    registry=$(dirname "$registry")
    rm -rf "$crate"
    cp -r "$registry" "$crate"
    local kernel name
    for kernel in "$crate"/kernels/flash_fwd_*.cu; do
      name=$(basename "$kernel")
      if grep -qx "$name" "$list"; then
        continue
      fi
      awk -v name="$name" '
        BEGIN {
          print "// Not built for docpipe (scripts/build-cuda.sh builds the kernels of"
          print "// crates/docpipe-vlm/flash-attn-kernels.txt); docpipe never dispatches here."
          print "#include <cstdio>"
          print "#include <cstdlib>"
          print "#include <cutlass/numeric_types.h>"
          print "#include \"flash.h\""
        }
        /^template<>/ { print; getline; sub(/\{$/, ""); print $0 "{"
          print "    std::fprintf(stderr, \"FlashAttention kernel " name " was not built\\n\");"
          print "    std::abort();"
          print "}" }
      ' "$kernel" >"$kernel.stub"
      mv "$kernel.stub" "$kernel"
    done
    touch "$crate/.docpipe-ready"
  fi
  mkdir -p "$FLASH/build"
  export CUDAFORGE_HOME=$FLASH/cudaforge
  export CANDLE_FLASH_ATTN_BUILD_DIR=$FLASH/build
  CARGO_FEATURES=flash-attn
  CARGO_PATCH=(--config "patch.crates-io.candle-flash-attn.path='$crate'")
}

install_toolkit
make_stubs
CARGO_FEATURES=cuda
CARGO_PATCH=()
if [ "$FLASH_ATTN" = 1 ]; then
  install_cutlass
  prepare_flash_attn
fi

export CUDA_ROOT=$CUDA
export PATH=$CUDA/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
# The wheels put cuda_runtime.h and crt/ in include/ but libcu++/CUB/Thrust in include/cccl/.
export NVCC_PREPEND_FLAGS="-I$CUDA/include -isystem $CUDA/include/cccl ${NVCC_PREPEND_FLAGS:-}"
export LIBRARY_PATH=$STUBS:$CUDA/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
# The stubs only satisfy the linker; $ORIGIN lets the binary find the libcudart carried next to it.
export RUSTFLAGS="-L native=$STUBS -L native=$CUDA/lib -C link-arg=-Wl,-rpath,\$ORIGIN ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR=$ROOT/target-cuda

# Fail in seconds, not after an hour of building, when the compiler cannot find its headers.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <cuda_fp16.h>\n#include <cuda/std/limits>\n__global__ void k(float *x) { x[0] = cuda::std::numeric_limits<float>::max(); }\n' \
  >"$probe/probe.cu"
nvcc --ptx -arch="sm_$CUDA_COMPUTE_CAP" -o "$probe/probe.ptx" "$probe/probe.cu"
nvcc --version | tail -n 2

bash scripts/fetch-pdfium.sh

# The patch makes cargo record the local copy in Cargo.lock; the committed lock file is put back.
cp Cargo.lock "$probe/Cargo.lock"
trap 'cp "$probe/Cargo.lock" Cargo.lock; rm -rf "$probe"' EXIT
cargo build --release -p docpipe-cli --features "$CARGO_FEATURES" "${CARGO_PATCH[@]}"

mkdir -p "$GPU_DIR"
cp "$CARGO_TARGET_DIR/release/docpipe" "$GPU_DIR/docpipe"
cp "$CUDA/lib/libcudart.so.13" "$GPU_DIR/"
cp .cache/pdfium/libpdfium.so "$GPU_DIR/"
# What scripts/gpu-bench.sh unpacks on the GPU machine: the folder with the binary's debug info
# stripped (about 100 MB instead of 390), xz-packed (about 20 MB).
rm -rf "$probe/pack" && mkdir -p "$probe/pack/gpu"
cp "$GPU_DIR"/lib*.so* "$probe/pack/gpu/"
objcopy --strip-debug "$GPU_DIR/docpipe" "$probe/pack/gpu/docpipe"
tar -C "$probe/pack" -cJf "$ROOT/.cache/gpu-stripped.tar.xz.tmp" gpu
mv "$ROOT/.cache/gpu-stripped.tar.xz.tmp" "$ROOT/.cache/gpu-stripped.tar.xz"
needed=$(readelf -d "$GPU_DIR/docpipe" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
cat <<EOF
build-cuda: built $GPU_DIR/docpipe (CUDA 13.0, sm_$CUDA_COMPUTE_CAP, features: $CARGO_FEATURES), with libcudart.so.13 and libpdfium.so beside it,
and .cache/gpu-stripped.tar.xz (the same, debug info stripped) for scripts/gpu-bench.sh.
It needs: $needed
Carry that folder to the GPU machine (driver >= 580, the CUDA 13.0 libraries above on the loader
path, glibc >= 2.34) and check there, e.g.:
  ldd gpu/docpipe && gpu/docpipe --help
If a library is reported missing there, add its folder, e.g.:
  LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/nvidia/lib64 gpu/docpipe ...
Here it only starts with the stubs: LD_LIBRARY_PATH=$STUBS $GPU_DIR/docpipe --help
EOF
