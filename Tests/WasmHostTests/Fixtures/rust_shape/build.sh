#!/bin/sh
# Builds rust_shape.c into a module shaped like one from Stateroom's Rust SDK (see the file's
# header): clang and wasm-ld from the Swift toolchain (beside `swiftc`, or under $SWIFT_TOOLCHAIN/bin).
#   build.sh OUT.wasm
set -e
out=${1:?usage: build.sh OUT.wasm}
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "$SWIFT_TOOLCHAIN" ]; then bin=$SWIFT_TOOLCHAIN/bin; else bin=$(dirname "$(readlink -f "$(command -v swiftc)")"); fi
obj=$(mktemp --suffix=.o)
trap 'rm -f "$obj"' EXIT
"$bin/clang" --target=wasm32-unknown-wasi -nostdlib -ffreestanding -O2 -fno-builtin -c "$here/rust_shape.c" -o "$obj"
# No --entry and no _initialize: wasm-ld wraps each export in the constructors and destructors.
"$bin/wasm-ld" --no-entry --export=STATEROOM_API_VERSION --export=STATEROOM_API_PROTOCOL \
  --export=__heap_base --export=__data_end -z stack-size=65536 "$obj" -o "$out"
