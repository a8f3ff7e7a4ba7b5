#!/usr/bin/env python3
"""Drive hf-xet (PyPI `hf-xet`, module `hf_xet`) against a local-directory CAS.

hf-xet's Python session API accepts an endpoint of the form `local://PATH`:
the client then uses its built-in local CAS (xorbs, shards and a dedup table
kept under PATH/xet/) instead of a Hub server. No network, no token. This
script is one process per operation, like the other tools' command lines:

  upload   --endpoint local://CAS --manifest OUT.json FILE...
           one upload commit holding every FILE (one version of the repo);
           writes {path: {"hash", "size"}} to OUT.json
  download --endpoint local://CAS --manifest IN.json --src-root DIR --out DIR
           one download group restoring every file of the manifest to
           OUT/<path relative to src-root>
  range    --endpoint local://CAS --hash H --size N --offset O --length L
           one ranged read written to stdout (a whole process per read)
  ranges   --endpoint local://CAS --hash H --size N --length L [--check FILE]
           offsets on stdin, one per line, read in this process with one
           stream group; prints JSON {"open_s", "latencies_s"}
"""

import argparse
import json
import os
import sys
import time

import hf_xet


def upload(a):
    session = hf_xet.XetSession()
    commit = session.new_upload_commit(endpoint=a.endpoint)
    handles = [(f, commit.start_upload_file(os.path.abspath(f))) for f in a.files]
    commit.wait_to_finish()  # uploads xorbs and shards to the (local) CAS
    manifest = {}
    for f, h in handles:
        info = h.result().xet_info
        manifest[f] = {"hash": info.hash, "size": info.file_size}
    with open(a.manifest, "w") as out:
        json.dump(manifest, out)


def download(a):
    with open(a.manifest) as f:
        manifest = json.load(f)
    session = hf_xet.XetSession()
    group = session.new_file_download_group(endpoint=a.endpoint)
    for path, m in manifest.items():
        dest = os.path.join(a.out, os.path.relpath(path, a.src_root))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        group.start_download_file(hf_xet.XetFileInfo(m["hash"], m["size"]), dest)
    group.wait_to_finish()


def range_one(a):
    session = hf_xet.XetSession()
    group = session.new_download_stream_group(endpoint=a.endpoint)
    info = hf_xet.XetFileInfo(a.hash, a.size)
    out = sys.stdout.buffer
    for chunk in group.download_stream(info, start=a.offset, end=a.offset + a.length):
        out.write(chunk)
    out.flush()
    group.finish()


def ranges(a):
    offsets = [int(line) for line in sys.stdin if line.strip()]
    src = open(a.check, "rb") if a.check else None
    t = time.perf_counter()
    session = hf_xet.XetSession()
    group = session.new_download_stream_group(endpoint=a.endpoint)
    info = hf_xet.XetFileInfo(a.hash, a.size)
    open_s = time.perf_counter() - t
    lat = []
    for off in offsets:
        t = time.perf_counter()
        got = b"".join(group.download_stream(info, start=off, end=off + a.length))
        lat.append(time.perf_counter() - t)
        if src is not None:
            src.seek(off)
            if got != src.read(a.length):
                sys.exit(f"xet_driver: range at {off} differs from the source")
    group.finish()
    print(json.dumps({"open_s": open_s, "latencies_s": lat}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("upload")
    u.add_argument("--endpoint", required=True)
    u.add_argument("--manifest", required=True)
    u.add_argument("files", nargs="+")
    d = sub.add_parser("download")
    d.add_argument("--endpoint", required=True)
    d.add_argument("--manifest", required=True)
    d.add_argument("--src-root", required=True)
    d.add_argument("--out", required=True)
    for name in ("range", "ranges"):
        r = sub.add_parser(name)
        r.add_argument("--endpoint", required=True)
        r.add_argument("--hash", required=True)
        r.add_argument("--size", type=int, required=True)
        r.add_argument("--length", type=int, required=True)
        if name == "range":
            r.add_argument("--offset", type=int, required=True)
        else:
            r.add_argument("--check")
    a = p.parse_args()
    {"upload": upload, "download": download, "range": range_one, "ranges": ranges}[a.cmd](a)


if __name__ == "__main__":
    main()
