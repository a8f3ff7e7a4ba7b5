#!/usr/bin/env bash
# GC + repack on the synthetic model's five versions (issue 10's figures).
#
# Stores the five versions of `tessera synth` (v1 base, v2 fine-tune, v3
# tensor inserted, v4 int8, v5 a byte-identical fork of v2), deletes the
# refs of v1, v3 and v4, runs `tessera repack --grace 0s` (GC first), and
# prints stored bytes before/after against the live bytes, the time taken,
# and the number of range requests a full pull of the fine-tune (v2) makes
# into an empty store before and after.
#
# Usage: bash benches/gc/run.sh [--size-mib N]   (default 256)
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE=256
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mib) SIZE="$2"; shift 2 ;;
    *) echo "usage: $0 [--size-mib N]" >&2; exit 2 ;;
  esac
done
cargo build --release -q -p tessera-cli
T="$PWD/target/release/tessera"
W="$(mktemp -d)"
trap 'kill "${SERVER:-0}" 2>/dev/null || true; rm -rf "$W"' EXIT
export TESSERA_LOG=warn

"$T" synth "$W/syn" --size-mib "$SIZE" >/dev/null
S="$W/store"
for d in "$W"/syn/*/*/*; do
  rev="$(basename "$d")"; repo="$(basename "$(dirname "$d")")"; org="$(basename "$(dirname "$(dirname "$d")")")"
  "$T" --store "$S" put "$d" --ref-prefix "$org/$repo@$rev:" >/dev/null
done

json() { python3 -c "import json,sys; d=json.loads(sys.stdin.readline()); print($1)"; }

# Range requests of a full pull of v2 into an empty store.
pull_requests() {
  local log="$W/serve.log" out
  "$T" --store "$S" serve --listen 127.0.0.1:0 2>"$log" &
  SERVER=$!
  for _ in $(seq 100); do grep -q "serving store" "$log" && break; sleep 0.1; done
  local url; url="$(grep -o 'http://[0-9.:]*' "$log" | head -1)"
  rm -rf "$W/client" "$W/out.bin"
  out="$("$T" --store "$W/client" pull "$url" acme/llm-base@v2:model.safetensors -o "$W/out.bin" --json)"
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
  cmp -s "$W/out.bin" "$W/syn/acme/llm-base/v2/model.safetensors" || { echo "pull returned other bytes" >&2; exit 1; }
  echo "$out" | json 'd["requests"]'
}

before="$("$T" --store "$S" stat --json)"
req_before="$(pull_requests)"
for v in v1 v3 v4; do
  for f in "$W"/syn/acme/llm-base/$v/*; do
    "$T" --store "$S" ref rm "acme/llm-base@$v:$(basename "$f")"
  done
done
start=$(date +%s.%N)
rep="$("$T" --store "$S" repack --grace 0s --json)"
secs=$(python3 -c "print(round($(date +%s.%N) - $start, 2))")
after="$("$T" --store "$S" stat --json)"
req_after="$(pull_requests)"
"$T" --store "$S" verify >/dev/null
for v in v2; do
  for f in "$W"/syn/acme/llm-base/$v/*; do
    "$T" --store "$S" cat "acme/llm-base@$v:$(basename "$f")" | cmp -s - "$f" || { echo "$f differs" >&2; exit 1; }
  done
done

python3 - "$before" "$after" "$rep" "$req_before" "$req_after" "$secs" "$SIZE" <<'PY'
import json, sys
b, a, r = (json.loads(x) for x in sys.argv[1:4])
rb, ra, secs, size = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
live = r["gc"]["live_bytes"]
mib = lambda n: f"{n / 2**20:.1f} MiB"
print(f"synthetic model, {size} MiB weights; refs of v1, v3, v4 deleted; repack --grace 0s (GC first)")
print(f"  stored bytes: {mib(b['stored_bytes'])} before -> {mib(a['stored_bytes'])} after; live {mib(live)} "
      f"(after = live + {100 * (a['stored_bytes'] - live) / live:.2f}%)")
print(f"  files {b['files']} -> {a['files']}, packs {b['packs']} -> {a['packs']}; "
      f"gc deleted {r['gc']['dead_files']} files, {r['gc']['dead_packs']} packs; "
      f"repack rewrote {r['packs_rewritten']} packs into {r['packs_written']} ({r['chunks_copied']} chunks)")
print(f"  time: {secs:.2f} s (whole command; engine {r['seconds']:.2f} s)")
print(f"  full pull of v2 into an empty store: {rb} requests before, {ra} after")
PY
