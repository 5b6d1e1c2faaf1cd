#!/usr/bin/env bash
# Builds the fuzz targets and runs each one for FUZZ_SECONDS (Fuzz/README.md).
#
#   Fuzz/run.sh                 build and run every target
#   Fuzz/run.sh build [T...]    build only
#   Fuzz/run.sh run [T...]      build, then run the named targets (default: all)
#
# Environment: FUZZ_SECONDS (default 60 per target), FUZZ_OUT (default .build-fuzz),
# NICE (default "nice -n 19"; empty to run at normal priority), FUZZ_ARGS (extra libFuzzer flags).
#
# The code under test is compiled with coverage (`-sanitize=fuzzer,address`), the harness (its
# references and property checks) with AddressSanitizer only, so that libFuzzer's coverage and
# `cov:` figures are those of the parsers, not of the checks. New inputs go to the scratch
# corpus $FUZZ_OUT/corpus/<target>; the committed seeds in Fuzz/corpus/<target> are only read.
# Exits non-zero if any target crashed or broke a property (the input is saved in
# $FUZZ_OUT/artifacts/<target>/ and the log in $FUZZ_OUT/logs/<target>.log).
set -euo pipefail
cd "$(dirname "$0")/.."

SWIFTC=${SWIFTC:-$(command -v swiftc)}
CLANG=${CLANG:-$(dirname "$(readlink -f "$SWIFTC")")/clang}
OUT=${FUZZ_OUT:-.build-fuzz}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
NICE=${NICE-nice -n 19}
ALL_TARGETS=(http ws_frames ws_roundtrip utf8 deflate abi jwt tls)

SWIFT_FLAGS=(-O -g -parse-as-library -swift-version 6 -use-ld=lld)
# permessage-deflate (RSV1 in FrameParser, the inflater) is fuzzed where the sources have it.
HAVE_DEFLATE=no
if grep -q 'compressedMessage' Sources/WireProtocol/WebSocket/FrameParser.swift 2>/dev/null &&
   grep -qs 'class DeflateDecompressor' Sources/WireProtocol/WebSocket/*.swift; then
    HAVE_DEFLATE=yes
    SWIFT_FLAGS+=(-D FUZZ_DEFLATE)
fi

mode=all
case "${1:-}" in build|run|all) mode=$1; shift ;; esac
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for t in "${ALL_TARGETS[@]}"; do
        if [ $t = deflate ] && [ $HAVE_DEFLATE = no ]; then
            echo "(no permessage-deflate in Sources/WireProtocol: the deflate target is skipped)"
            continue
        fi
        targets+=("$t")
    done
fi

rm -rf "$OUT/obj"
mkdir -p "$OUT/obj" "$OUT/logs"

# C modules a Swift module under test imports: a system library (Sources/<name>/module.modulemap)
# is found with -I; a C target (Sources/<name>/include, *.c) gets a module map and an
# instrumented object. Libraries to link, per C module, as Package.swift links them.
c_libs() {
    case $1 in
    CLibCrypto) echo "-lcrypto" ;;
    CTLS) echo "-lssl -lcrypto" ;;
    CDeflate) echo "-lz -ldeflate" ;;
    CUring) echo "-luring" ;;
    *) echo "Fuzz/run.sh: unknown C module $1 (add its libraries to c_libs)" >&2; exit 2 ;;
    esac
}
C_FLAGS=()      # -I flags for swiftc
C_OBJECTS=""    # instrumented C objects to link
LIBS=""         # -l flags to link
declare -A C_DONE=()
c_module() {
    local name=$1 dir=Sources/$1
    [ -n "${C_DONE[$name]:-}" ] && return
    C_DONE[$name]=1
    LIBS="$LIBS $(c_libs "$name")"
    if [ -f "$dir/module.modulemap" ]; then
        C_FLAGS+=(-I "$dir")
        return
    fi
    local map="$OUT/obj/modules/$name"
    mkdir -p "$map"
    {
        echo "module $name {"
        for h in "$PWD/$dir"/include/*.h; do echo "    header \"$h\""; done
        echo "    export *"
        echo "}"
    } >"$map/module.modulemap"
    C_FLAGS+=(-I "$map" -Xcc -I -Xcc "$dir/include")
    for c in "$dir"/*.c; do
        local o="$OUT/obj/c-$name-$(basename "$c" .c).o"
        $NICE "$CLANG" -O1 -g -fsanitize=fuzzer-no-link,address -I "$dir/include" -c "$c" -o "$o"
        C_OBJECTS="$C_OBJECTS $o"
    done
}

# A Swift library module under test, instrumented: $OUT/obj/<name>.o and <name>.swiftmodule.
# Its C imports are found (and built) first.
module() {
    local name=$1; shift
    local imp
    for imp in $(grep -ho '^import C[A-Za-z0-9_]*' "$@" | awk '{print $2}' | sort -u); do c_module "$imp"; done
    $NICE "$SWIFTC" "${SWIFT_FLAGS[@]}" -sanitize=fuzzer,address -wmo -c -module-name "$name" \
        -emit-module -emit-module-path "$OUT/obj/$name.swiftmodule" -I "$OUT/obj" ${C_FLAGS[@]+"${C_FLAGS[@]}"} \
        "$@" -o "$OUT/obj/$name.o"
}

# A harness: compiled with ASan only, linked with libFuzzer and the modules it tests.
harness() {
    local target=$1 objects=$2; shift 2
    $NICE "$SWIFTC" "${SWIFT_FLAGS[@]}" -sanitize=address -wmo -c -module-name "Fuzz_$target" \
        -I "$OUT/obj" ${C_FLAGS[@]+"${C_FLAGS[@]}"} "$@" -o "$OUT/obj/harness-$target.o"
    # shellcheck disable=SC2086
    $NICE "$SWIFTC" "${SWIFT_FLAGS[@]}" -sanitize=fuzzer,address "$OUT/obj/harness-$target.o" $objects \
        $C_OBJECTS $LIBS -o "$OUT/$target"
}

built_wire=no
wire() {
    [ $built_wire = yes ] && return
    module WireProtocol $(find Sources/WireProtocol -name '*.swift' | sort) Fuzz/Support/WireProtocolHooks.swift
    built_wire=yes
}

build() {
    local t=$1
    echo "== build $t"
    case $t in
    http)
        wire
        harness http "$OUT/obj/WireProtocol.o" Fuzz/Support/FuzzSupport.swift Fuzz/http/*.swift ;;
    ws_frames|ws_roundtrip)
        wire
        harness "$t" "$OUT/obj/WireProtocol.o" Fuzz/Support/FuzzSupport.swift Fuzz/Support/FrameSupport.swift Fuzz/"$t"/*.swift ;;
    deflate)
        wire
        harness deflate "$OUT/obj/WireProtocol.o" Fuzz/Support/FuzzSupport.swift Fuzz/deflate/*.swift ;;
    utf8)
        wire
        harness utf8 "$OUT/obj/WireProtocol.o" Fuzz/Support/FuzzSupport.swift Fuzz/utf8/*.swift ;;
    abi)
        module Stateroom Sources/Stateroom/*.swift
        module StateroomWasm Sources/StateroomWasm/ABICodec.swift Sources/StateroomWasm/GuestRuntime.swift
        harness abi "$OUT/obj/Stateroom.o $OUT/obj/StateroomWasm.o" Fuzz/Support/FuzzSupport.swift Fuzz/abi/*.swift ;;
    jwt)
        # The verifier alone (it imports only CLibCrypto and FoundationEssentials), as StateroomServer.
        module StateroomServer Sources/StateroomServer/Auth/JWT.swift
        harness jwt "$OUT/obj/StateroomServer.o" Fuzz/Support/FuzzSupport.swift Fuzz/jwt/*.swift ;;
    tls)
        # ctls.c instrumented; the harness too (it is small); OpenSSL itself is not instrumented.
        $NICE "$CLANG" -O1 -g -fsanitize=fuzzer,address -fuse-ld=lld -Wall -Wextra -I Sources/CTLS/include \
            Fuzz/tls/fuzz_tls.c Sources/CTLS/ctls.c -lssl -lcrypto -o "$OUT/tls" ;;
    *) echo "unknown target $t (targets: ${ALL_TARGETS[*]})" >&2; exit 2 ;;
    esac
}

# libFuzzer options per target: the longest input, and a dictionary where one helps.
options() {
    case $1 in
    http) echo "-max_len=10000 -dict=Fuzz/dict/http.dict" ;;   # past the 8 KiB head limit
    ws_frames) echo "-max_len=4096" ;;
    ws_roundtrip) echo "-max_len=2048" ;;
    utf8) echo "-max_len=1024" ;;
    deflate) echo "-max_len=4096" ;;
    abi) echo "-max_len=512" ;;
    jwt) echo "-max_len=9000 -dict=Fuzz/dict/jwt.dict" ;;   # past the 8 KiB token limit
    tls) echo "-max_len=8192" ;;
    esac
}

run() {
    local t=$1 log="$OUT/logs/$1.log"
    mkdir -p "$OUT/corpus/$t" "$OUT/artifacts/$t"
    echo "== fuzz $t for ${FUZZ_SECONDS}s"
    local status=0
    # shellcheck disable=SC2046,SC2086
    SWIFT_BACKTRACE=enable=no $NICE "$OUT/$t" $(options "$t") -max_total_time="$FUZZ_SECONDS" -timeout=30 -rss_limit_mb=2560 \
        -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$t/" ${FUZZ_ARGS:-} \
        "$OUT/corpus/$t" "Fuzz/corpus/$t" >"$log" 2>&1 || status=$?
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true
    grep -E '^Done [0-9]+ runs' "$log" || true
    local runs cov eps
    runs=$(grep -oE '^Done [0-9]+' "$log" | awk '{print $2}' | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    eps=$(grep -oE 'average_exec_per_sec: +[0-9]+' "$log" | awk '{print $2}')
    SUMMARY+=("$(printf '%-13s %12s runs %8s exec/s  cov %5s  %s' "$t" "${runs:--}" "${eps:--}" "${cov:--}" \
        "$([ $status -eq 0 ] && echo ok || echo FAILED)")")
    if [ $status -ne 0 ]; then
        echo "!! $t FAILED (exit $status); log: $log"
        grep -E 'PROPERTY FAILED|ERROR: |SUMMARY: |Test unit written|^    #[0-9]+ ' "$log" | head -40
        return 1
    fi
}

for t in "${targets[@]}"; do build "$t"; done
[ $mode = build ] && exit 0
failed=()
SUMMARY=()
for t in "${targets[@]}"; do run "$t" || failed+=("$t"); done
echo "== summary (${FUZZ_SECONDS}s each)"
printf '%s\n' "${SUMMARY[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing failed: ${failed[*]}"
    exit 1
fi
echo "fuzzing passed: ${targets[*]}"
