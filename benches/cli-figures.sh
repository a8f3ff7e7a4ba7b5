#!/usr/bin/env bash
# End-to-end figures through the `tessera` command line, as issue 2 asks:
# put the synthetic v1..v5, cat everything back and compare, re-put growth,
# fine-tune growth vs its changed tensor bytes, fork growth; put/cat MB/s.
# Usage: bash benches/cli-figures.sh [SIZE_MIB (default 256)]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-256}
cargo build --release -q -p tessera-cli
T=$PWD/target/release/tessera
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export TESSERA_STORE=$W/store
$T synth "$W/src" --size-mib "$SIZE" >/dev/null
R=$W/src/acme/llm-base
F=$W/src/acme/llm-fork/v5
du_store() { du -sb "$TESSERA_STORE" | cut -f1; }
now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$1/1e6/($3-$2):.0f}')"; }
size() { stat -c %s "$1"; }

echo "synthetic repo: ${SIZE} MiB model, files under $W/src"
# Create the store first so store creation is not timed.
$T put "$R/v1/config.json" >/dev/null
t0=$(now); $T put --ref-prefix acme/llm-base@v1: "$R/v1/model.safetensors" >/dev/null; t1=$(now)
echo "put v1 (new data):        $(mbps "$(size "$R/v1/model.safetensors")" "$t0" "$t1") MB/s"
before=$(du_store)
t0=$(now); $T put "$R/v1/model.safetensors" >/dev/null; t1=$(now)
after=$(du_store)
echo "put v1 again (duplicate): $(mbps "$(size "$R/v1/model.safetensors")" "$t0" "$t1") MB/s; store grew $((after-before)) bytes = $(python3 -c "print(f'{100*($after-$before)/$(size "$R/v1/model.safetensors"):.4f}')")% of the file"
for v in v1 v2 v3 v4; do
  for f in "$R/$v"/*; do
    $T put --ref "acme/llm-base@$v:$(basename "$f")" "$f" --json
  done
done > "$W/puts.jsonl"
before=$(du_store)
for f in "$F"/*; do $T put --ref "acme/llm-fork@v5:$(basename "$f")" "$f" >/dev/null; done
after=$(du_store)
echo "fork v5: store grew $((after-before)) bytes (ref files and index only)"
python3 - "$W/puts.jsonl" <<'PY'
import json, sys
rows=[json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    if r["path"].endswith("v2/model.safetensors"):
        print(f"fine-tune v2: new_bytes {r['new_bytes']} ({100*r['new_bytes']/r['size']:.1f}% of {r['size']})")
PY
echo "stat:"; $T stat
# cat every file back and compare
t0=$(now); total=0
for v in v1 v2 v3 v4; do for f in "$R/$v"/*; do
  $T cat "acme/llm-base@$v:$(basename "$f")" | cmp - "$f"; total=$((total+$(size "$f")))
done; done
for f in "$F"/*; do $T cat "acme/llm-fork@v5:$(basename "$f")" | cmp - "$f"; total=$((total+$(size "$f"))); done
t1=$(now)
echo "cat + cmp of every file: byte-identical, $(mbps $total "$t0" "$t1") MB/s (cmp included)"
t0=$(now); $T cat acme/llm-base@v1:model.safetensors >/dev/null; t1=$(now)
echo "cat v1 to /dev/null: $(mbps "$(size "$R/v1/model.safetensors")" "$t0" "$t1") MB/s"
