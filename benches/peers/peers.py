#!/usr/bin/env python3
"""Tessera against its peers on the same files in the same run.

Started by run.sh, which installs the peers and builds Tessera and passes the
tool locations in the environment (TESSERA_BIN, TESSERA_RANGES_BIN,
XET_PYTHON + XET_PYTHONPATH, BORG, RESTIC). See benches/peers/README.md.

For each run (--runs, default 3) and each tool, in a fresh store:
  ingest   each version of the synthetic repository in order (v1..v5), one
           tool process per version; MB/s per version and total
  restore  every file of every version to a temp dir (timed), then compared
           byte for byte with its source (not timed)
  ranges   random 1 MiB reads of one file, one process per read (the CLI),
           and, where the tool has a library/session API, N reads inside one
           process after one open (p50/p99 latency)
  stored   bytes on disk of the repository/store after all versions (du -sb
           equivalent: apparent sizes), and after each version
  RSS      peak RSS of each ingest and restore process (wait4 rusage)
Medians over the runs are reported; --json prints machine-readable results.
"""

import argparse
import filecmp
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
RANGE_LEN = MIB


# ---------------------------------------------------------------- helpers


class Proc(subprocess.Popen):
    """Popen that reaps its child with wait4, keeping the child's rusage."""

    peak_rss = None
    cpu_s = None

    def _try_wait(self, wait_flags):  # CPython's Popen reaps through this
        try:
            pid, sts, ru = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            return self.pid, 0
        if pid == self.pid:
            self.peak_rss = ru.ru_maxrss * 1024  # KiB on Linux
            self.cpu_s = ru.ru_utime + ru.ru_stime
        return pid, sts


def run_timed(cmd, cwd=None, env=None, stdin=None, stdout=None):
    """Run cmd; return (wall seconds, peak RSS bytes, captured stdout or None,
    CPU seconds (user + system) of the process and the children it waited for).

    stdout=None captures it; otherwise it goes to that file (or DEVNULL)."""
    t = time.perf_counter()
    p = Proc(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
             stdout=subprocess.PIPE if stdout is None else stdout, stderr=subprocess.PIPE)
    data, err = p.communicate(stdin)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}: {err.decode(errors='replace')[-2000:]}")
    return secs, p.peak_rss, data, p.cpu_s


def tree_bytes(path):
    """Apparent size of every regular file under path (du -sb, less dirs)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except FileNotFoundError:
                continue
            total += st.st_size
    return total


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def sync():
    os.sync()


# ------------------------------------------------------------ the repository


class Repo:
    """The synthetic repository as `tessera synth` writes it: DIR/<org>/<repo>/<rev>/<file>."""

    def __init__(self, root):
        self.root = root
        versions = []
        for org in sorted(os.listdir(root)):
            for repo in sorted(os.listdir(os.path.join(root, org))):
                for rev in sorted(os.listdir(os.path.join(root, org, repo))):
                    d = os.path.join(root, org, repo, rev)
                    files = sorted(os.path.join(d, f) for f in os.listdir(d))
                    versions.append({"name": rev, "repo": f"{org}/{repo}", "dir": d, "files": files,
                                     "bytes": sum(os.path.getsize(f) for f in files)})
        versions.sort(key=lambda v: v["name"])  # v1..v5 in the order they were made
        self.versions = versions
        self.bytes = sum(v["bytes"] for v in versions)
        # Range reads: the fine-tune's weights (v2), the latest checkpoint of the base repo
        # that still shares most chunks with v1.
        v2 = next(v for v in versions if v["name"] == "v2")
        self.range_file = max(v2["files"], key=os.path.getsize)
        self.range_version = v2

    def warm(self):
        for v in self.versions:
            for f in v["files"]:
                with open(f, "rb") as fh:
                    while fh.read(8 * MIB):
                        pass


# ------------------------------------------------------------------ tools


class Tool:
    name = "?"
    range_proc = False  # one process per ranged read
    range_inproc = False  # many ranged reads after one open

    def __init__(self, work):
        self.work = work
        self.store = os.path.join(work, "store")
        self.aux = os.path.join(work, "aux")  # client-side caches outside the repository
        os.makedirs(self.aux, exist_ok=True)

    def setup(self):
        pass

    def stored_bytes(self):
        return tree_bytes(self.store)

    def aux_bytes(self):
        return tree_bytes(self.aux)


class Tessera(Tool):
    name = "tessera"
    range_proc = True
    range_inproc = True

    def __init__(self, work, env):
        super().__init__(work)
        self.bin = env["TESSERA_BIN"]
        self.ranges_bin = env["TESSERA_RANGES_BIN"]
        self.env = dict(os.environ)
        self.env.pop("TESSERA_STORE", None)

    def ref(self, v, path):
        return f"{v['repo']}@{v['name']}:{os.path.relpath(path, v['dir'])}"

    def ingest(self, v):
        # The first put creates the store (creation is included in v1's time).
        return [run_timed([self.bin, "--store", self.store, "put", "--ref-prefix",
                           f"{v['repo']}@{v['name']}:", v["dir"]], env=self.env,
                          stdout=subprocess.DEVNULL)]

    def restore(self, v, out):
        res = []
        for f in v["files"]:
            dest = os.path.join(out, os.path.relpath(f, v["dir"]))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as fh:
                res.append(run_timed([self.bin, "--store", self.store, "cat", self.ref(v, f)], env=self.env,
                                     stdout=fh))
        return res

    def range_cmd(self, v, f, off, length):
        return [self.bin, "--store", self.store, "cat", self.ref(v, f), "--offset", str(off),
                "--length", str(length)], self.env

    def ranges(self, v, f, offsets, length):
        _, _, out, _ = run_timed([self.ranges_bin, self.store, self.ref(v, f), "--length", str(length), "--check", f],
                              env=self.env, stdin="\n".join(map(str, offsets)).encode())
        return json.loads(out)

    def version(self):
        return subprocess.run([self.bin, "--version"], capture_output=True, text=True).stdout.strip()


class HfXet(Tool):
    name = "hf-xet"
    range_proc = True
    range_inproc = True

    def __init__(self, work, env):
        super().__init__(work)
        self.py = env["XET_PYTHON"]
        self.driver = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xet_driver.py")
        self.endpoint = "local://" + self.store
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = env.get("XET_PYTHONPATH", "")
        # The client's own cache and logs (HF_XET_CACHE) go to a per-run dir, not ~/.cache.
        self.env["HF_XET_CACHE"] = self.aux
        self.env["HF_HUB_DISABLE_TELEMETRY"] = "1"
        self.manifests = {}

    def setup(self):
        os.makedirs(self.store, exist_ok=True)

    def ingest(self, v):
        m = os.path.join(self.work, f"manifest-{v['name']}.json")
        self.manifests[v["name"]] = m
        return [run_timed([self.py, self.driver, "upload", "--endpoint", self.endpoint, "--manifest", m]
                          + v["files"], env=self.env, stdout=subprocess.DEVNULL)]

    def restore(self, v, out):
        return [run_timed([self.py, self.driver, "download", "--endpoint", self.endpoint, "--manifest",
                           self.manifests[v["name"]], "--src-root", v["dir"], "--out", out], env=self.env,
                          stdout=subprocess.DEVNULL)]

    def _info(self, v, f):
        with open(self.manifests[v["name"]]) as fh:
            return json.load(fh)[f]

    def range_cmd(self, v, f, off, length):
        m = self._info(v, f)
        return [self.py, self.driver, "range", "--endpoint", self.endpoint, "--hash", m["hash"], "--size",
                str(m["size"]), "--offset", str(off), "--length", str(length)], self.env

    def ranges(self, v, f, offsets, length):
        m = self._info(v, f)
        _, _, out, _ = run_timed([self.py, self.driver, "ranges", "--endpoint", self.endpoint, "--hash", m["hash"],
                               "--size", str(m["size"]), "--length", str(length), "--check", f], env=self.env,
                              stdin="\n".join(map(str, offsets)).encode())
        return json.loads(out)

    def version(self):
        r = subprocess.run([self.py, "-c", "import importlib.metadata as m; print(m.version('hf-xet'))"],
                           env=self.env, capture_output=True, text=True)
        return "hf-xet " + r.stdout.strip()


class Borg(Tool):
    name = "borg"
    chunker = None  # borg's default: buzhash,19,23,21,4095 (~2 MiB chunks)

    def __init__(self, work, env):
        super().__init__(work)
        self.bin = env["BORG"]
        self.env = dict(os.environ)
        # Config, cache (files cache, chunks index) and security dirs under aux/.
        self.env["BORG_BASE_DIR"] = self.aux
        self.env["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] = "yes"
        self.env["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"

    def setup(self):
        run_timed([self.bin, "init", "--encryption=none", self.store], env=self.env)

    def ingest(self, v):
        cmd = [self.bin, "create", "--compression", "zstd,3"]
        if self.chunker:
            cmd += ["--chunker-params", self.chunker]
        cmd += [f"{self.store}::{v['name']}", "."]
        return [run_timed(cmd, cwd=v["dir"], env=self.env)]

    def restore(self, v, out):
        os.makedirs(out, exist_ok=True)
        return [run_timed([self.bin, "extract", f"{self.store}::{v['name']}"], cwd=out, env=self.env)]

    def version(self):
        out = subprocess.run([self.bin, "--version"], env=self.env, capture_output=True, text=True).stdout.split()
        return "borg " + (out[-1] if out else "?")


class Borg64k(Borg):
    name = "borg-64k"
    # 2^14 = 16 KiB min, 2^18 = 256 KiB max, 16 mask bits: ~64 KiB average, like Tessera's FastCDC 16/64/256.
    chunker = "buzhash,14,18,16,4095"


class Restic(Tool):
    name = "restic"

    def __init__(self, work, env):
        super().__init__(work)
        self.bin = env["RESTIC"]
        self.env = dict(os.environ)
        # restic always encrypts; the password only opens the bench repo.
        self.env["RESTIC_PASSWORD"] = "tessera-peers"
        self.env["RESTIC_REPOSITORY"] = self.store
        self.env["RESTIC_CACHE_DIR"] = self.aux
        self.snaps = {}

    def setup(self):
        run_timed([self.bin, "init", "--cache-dir", self.aux], env=self.env)

    def ingest(self, v):
        secs, rss, out, cpu = run_timed([self.bin, "backup", "--json", "--cache-dir", self.aux, "--host", "bench",
                                    "--tag", v["name"], "."], cwd=v["dir"], env=self.env)
        for line in out.decode().splitlines():
            if '"summary"' in line:
                self.snaps[v["name"]] = json.loads(line)["snapshot_id"]
        return [(secs, rss, out, cpu)]

    def restore(self, v, out):
        return [run_timed([self.bin, "restore", "--cache-dir", self.aux, self.snaps[v["name"]], "--target", out],
                          env=self.env, stdout=subprocess.DEVNULL)]

    def version(self):
        return subprocess.run([self.bin, "version"], env=self.env, capture_output=True, text=True).stdout.strip()


TOOLS = {t.name: t for t in (Tessera, HfXet, Borg, Borg64k, Restic)}


# -------------------------------------------------------------- one run


def bench_tool(cls, repo, work, env, offsets_proc, offsets_inproc, log):
    tool = cls(work, env)
    tool.setup()
    r = {"ingest_s": {}, "ingest_rss": [], "ingest_cpu_s": {}, "stored_after": {}}
    for v in repo.versions:
        sync()
        res = tool.ingest(v)
        r["ingest_s"][v["name"]] = sum(x[0] for x in res)
        r["ingest_rss"] += [x[1] for x in res]
        r["ingest_cpu_s"][v["name"]] = sum(x[3] for x in res)
        r["stored_after"][v["name"]] = tool.stored_bytes()
        log(f"    ingest {v['name']}: {v['bytes'] / 1e6 / r['ingest_s'][v['name']]:7.1f} MB/s")
    sync()
    r["stored_bytes"] = tool.stored_bytes()
    r["aux_bytes"] = tool.aux_bytes()
    out_root = os.path.join(work, "restore")
    restore_s, restore_rss, restore_cpu = 0.0, [], 0.0
    for v in repo.versions:
        sync()
        res = tool.restore(v, os.path.join(out_root, v["name"]))
        restore_s += sum(x[0] for x in res)
        restore_rss += [x[1] for x in res]
        restore_cpu += sum(x[3] for x in res)
    r["restore_s"] = restore_s
    r["restore_cpu_s"] = restore_cpu
    r["restore_rss"] = restore_rss
    # Byte-for-byte check of every restored file (not timed).
    bad = []
    for v in repo.versions:
        for f in v["files"]:
            dest = os.path.join(out_root, v["name"], os.path.relpath(f, v["dir"]))
            if not os.path.exists(dest) or not filecmp.cmp(f, dest, shallow=False):
                bad.append(dest)
    if bad:
        raise RuntimeError(f"{tool.name}: restored files differ from the source: {bad}")
    shutil.rmtree(out_root)
    log(f"    restore: {repo.bytes / 1e6 / restore_s:7.1f} MB/s, all {sum(len(v['files']) for v in repo.versions)} files byte-identical")
    v, f = repo.range_version, repo.range_file
    if tool.range_proc:
        with open(f, "rb") as src:
            lat = []
            for off in offsets_proc:
                cmd, cenv = tool.range_cmd(v, f, off, RANGE_LEN)
                secs, _, data, _ = run_timed(cmd, env=cenv)
                src.seek(off)
                if data != src.read(RANGE_LEN):
                    raise RuntimeError(f"{tool.name}: range at {off} differs from the source")
                lat.append(secs)
        r["range_proc_s"] = lat
    if tool.range_inproc:
        res = tool.ranges(v, f, offsets_inproc, RANGE_LEN)
        r["range_inproc_s"] = res["latencies_s"]
        r["range_open_s"] = res["open_s"]
    return r, tool


def summarize(repo, per_run):
    """Medians over runs of each metric for one tool."""
    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    s = {"ingest_MBps": {}, "runs": len(per_run)}
    for v in repo.versions:
        s["ingest_MBps"][v["name"]] = med([v["bytes"] / 1e6 / r["ingest_s"][v["name"]] for r in per_run])
    s["ingest_MBps"]["total"] = med([repo.bytes / 1e6 / sum(r["ingest_s"].values()) for r in per_run])
    s["restore_MBps"] = med([repo.bytes / 1e6 / r["restore_s"] for r in per_run])
    # Each run's figure, in run order, to show the spread behind the medians.
    s["ingest_MBps_runs"] = [repo.bytes / 1e6 / sum(r["ingest_s"].values()) for r in per_run]
    s["restore_MBps_runs"] = [repo.bytes / 1e6 / r["restore_s"] for r in per_run]
    # CPU seconds per logical GB: less sensitive to a shared machine's load than wall time.
    s["ingest_cpu_s_per_GB"] = med([sum(r["ingest_cpu_s"].values()) / (repo.bytes / 1e9) for r in per_run])
    # Per version: CPU seconds / wall seconds (2.0 = both cores busy; well under 1 = waiting, e.g. on fsync).
    s["ingest_cpu_per_wall"] = {v["name"]: med([r["ingest_cpu_s"][v["name"]] / r["ingest_s"][v["name"]]
                                                for r in per_run]) for v in repo.versions}
    s["restore_cpu_s_per_GB"] = med([r["restore_cpu_s"] / (repo.bytes / 1e9) for r in per_run])
    for key in ("range_proc", "range_inproc"):
        if key + "_s" in per_run[0]:
            s[key + "_p50_ms"] = med([pct(r[key + "_s"], 0.50) * 1e3 for r in per_run])
            s[key + "_p99_ms"] = med([pct(r[key + "_s"], 0.99) * 1e3 for r in per_run])
        else:
            s[key + "_p50_ms"] = s[key + "_p99_ms"] = None
    if "range_open_s" in per_run[0]:
        s["range_open_ms"] = med([r["range_open_s"] * 1e3 for r in per_run])
    s["stored_bytes"] = med([r["stored_bytes"] for r in per_run])
    s["stored_fraction_of_logical"] = s["stored_bytes"] / repo.bytes
    s["stored_after_version"] = {v["name"]: med([r["stored_after"][v["name"]] for r in per_run])
                                 for v in repo.versions}
    s["aux_bytes"] = med([r["aux_bytes"] for r in per_run])
    s["ingest_peak_rss_MiB"] = med([max(x for x in r["ingest_rss"] if x) / MIB for r in per_run])
    s["restore_peak_rss_MiB"] = med([max(x for x in r["restore_rss"] if x) / MIB for r in per_run])
    return s


# ------------------------------------------------------------ reporting


def fmt(x, nd=0):
    if x is None:
        return "n/a"
    return f"{x:,.{nd}f}"


def table(rows, header):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def report_text(res):
    c = res["config"]
    lines = [f"peer benchmark: {c['size_mib']} MiB bf16 base model, 5 versions, {c['logical_bytes'] / 1e6:,.0f} MB "
             f"logical in {c['files']} files; median of {c['runs']} runs",
             f"machine: {c['machine']['nproc']} cores, load average {c['machine']['load_before'][0]:.2f} before, "
             f"{c['machine']['load_after'][0]:.2f} after ({c['machine']['load_max_1m']:.2f} max seen)", ""]
    tools = res["tools"]
    vs = [v["name"] for v in c["versions"]]
    lines.append("versions: " + "\n          ".join(f"{v['name']} ({v['bytes'] / 1e6:,.0f} MB): {v['what']}"
                                                   for v in c["versions"]))
    lines.append("")
    lines.append("ingest MB/s per version (one tool process per version)")
    lines.append(table([[t] + [fmt(s["ingest_MBps"][v]) for v in vs] + [fmt(s["ingest_MBps"]["total"])]
                        for t, s in tools.items()], ["tool"] + vs + ["total"]))
    lines.append("")
    hdr = ["tool", "ingest MB/s", "restore MB/s", "range p50/p99 ms (process)", "range p50/p99 ms (in-process)",
           "stored MB", "stored/logical", "peak RSS MiB ingest/restore", "CPU s/GB ingest/restore"]
    rows = []
    for t, s in tools.items():
        rp = "n/a" if s["range_proc_p50_ms"] is None else f"{s['range_proc_p50_ms']:.1f} / {s['range_proc_p99_ms']:.1f}"
        ri = "n/a" if s["range_inproc_p50_ms"] is None else f"{s['range_inproc_p50_ms']:.2f} / {s['range_inproc_p99_ms']:.2f}"
        rows.append([t, fmt(s["ingest_MBps"]["total"]), fmt(s["restore_MBps"]), rp, ri, fmt(s["stored_bytes"] / 1e6, 1),
                     f"{s['stored_fraction_of_logical']:.3f}",
                     f"{s['ingest_peak_rss_MiB']:.0f} / {s['restore_peak_rss_MiB']:.0f}",
                     f"{s['ingest_cpu_s_per_GB']:.1f} / {s['restore_cpu_s_per_GB']:.1f}"])
    lines.append(table(rows, hdr))
    lines.append("")
    lines.append("stored MB after each version (growth)")
    rows = []
    for t, s in tools.items():
        prev, row = 0, [t]
        for v in vs:
            cur = s["stored_after_version"][v]
            row.append(f"{cur / 1e6:,.1f} (+{(cur - prev) / 1e6:,.1f})")
            prev = cur
        rows.append(row)
    lines.append(table(rows, ["tool"] + vs))
    if res["ratios"]:
        lines.append("")
        lines.append("Tessera / peer (ingest, restore: >1 = Tessera faster; stored: <1 = Tessera smaller)")
        lines.append(table([[p, f"{r['ingest_MBps']:.2f}", f"{r['restore_MBps']:.2f}", f"{r['stored_bytes']:.3f}"]
                            for p, r in res["ratios"].items()], ["peer", "ingest", "restore", "stored bytes"]))
    if res.get("errors"):
        lines.append("")
        lines += [f"FAILED {t}: {e}" for t, e in res["errors"].items()]
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def main():
    p = argparse.ArgumentParser(description="Tessera vs hf-xet, borg and restic on the same files")
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, from: " + ",".join(TOOLS))
    p.add_argument("--range-reads", type=int, default=200, help="in-process ranged reads per run")
    p.add_argument("--range-procs", type=int, default=40, help="one-process-per-read ranged reads per run")
    p.add_argument("--workdir", default=None, help="where the temp dir goes (default: $TMPDIR)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress goes to stderr)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--from-json", metavar="FILE", help="print the table of a saved --json result and exit")
    a = p.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            print(report_text(json.load(f)))
        return 0
    env = os.environ
    tools = [TOOLS[t] for t in a.tools.split(",")]
    log = lambda m: print(m, file=sys.stderr, flush=True)

    tmp = tempfile.mkdtemp(prefix="tessera-peers-", dir=a.workdir)
    try:
        load_before = loadavg()
        load_max = load_before[0]
        src = os.path.join(tmp, "src")
        log(f"generating the {a.size_mib} MiB synthetic repository in {src} (not timed)")
        gen = subprocess.run([env["TESSERA_BIN"], "synth", src, "--size-mib", str(a.size_mib), "--seed",
                              str(a.seed)], check=True, capture_output=True, text=True).stdout
        repo = Repo(src)
        what = {}
        for line in gen.splitlines():  # "<dir>  <description>"
            d, _, desc = line.partition("  ")
            what[os.path.basename(d.strip())] = desc.strip()
        log(f"  {repo.bytes / 1e6:,.0f} MB in {sum(len(v['files']) for v in repo.versions)} files; warming the page cache")
        repo.warm()
        fsize = os.path.getsize(repo.range_file)
        per_tool = {t.name: [] for t in tools}
        versions = {}
        errors = {}
        for run in range(a.runs):
            rng = random.Random(1000 + run)
            offsets_proc = [rng.randrange(0, fsize - RANGE_LEN) for _ in range(a.range_procs)]
            offsets_inproc = [rng.randrange(0, fsize - RANGE_LEN) for _ in range(a.range_reads)]
            # Rotate the order each run so that no tool always goes first (or
            # always meets the same phase of another job's load).
            for cls in tools[run % len(tools):] + tools[:run % len(tools)]:
                if cls.name in errors:
                    continue
                load_max = max(load_max, loadavg()[0])
                log(f"run {run + 1}/{a.runs}: {cls.name} (load {loadavg()[0]:.2f})")
                work = os.path.join(tmp, f"run{run}-{cls.name}")
                os.makedirs(work)
                try:
                    r, tool = bench_tool(cls, repo, work, env, offsets_proc, offsets_inproc, log)
                    per_tool[cls.name].append(r)
                    versions.setdefault(cls.name, tool.version())
                except Exception as e:  # a peer that fails is reported, not fatal
                    errors[cls.name] = str(e)
                    log(f"  FAILED: {e}")
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        summary = {t: summarize(repo, rs) for t, rs in per_tool.items() if rs}
        ratios = {}
        if "tessera" in summary:
            ts = summary["tessera"]
            for peer, s in summary.items():
                if peer == "tessera":
                    continue
                ratios[peer] = {
                    "ingest_MBps": ts["ingest_MBps"]["total"] / s["ingest_MBps"]["total"],
                    "restore_MBps": ts["restore_MBps"] / s["restore_MBps"],
                    "stored_bytes": ts["stored_bytes"] / s["stored_bytes"],
                }
        res = {
            "config": {
                "size_mib": a.size_mib, "seed": a.seed, "runs": a.runs, "logical_bytes": repo.bytes,
                "files": sum(len(v["files"]) for v in repo.versions),
                "versions": [{"name": v["name"], "repo": v["repo"], "bytes": v["bytes"], "files": len(v["files"]),
                              "what": what.get(v["name"], "")} for v in repo.versions],
                "range_file": os.path.relpath(repo.range_file, src), "range_len": RANGE_LEN,
                "range_reads_in_process": a.range_reads, "range_reads_one_process_each": a.range_procs,
                "machine": {"nproc": os.cpu_count(), "load_before": load_before, "load_after": loadavg(),
                            "load_max_1m": max(load_max, loadavg()[0])},
                "tool_versions": versions,
            },
            "tools": summary,
            "ratios": ratios,
            "errors": errors,
        }
        if a.json:
            print(json.dumps(res, indent=2))
        else:
            print(report_text(res))
        return 1 if errors else 0
    finally:
        if a.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
