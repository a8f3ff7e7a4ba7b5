#!/usr/bin/env bash
# CLI ingest and restore of one file (the synthetic model's 256 MiB
# fine-tune, acme/llm-base/v2) to a directory store and to an s3:// store on
# a loopback moto server (issue 11's figures, README "Running against S3").
#
# Per run: `tessera put` into a new directory store, `tessera cat` back to a
# file; `tessera put` into a new s3:// prefix (node 1's cache), `tessera cat`
# on node 2 with an empty cache (discovery by ref, every pack fetched), and
# `tessera cat` on node 2 again (a new process; its on-disk range cache is
# warm). Every restore is compared with the source. Prints milliseconds.
#
# Usage: bash benches/s3/cli.sh [--size-mib N] [--runs N]   (default 256, 3)
# Time it on a quiet machine (nothing else building or benchmarking).
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE=256
RUNS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mib) SIZE="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --inner) shift; break ;;
    *) echo "usage: $0 [--size-mib N] [--runs N]" >&2; exit 2 ;;
  esac
done
T="$PWD/target/release/tessera"

if [ "${1:-}" != "" ]; then
  # Inside the server (s3server.sh run ... --inner W RUNS).
  W="$1"; RUNS="$2"; F="$W/syn/acme/llm-base/v2/model.safetensors"
  ms() { local s e; s=$(date +%s%N); sh -c "$1"; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
  for i in $(seq 1 "$RUNS"); do
    url="s3://$TESSERA_S3_BUCKET/clibench-$$-$i"
    rm -rf "$W/d" "$W/c1" "$W/c2" "$W/out"
    echo "run $i dir put: $(ms "'$T' --store '$W/d' put --ref m '$F' >/dev/null") ms"
    echo "run $i dir cat: $(ms "'$T' --store '$W/d' cat m > '$W/out'") ms"
    cmp "$W/out" "$F"
    echo "run $i s3 put (node 1): $(ms "'$T' --store '$url' --cache '$W/c1' put --ref m '$F' >/dev/null") ms"
    echo "run $i s3 cat (node 2, empty cache): $(ms "'$T' --store '$url' --cache '$W/c2' cat m > '$W/out'") ms"
    cmp "$W/out" "$F"
    echo "run $i s3 cat (node 2 again, range cache warm): $(ms "'$T' --store '$url' --cache '$W/c2' cat m > '$W/out'") ms"
    cmp "$W/out" "$F"
  done
  exit 0
fi

cargo build --release -q -p tessera-cli
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
export TESSERA_LOG=warn
"$T" synth "$W/syn" --size-mib "$SIZE" >/dev/null
echo "file: $(stat -c %s "$W/syn/acme/llm-base/v2/model.safetensors") bytes; load: $(uptime)"
bash engine/s3/tests/s3server.sh run bash "$0" --inner "$W" "$RUNS"
