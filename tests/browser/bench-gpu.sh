#!/usr/bin/env bash
# The benchmark runner (tests/browser/bench.mjs) on a GPU machine that has neither node nor network access.
#
#   bash tests/browser/bench-gpu.sh pack          here, from the repository root: builds the wasm engine of this
#                                                 tree and packs what the GPU machine lacks into target/bench-carry/
#                                                 (~30 MB: node, dawn.node, the engine, libstdc++; git-ignored)
#   bash tests/browser/bench-gpu.sh run [ARGS]    there, from the repository root with target/bench-carry/ carried
#                                                 beside the tree: unpacks into /tmp/dia-bench, finds the Vulkan
#                                                 driver and runs bench.mjs (default: --config full, every mode,
#                                                 500 steps × 3); ARGS replace those defaults. Report and log go to
#                                                 $OUT/bench.json and $OUT/bench.log (else /tmp/dia-bench/out).
#                                                 BENCH_NODE_ARGS: extra node options (e.g. --cpu-prof).
#
# The GPU machine needs the Vulkan loader (libvulkan.so.1): where it lacks it, carry the Debian packages in .gl/
# (see docs/browser-bench.md); `run` unpacks them. The NVIDIA ICD is taken from VK_DRIVER_FILES, by default
# /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json. The whole run is stopped after $BENCH_TIMEOUT seconds (540).
set -euo pipefail
carry=target/bench-carry
unpacked=/tmp/dia-bench

pack() {
  local dawn=tests/browser/node_modules/webgpu/dist/linux-x64/dawn.node
  [ -f "$dawn" ] || { echo "bench-gpu: $dawn is missing: run tests/setup (it installs the webgpu package)" >&2; exit 2; }
  echo "== wasm32 release build + wasm-bindgen (the engine of this tree)"
  cargo build --release --target wasm32-unknown-unknown --lib --manifest-path crate/Cargo.toml
  local target_dir
  target_dir="$(cargo metadata --format-version 1 --no-deps --manifest-path crate/Cargo.toml |
    node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).target_directory))')"
  wasm-bindgen --target web --out-dir web/pkg "$target_dir/wasm32-unknown-unknown/release/dia_webgpu.wasm"
  echo "== packing node $(node --version), dawn.node (webgpu $(node -p 'require("./tests/browser/node_modules/webgpu/package.json").version')), the engine"
  rm -rf "$carry"
  mkdir -p "$carry"
  xz -T2 -6 -c "$(readlink -f "$(command -v node)")" >"$carry/node.xz"
  xz -T2 -6 -c "$dawn" >"$carry/dawn.node.xz"
  xz -T2 -6 -c web/pkg/dia_webgpu_bg.wasm >"$carry/dia_webgpu_bg.wasm.xz"
  cp web/pkg/dia_webgpu.js "$carry/"
  # dawn.node wants a libstdc++ of GCC 12 or later (GLIBCXX_3.4.30); `run` uses this one where the system's is older.
  xz -T2 -6 -c "$(ldconfig -p | awk '/libstdc\+\+\.so\.6 .*x86-64/ { print $NF; exit }')" >"$carry/libstdc++.so.6.xz"
  git rev-parse HEAD >"$carry/commit" 2>/dev/null || true
  du -sh "$carry"
  echo "carry target/bench-carry (and .gl where the machine lacks libvulkan), then: bash tests/browser/bench-gpu.sh run"
}

unxz_to() { # FILE.xz DEST: xz where there is one, else Python's lzma
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$1" >"$2"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
  fi
}

run() {
  [ -f "$carry/node.xz" ] || { echo "bench-gpu: $carry/ is missing: make it with 'bench-gpu.sh pack' and carry it" >&2; exit 2; }
  local out="${OUT:-$unpacked/out}"
  mkdir -p "$unpacked/pkg" "$unpacked/lib" "$out"
  unxz_to "$carry/node.xz" "$unpacked/node"
  chmod +x "$unpacked/node"
  unxz_to "$carry/dawn.node.xz" "$unpacked/dawn.node"
  unxz_to "$carry/dia_webgpu_bg.wasm.xz" "$unpacked/pkg/dia_webgpu_bg.wasm"
  cp "$carry/dia_webgpu.js" "$unpacked/pkg/"
  local system_cxx
  system_cxx="$(ldconfig -p | awk '/libstdc\+\+\.so\.6 .*x86-64/ { print $NF; exit }')"
  if [ -z "$system_cxx" ] || ! grep -qa GLIBCXX_3.4.30 "$system_cxx"; then
    unxz_to "$carry/libstdc++.so.6.xz" "$unpacked/lib/libstdc++.so.6"
    export LD_LIBRARY_PATH="$unpacked/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  if ! ldconfig -p | grep -q 'libvulkan\.so\.1 '; then
    [ -d .gl ] || { echo "bench-gpu: no libvulkan.so.1 here and no .gl/ carried (see docs/browser-bench.md)" >&2; exit 2; }
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  export VK_DRIVER_FILES="${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}"
  export VK_ICD_FILENAMES="${VK_ICD_FILENAMES:-$VK_DRIVER_FILES}" # older loaders read only this one
  if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    XDG_RUNTIME_DIR="$(mktemp -d)"
    export XDG_RUNTIME_DIR
  fi
  echo "bench-gpu: node $("$unpacked/node" --version), engine of commit $(cat "$carry/commit" 2>/dev/null || echo '?'), ICD $VK_DRIVER_FILES"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  local args=("$@")
  [ ${#args[@]} -gt 0 ] || args=(--config full --numerics f16w,q8,q4,f32 --steps 500 --runs 3)
  set -o pipefail
  timeout -k 10 "${BENCH_TIMEOUT:-540}" "$unpacked/node" ${BENCH_NODE_ARGS:-} tests/browser/bench.mjs --pkg "$unpacked/pkg" --dawn "$unpacked/dawn.node" \
    --json-out "$out/bench.json" "${args[@]}" 2>&1 | tee "$out/bench.log"
}

case "${1:-}" in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash tests/browser/bench-gpu.sh pack | run [bench.mjs arguments]" >&2; exit 2 ;;
esac
