#!/bin/sh
# Size, build time and per-message cost of every example: the same Swift source compiled to wasm
# (Embedded Swift, served through WasmKit) and natively. Prints a Markdown table.
#   Examples/guest-bench.sh [--rounds N] [--count N]      (from the repository root)
# Per message = one `message` callback (for wasm: the event written into the instance's kept
# buffer + stateroom_recv + every stateroom_send, through WasmHost's WasmService), median of the rounds.
set -e
CLI=${STATEROOM_CLI:-.build/release/stateroom}
ROUNDS=9
COUNT=20000
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --count) COUNT=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--count N]" >&2; exit 2 ;;
  esac
done
SCRIPT=$(mktemp)
trap 'rm -f "$SCRIPT"' EXIT

# example folder, module name, message timed, setup script lines
bench() {
  example=$1; dir=Examples/$1; name=$2; text=$3; shift 3
  printf '%s\n' "$@" > "$SCRIPT"
  t0=$(date +%s.%N); $CLI build --force --path "$dir" > /dev/null; t1=$(date +%s.%N)
  debug_size=$(stat -c %s "$dir/dist/$name.wasm")
  $CLI build --release --force --path "$dir" > /dev/null; t2=$(date +%s.%N)
  release_size=$(stat -c %s "$dir/dist/$name.wasm")
  $CLI build --release --native --path "$dir" > /dev/null
  native=$("$dir/dist/$name-native" --bench "$text" --count "$COUNT" --rounds "$ROUNDS" "$SCRIPT" | sed 's/.*: \([0-9.]*\) ns.*/\1/')
  wasm=$($CLI replay "$dir/dist/$name.wasm" --bench "$text" --count "$COUNT" --rounds "$ROUNDS" "$SCRIPT" | sed 's/.*: \([0-9.]*\) ns.*/\1/')
  printf '| %s | %s KB | %s KB | %.1f s | %.1f s | `%s` | %s ns | %s ns | %.0fx |\n' "$example" \
    $((release_size / 1024)) $((debug_size / 1024)) "$(echo "$t2 - $t1" | bc)" "$(echo "$t1 - $t0" | bc)" \
    "$text" "$native" "$wasm" "$(echo "$wasm / $native" | bc -l)"
}

echo "| example | wasm (release) | wasm (debug) | build --release | build (debug) | message | native | wasm | ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
bench SharedCounter counter increment "connect 1" "connect 2"
bench EchoServer EchoServer hello "connect 1" "connect 2"
bench Clock clock "interval 1000" "connect 1"
bench Chat chat "hello everyone" "connect 1" "connect 2" "text 1 /nick alice"
