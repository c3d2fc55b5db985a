#!/usr/bin/env python3
"""Soak run of plugind (issue 9; not part of CI). Run it through scripts/soak.sh.

Starts plugind (file watching on, as by default) on copies of the example and fixture plugins in
four languages, then for --duration seconds:
  - several clients call `execute` (echo, short sleeps) in a loop, each call with a deadline;
  - every --reload-every seconds a plugin's main file is rewritten (a hot reload);
  - every --kill-every seconds a random plugin process is SIGKILLed (a crash and restart);
  - every --sample-every seconds plugind's RSS, open fds and threads are written to a CSV.
At the end it prints a summary: the resource curves (first/min/max/last and the RSS trend per
hour), the calls by outcome, and every call that ended later than its deadline + 250 ms.

Standard library only. Exit status: 0 when no call overran its deadline, plugind survived and
every plugin was running at the end; 1 otherwise.
"""
import argparse, csv, json, os, random, shutil, signal, socket, subprocess, sys, tempfile, threading, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATE_MARGIN_MS = 250

# (source dir, plugin name)
PLUGINS = [
    ("examples/echo-rust", "echo-rust"),
    ("examples/echo-python", "echo-python"),
    ("examples/echo-node", "echo-node"),
    ("tests/fixtures/plugins/py-probe", "py-probe"),
    ("tests/fixtures/plugins/perl-echo", "perl-echo"),
    ("tests/fixtures/plugins/py-probe", "py-probe-2"),
]
# Plugins whose main file the reloader rewrites (a comment appended: same behaviour, new file).
RELOADABLE = {"py-probe": "main.py", "py-probe-2": "main.py", "perl-echo": "main.pl", "echo-python": "main.py"}


class Rpc:
    """One control connection: NDJSON JSON-RPC, one call at a time."""

    def __init__(self, path, timeout):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""
        self.next_id = 1

    def call(self, method, params):
        rid = self.next_id
        self.next_id += 1
        self.s.sendall((json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}) + "\n").encode())
        while True:
            while b"\n" not in self.buf:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise ConnectionError("plugind closed the connection")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg.get("id") == rid:
                return msg

    def close(self):
        self.s.close()


def proc_figures(pid):
    fds = len(os.listdir("/proc/%d/fd" % pid))
    rss = threads = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, fds, threads


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.errors = {}
        self.late = []  # (plugin, method, elapsed_ms, timeout_ms, outcome)
        self.worst_ms = 0.0
        self.conn_errors = 0

    def record(self, plugin, method, elapsed_ms, timeout_ms, msg):
        with self.lock:
            if "result" in msg:
                self.ok += 1
                outcome = "ok"
            else:
                code = msg.get("error", {}).get("code")
                self.errors[code] = self.errors.get(code, 0) + 1
                outcome = "error %s" % code
            self.worst_ms = max(self.worst_ms, elapsed_ms)
            if elapsed_ms > timeout_ms + LATE_MARGIN_MS:
                self.late.append((plugin, method, round(elapsed_ms, 1), timeout_ms, outcome))


def setup(work, profile):
    plugins = os.path.join(work, "plugins")
    os.makedirs(plugins)
    # Examples find the SDKs and the cargo target dir relative to their directory.
    os.symlink(os.path.join(REPO, "sdk"), os.path.join(work, "sdk"))
    os.symlink(os.path.join(REPO, "target"), os.path.join(work, "target"))
    for src, name in PLUGINS:
        dst = os.path.join(plugins, name)
        shutil.copytree(os.path.join(REPO, src), dst, ignore=shutil.ignore_patterns("target", "src", "tests"))
        mpath = os.path.join(dst, "plugin.json")
        with open(mpath) as f:
            m = json.load(f)
        m["name"] = name
        m["restart"] = {"max_restarts": 1000, "window_s": 60}
        m.setdefault("env", {})["PLUGIND_PROFILE"] = profile
        with open(mpath, "w") as f:
            json.dump(m, f, indent=2)
    return plugins


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3600, help="seconds of load (default 3600)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--timeout-ms", type=int, default=2000, help="deadline of each call")
    ap.add_argument("--reload-every", type=float, default=20)
    ap.add_argument("--kill-every", type=float, default=15)
    ap.add_argument("--sample-every", type=float, default=5)
    ap.add_argument("--profile", default="release", help="cargo profile of plugind and echo-rust")
    ap.add_argument("--out", default=None, help="directory for soak.csv, late.txt and plugind.log")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    out = args.out or tempfile.mkdtemp(prefix="plugind-soak-out-")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="plugind-soak-")
    plugins = setup(work, args.profile)
    sock = os.path.join(work, "plugind.sock")
    binary = os.path.join(REPO, "target", args.profile, "plugind")
    log = open(os.path.join(out, "plugind.log"), "wb")
    env = dict(os.environ, PLUGIND_LOG="info")
    daemon = subprocess.Popen([binary, "--plugins", plugins, "--socket", sock, "--state-dir", os.path.join(work, "state")],
                              cwd=work, stdout=subprocess.DEVNULL, stderr=log, env=env)
    print("soak: seed %d, plugind pid %d, %s for %.0f s; output in %s" % (seed, daemon.pid, work, args.duration, out), flush=True)

    def control(method, params=None):
        c = Rpc(sock, 10)
        try:
            return c.call(method, params or {})
        finally:
            c.close()

    deadline = time.time() + 60
    while True:
        try:
            states = [p["state"] for p in control("plugins.list")["result"]]
            if states and all(s == "running" for s in states):
                break
        except (OSError, ConnectionError, KeyError):
            pass
        if time.time() > deadline or daemon.poll() is not None:
            print("soak: plugins did not all start; see %s/plugind.log" % out)
            return 1
        time.sleep(0.2)

    stats = Stats()
    stop = threading.Event()
    names = [n for _, n in PLUGINS]
    events = {"reloads": 0, "kills": 0}

    def client(n):
        r = random.Random(seed + n)
        c = None
        while not stop.is_set():
            try:
                if c is None:
                    c = Rpc(sock, args.timeout_ms / 1000 + 10)
                plugin = r.choice(names)
                if r.random() < 0.2:
                    method, params = "sleep", {"ms": r.randint(10, 300)}
                else:
                    method, params = "echo", {"n": r.randint(0, 10**6), "pad": "x" * r.randint(0, 2000)}
                t = time.monotonic()
                msg = c.call("execute", {"plugin": plugin, "method": method, "params": params, "timeout_ms": args.timeout_ms})
                stats.record(plugin, method, (time.monotonic() - t) * 1000, args.timeout_ms, msg)
                if "error" in msg and msg["error"].get("code") == -32002:
                    time.sleep(0.01)
            except (OSError, ConnectionError, ValueError):
                with stats.lock:
                    stats.conn_errors += 1
                c = None
                time.sleep(0.1)

    def reloader():
        while not stop.wait(args.reload_every):
            name = rng.choice(sorted(RELOADABLE))
            path = os.path.join(plugins, name, RELOADABLE[name])
            with open(path, "a") as f:
                f.write("\n# soak reload %d\n" % events["reloads"])
            events["reloads"] += 1

    def killer():
        while not stop.wait(args.kill_every * rng.uniform(0.5, 1.5)):
            try:
                pids = [p["pid"] for p in control("plugins.list")["result"] if p.get("pid")]
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    events["kills"] += 1
            except (OSError, ConnectionError, KeyError):
                pass

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    threads += [threading.Thread(target=reloader, daemon=True), threading.Thread(target=killer, daemon=True)]
    for t in threads:
        t.start()

    samples = []
    csv_path = os.path.join(out, "soak.csv")
    started = time.time()
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "rss_kb", "fds", "threads", "calls_ok", "calls_err", "late", "running", "reloads", "kills"])
        while time.time() - started < args.duration and daemon.poll() is None:
            try:
                rss, fds, nthreads = proc_figures(daemon.pid)
                running = sum(1 for p in control("plugins.list")["result"] if p["state"] == "running")
            except (OSError, ConnectionError, KeyError):
                continue
            with stats.lock:
                row = [round(time.time() - started, 1), rss, fds, nthreads, stats.ok, sum(stats.errors.values()),
                       len(stats.late), running, events["reloads"], events["kills"]]
            w.writerow(row)
            f.flush()
            samples.append(row)
            time.sleep(args.sample_every)
    stop.set()
    for t in threads:
        t.join(timeout=args.timeout_ms / 1000 + 15)

    survived = daemon.poll() is None
    all_running = False
    if survived:
        end = time.time() + 30
        while time.time() < end:
            try:
                if all(p["state"] == "running" for p in control("plugins.list")["result"]):
                    all_running = True
                    break
            except (OSError, ConnectionError, KeyError):
                pass
            time.sleep(0.5)
        # Let idle threads and killed instances' fds go, then a last sample.
        time.sleep(min(12.0, args.sample_every * 2))
        rss, fds, nthreads = proc_figures(daemon.pid)
        samples.append([round(time.time() - started, 1), rss, fds, nthreads, stats.ok, sum(stats.errors.values()),
                        len(stats.late), None, events["reloads"], events["kills"]])
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
    with open(os.path.join(out, "late.txt"), "w") as f:
        for row in stats.late:
            f.write("%s %s %.1f ms (deadline %d ms): %s\n" % row)

    print("soak: %.0f s, %d samples -> %s" % (time.time() - started, len(samples), csv_path))
    for col, label in [(1, "RSS kB"), (2, "open fds"), (3, "threads")]:
        vals = [s[col] for s in samples]
        if vals:
            print("  %-9s first %7d  min %7d  max %7d  last %7d" % (label, vals[0], min(vals), max(vals), vals[-1]))
    if len(samples) >= 4:
        # Least-squares slope of RSS over the second half (after warm-up), per hour.
        half = samples[len(samples) // 2:]
        xs, ys = [s[0] for s in half], [s[1] for s in half]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        den = sum((x - mx) ** 2 for x in xs) or 1
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den
        print("  RSS trend over the second half: %+.0f kB/hour" % (slope * 3600))
    print("  calls: %d ok, errors %s, %d connection errors; slowest %.0f ms (deadline %d ms)" %
          (stats.ok, dict(sorted(stats.errors.items(), key=lambda kv: str(kv[0]))), stats.conn_errors, stats.worst_ms, args.timeout_ms))
    log.close()
    with open(os.path.join(out, "plugind.log"), errors="replace") as f:
        text = f.read()
    print("  %d file changes (%d hot reloads completed, %d failed), %d kills; plugind %s; all plugins running at the end: %s" %
          (events["reloads"], text.count("hot reload complete"), text.count("reload failed"), events["kills"],
           "survived" if survived else "DIED", all_running))
    if "panicked" in text:
        print("  plugind's log has a panic: see %s/plugind.log" % out)
    print("  calls later than deadline + %d ms: %d%s" % (LATE_MARGIN_MS, len(stats.late), "" if not stats.late else " (see late.txt)"))
    for row in stats.late[:20]:
        print("    %s %s %.1f ms (deadline %d ms): %s" % row)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if survived and all_running and not stats.late else 1


if __name__ == "__main__":
    sys.exit(main())
