#!/usr/bin/env bash
# Tessera against hf-xet (local CAS mode), borg and restic on the same files in
# the same run. Installs the peers when missing (bench-local, under
# target/peers-tools/), builds Tessera's CLI, then runs peers.py.
#
# Usage: bash benches/peers/run.sh [--size-mib N (256)] [--runs N (3)] [--json]
#            [--tools tessera,hf-xet,borg,borg-64k,restic] [--workdir DIR] ...
#        (all arguments go to peers.py; see `python3 benches/peers/peers.py -h`)
#
# Environment: PEERS_TOOLS_DIR (default target/peers-tools),
#              PEERS_HF_XET_VERSION (default 1.8.0).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TOOLS=${PEERS_TOOLS_DIR:-$ROOT/target/peers-tools}
XET_VERSION=${PEERS_HF_XET_VERSION:-1.8.0}
mkdir -p "$TOOLS"
say() { printf '%s\n' "$*" >&2; }

# Python for the harness and for borg: Debian's, whose ABI borg's package targets.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)

# --- hf-xet: a pip --target directory (the wheel has no dependencies) --------
XET_LIB=$TOOLS/hf-xet-$XET_VERSION
# (hf_xet writes logs under HF_XET_CACHE when imported: keep them out of ~/.cache)
if ! HF_XET_CACHE=$TOOLS/hf-xet-cache PYTHONPATH=$XET_LIB "$PY" -c 'import hf_xet' 2>/dev/null; then
  say "installing hf-xet $XET_VERSION into $XET_LIB"
  rm -rf "$XET_LIB"
  PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --disable-pip-version-check --target "$XET_LIB" "hf-xet==$XET_VERSION" >&2 \
    || PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --target "$XET_LIB" "hf-xet==$XET_VERSION" >&2
fi

# --- borg and restic: Debian packages unpacked into $TOOLS/deb (no system install)
DEB=$TOOLS/deb
borg_ok() { "$TOOLS/bin/borg" --version >/dev/null 2>&1; }
restic_ok() { "$DEB/usr/bin/restic" version >/dev/null 2>&1; }
if ! borg_ok || ! restic_ok; then
  say "unpacking Debian's borgbackup and restic into $DEB"
  mkdir -p "$TOOLS/debs" "$DEB" "$TOOLS/bin"
  pkgs=(borgbackup restic python3-msgpack python3-packaging python3-pkg-resources)
  ( cd "$TOOLS/debs" && { apt-get download "${pkgs[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get download "${pkgs[@]}" >/dev/null; }; } )
  for d in "$TOOLS"/debs/*.deb; do dpkg -x "$d" "$DEB"; done
  cat > "$TOOLS/bin/borg" <<EOF
#!/bin/sh
PYTHONPATH=$DEB/usr/lib/python3/dist-packages exec $PY -m borg "\$@"
EOF
  chmod +x "$TOOLS/bin/borg"
fi
BORG_BIN=$TOOLS/bin/borg
if ! borg_ok; then
  # The unpacked package needs a Python 3 of the ABI it was built for; else
  # fall back to the system package.
  say "the unpacked borg does not run with $PY; installing Debian's borgbackup system-wide"
  command -v borg >/dev/null || apt-get install -y -qq borgbackup >/dev/null
  BORG_BIN=$(command -v borg)
fi
restic_ok || { say "restic did not unpack"; exit 1; }

# --- Tessera ---------------------------------------------------------------
say "building tessera (release)"
cargo build --release -q -p tessera-cli
cargo build --release -q -p tessera-benches --bin tessera-ranges

export TESSERA_BIN=$ROOT/target/release/tessera
export TESSERA_RANGES_BIN=$ROOT/target/release/tessera-ranges
export XET_PYTHON=$PY XET_PYTHONPATH=$XET_LIB
export BORG=$BORG_BIN RESTIC=$DEB/usr/bin/restic
exec "$PY" "$ROOT/benches/peers/peers.py" "$@"
