"""Issue 24's targets 3-5, as cases of scripts/bench.py: 10,000 keep-alive
connections held open (most idle), the latency the relay adds over the baseline
in alternated open-loop runs, and the soak's tail beside the baseline soaked at
the same rate. bench.py dispatches CASES here and adds `report` and `targets`.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from harness import ROOT, metric, metrics_text, quantiles, samples, scrape, stop
import bench

CASES = ("file-256c", "file-10k-conns", "latency-alternated", "baseline-soak")


def run(c, a, results):
    """Runs case `c` (one of CASES) and returns its result."""
    if c == "file-256c":
        return case_connections(a, 0)
    if c == "file-10k-conns":
        return case_connections(a, TOTAL - ACTIVE)
    if c == "latency-alternated":
        return case_latency(a, results)
    if c == "baseline-soak":
        return case_baseline_soak(a, results)
    raise ValueError(c)


def report(results):
    """The report's sections for these cases (lines of Markdown)."""
    return report_connections(results) + report_latency(results) + report_soak(results)


def targets(results):
    """(target, figure, met) rows for these cases."""
    return targets_connections(results) + targets_latency(results) + targets_soak(results)


def ms(us):
    """Microseconds as milliseconds, for the report."""
    return f"{us / 1000:.2f} ms"


# --- Target 4: 10,000 connections ---

# Active connections in the connection cases, and all held in the 10k one.
ACTIVE = 256
TOTAL = int(os.environ.get("TOTAL_CONNS", "10000"))
# Idle connections set up at once: well inside the relay's listen backlog (4096).
IDLE_BATCH = int(os.environ.get("IDLE_BATCH", "1000"))
# An idle connection sends one request after this many seconds without one; 0 (the
# default): none after its first, so it is held idle for the whole run (the relay
# closes a keep-alive connection after idle_timeout_ms, 60 s by default).
IDLE_EVERY = float(os.environ.get("IDLE_EVERY", "0"))
KERNEL = {"somaxconn": "net/core/somaxconn", "tcp_max_syn_backlog": "net/ipv4/tcp_max_syn_backlog",
          "ip_local_port_range": "net/ipv4/ip_local_port_range", "tcp_syncookies": "net/ipv4/tcp_syncookies"}
# TCP counters that show a listen queue overrun (per network namespace).
LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "TCPReqQFullDoCookies", "SyncookiesSent")


def kernel():
    """The kernel settings a connection count depends on."""
    out = {}
    for k, path in KERNEL.items():
        with open(f"/proc/sys/{path}") as f:
            out[k] = " ".join(f.read().split())
    return out


def listen_counters():
    """The TcpExt counters of LISTEN_COUNTERS, from /proc/net/netstat."""
    with open("/proc/net/netstat") as f:
        lines = [l.split() for l in f if l.startswith("TcpExt:")]
    values = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:])))
    return {k: values.get(k, 0) for k in LISTEN_COUNTERS}


def listen_backlog(port):
    """The accept queue length a listener asked for (ss's Send-Q of a LISTEN socket)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
    return int(out[2]) if len(out) > 2 else None


def fd_room(need):
    """Raises this process's soft open-files limit (inherited by the relay and the
    load generator it starts) to `need`; exits naming the limit if the hard one is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"{TOTAL} connections need an open-files limit of {need} for the relay and the load "
                         f"generator each; the hard limit here is {hard}: raise it (ulimit -Hn, or the "
                         "container runtime's nofile) or lower TOTAL_CONNS")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return need


def case_connections(a, idle):
    """The file sink under ACTIVE closed-loop connections while `idle` more
    keep-alive connections, each having completed a request, are held open idle:
    throughput, the relay's peak RSS (VmHWM), 5xx, and whether the server kept
    every idle one (see examples/loadgen.rs)."""
    limit = fd_room(ACTIVE + idle + 512)
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "target", "bench")) as tmp:
        p, port, admin = bench.hookrelay(tmp, bench.file_sink(tmp))
        try:
            time.sleep(0.5)
            cpu0, idle_rss, _ = bench.proc_stats(p.pid)
            counters0 = listen_counters()
            fds = [0]
            done = threading.Event()

            def count_fds():
                while not done.is_set():
                    try:
                        fds[0] = max(fds[0], len(os.listdir(f"/proc/{p.pid}/fd")))
                    except OSError:
                        pass
                    done.wait(0.5)

            sampler = threading.Thread(target=count_fds, daemon=True)
            sampler.start()
            extra = ["--idle-connections", str(idle), "--idle-batch", str(IDLE_BATCH),
                     "--idle-every", str(IDLE_EVERY)] if idle else []
            r = bench.loadgen(port, a["seconds"], a["warmup"], ACTIVE, a["body"], extra=extra)
            done.set()
            sampler.join()
            counters = {k: v - counters0[k] for k, v in listen_counters().items()}
            accepted = scrape(admin, "hookrelay_events_total", source="quickassist", outcome="accepted")
            # Everything accepted is written before the process is read.
            deadline = time.time() + 300
            while time.time() < deadline and bench.published(admin, ["file"]) < accepted:
                time.sleep(0.1)
            cpu1, rss, peak = bench.proc_stats(p.pid)
            text = metrics_text(admin)
            with open(os.path.join(tmp, "log")) as f:
                warnings = [json.loads(l).get("fields", {}).get("message", l.strip())
                            for l in f if '"WARN"' in l or '"ERROR"' in l]
            server = quantiles(text, "hookrelay_http_request_duration_seconds", (0.5, 0.99), source="quickassist")
            fsync = quantiles(text, "hookrelay_spool_fsync_duration_seconds", (0.5, 0.99))
            out = {"accept_rps": r["rps"], "p50_us": r["p50_us"], "p99_us": r["p99_us"], "p999_us": r["p999_us"],
                   "non_2xx": r["non_2xx"], "http_5xx": r["http_5xx"], "accepted": int(accepted),
                   "server_p50_us": round((server[0] or 0) * 1e6), "server_p99_us": round((server[1] or 0) * 1e6),
                   "fsync_p50_us": round((fsync[0] or 0) * 1e6), "fsync_p99_us": round((fsync[1] or 0) * 1e6),
                   "cpu_s_per_10k": round((cpu1 - cpu0) / max(accepted, 1) * 10_000, 3),
                   "cpu_us_per_event": round((cpu1 - cpu0) / max(accepted, 1) * 1e6, 2),
                   "idle_rss_mib": round(idle_rss, 1), "peak_rss_mib": round(peak, 1), "end_rss_mib": round(rss, 1),
                   "conns": ACTIVE, "idle_conns": idle, "seconds": a["seconds"], "relay_peak_fds": fds[0],
                   "relay_fd_limit": int(metric(text, "process_max_fds")), "harness_fd_limit": limit,
                   "connection_errors": {ls["reason"]: int(v) for n, ls, v in samples(text)
                                         if n == "hookrelay_http_connection_errors_total" and v},
                   "listen_backlog": listen_backlog(port), "listen_counters": counters, "kernel": kernel(),
                   "relay_warnings": warnings[:5]}
            if idle:
                out["idle"] = r["idle"]
            return out
        finally:
            stop(p)


def keep_rate(r):
    """Requests per second the idle connections sent to stay open (--idle-every)."""
    return r["idle"].get("keep_requests", 0) / max(r["idle"]["held_s"], 1e-9)


def report_connections(results):
    """The connection cases' section."""
    lines = []
    conns = [(c, results[c]) for c in ("file-256c", "file-10k-conns") if c in results]
    if conns:
        lines += ["", f"Connections: the file sink under {ACTIVE} closed-loop connections, alone and with idle "
                  "keep-alive connections held open besides them (each completed one signed request before the "
                  "clock started, then "
                  + (f"one more after each {IDLE_EVERY:g} s without one" if IDLE_EVERY else "nothing")
                  + ", and was checked and sent a last one at the end); req/s counts the busy connections' "
                  "requests only:", "",
                  "| case | connections held | req/s | p50 / p99 | non-2xx (5xx) | RSS idle / peak (VmHWM) | "
                  "relay fds (peak) | idle kept | idle held | listen overflows / drops |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for c, r in conns:
            i = r.get("idle")
            kept = (f"{i['established'] - i['probe_failed']} of {i['asked']} ({i['closed_by_server']} closed by "
                    "the server before the end)" if i else "-")
            held = (f"{i['held_s']} s after {i['setup_s']} s of setup; quiet for up to {i['quiet_max_s']} s; "
                    f"{keep_rate(r):.0f} req/s on them" if i else "-")
            lc = r["listen_counters"]
            lines.append(f"| {c} | {r['conns'] + r['idle_conns']} | {r['accept_rps']:.0f} | {ms(r['p50_us'])} / "
                         f"{ms(r['p99_us'])} | {r['non_2xx']} ({r['http_5xx']}) | {r['idle_rss_mib']} / "
                         f"{r['peak_rss_mib']} MiB | {r['relay_peak_fds']} | {kept} | {held} | "
                         f"{lc['ListenOverflows']} / {lc['ListenDrops']} |")
        r = conns[-1][1]
        k = r["kernel"]
        lines += ["", f"Kernel and limits: somaxconn {k['somaxconn']}, tcp_max_syn_backlog {k['tcp_max_syn_backlog']}, "
                  f"ip_local_port_range {k['ip_local_port_range']}, tcp_syncookies {k['tcp_syncookies']}; the relay's "
                  f"listen backlog {r['listen_backlog']}; open-files limit {r['relay_fd_limit']} (relay), "
                  f"{r['harness_fd_limit']} (load generator); idle connections opened {IDLE_BATCH} at a time. The "
                  "relay's defaults: max_connections 10,000, idle_timeout_ms 60,000, header_read_timeout_ms 10,000 "
                  "(for the first request head only). Connection errors it counted: "
                  f"{r['connection_errors'] or 'none'}."
                  + (f" Its warnings: {'; '.join(r['relay_warnings'])}." if r["relay_warnings"] else "")]
    return lines


def targets_connections(results):
    """Target 4's rows."""
    rows = []
    few, many = results.get("file-256c"), results.get("file-10k-conns")
    if few and many:
        ratio = many["accept_rps"] / max(few["accept_rps"], 1)
        rows.append((f"{many['conns'] + many['idle_conns']} connections ({many['idle_conns']} idle): throughput "
                     f">= 0.9x of {few['conns']} connections'",
                     f"{many['accept_rps']:.0f} vs {few['accept_rps']:.0f} req/s = {ratio:.2f}x (besides "
                     f"{keep_rate(many):.0f} req/s on the idle ones)", ratio >= 0.9))
    if many:
        i = many["idle"]
        rows.append((f"{many['conns'] + many['idle_conns']} connections: relay RSS < 256 MiB",
                     f"peak (VmHWM) {many['peak_rss_mib']} MiB", many["peak_rss_mib"] < 256))
        fives = many["http_5xx"]
        rows.append((f"{many['conns'] + many['idle_conns']} connections: no 5xx",
                     f"{fives} 5xx; non-2xx {many['non_2xx']} active, {i['non_2xx']} idle",
                     fives == 0 and i["non_2xx"] == 0 and many["non_2xx"] == 0))
        kept = i["established"] == i["asked"] and i["closed_by_server"] == i["probe_failed"] == i["keep_failed"] == 0
        rows.append((f"{many['conns'] + many['idle_conns']} connections: every idle one held open for the whole run",
                     f"{i['established']} of {i['asked']} set up, {i['closed_by_server']} closed by the server, "
                     f"{i['probe_failed']} failed the last request; held {i['held_s']} s, quiet for up to {i['quiet_max_s']} s",
                     kept and i["held_s"] >= many["seconds"]))
    return rows


# --- Target 3: the latency the relay adds ---

LATENCY_SECONDS = float(os.environ.get("LATENCY_SECONDS", "10"))
ROUNDS = 5


def case_latency(a, results):
    """Target 3: ROUNDS pairs of open-loop runs at half hookrelay's closed-loop
    maximum (the `file` case's, run first if absent), the baseline and the relay
    (file sink) in turn: B H in even rounds, H B in odd ones, so neither always
    runs on the warmer host. Each LATENCY_SECONDS long."""
    if "file" not in results:
        results["file"] = bench.case_hookrelay(a, bench.file_sink, "file")
    rate = bench.half_file_rate(results)
    b_args = dict(a, seconds=LATENCY_SECONDS)
    rounds = []
    for i in range(ROUNDS):
        order = ("baseline", "hookrelay") if i % 2 == 0 else ("hookrelay", "baseline")
        got = {}
        for who in order:
            if who == "baseline":
                got[who] = bench.case_baseline(b_args, rate=rate)
            else:
                got[who] = bench.case_hookrelay(b_args, bench.file_sink, "file", rate=rate)
            os.sync()
        b, h = got["baseline"], got["hookrelay"]
        added, allowed = h["p99_us"] - b["p99_us"], h["fsync_p99_us"] + 1000
        rounds.append({"order": " ".join(w[0].upper() for w in order), "baseline_p99_us": b["p99_us"],
                       "hookrelay_p99_us": h["p99_us"], "added_us": added, "fsync_p99_us": h["fsync_p99_us"],
                       "allowed_us": allowed, "met": added <= allowed, "server_p99_us": h["server_p99_us"],
                       "baseline_rps": b["accept_rps"], "hookrelay_rps": h["accept_rps"],
                       "non_2xx": b["non_2xx"] + h["non_2xx"], "baseline_lag_p99_us": b.get("lag_p99_us", 0),
                       "hookrelay_lag_p99_us": h.get("lag_p99_us", 0)})
        print(json.dumps(rounds[-1]), file=sys.stderr)
    return {"open_loop_rate": rate, "max_rps": results["file"]["accept_rps"], "seconds": LATENCY_SECONDS,
            "rounds": rounds, "met_rounds": sum(r["met"] for r in rounds)}


def report_latency(results):
    """The alternated rounds, each with its verdict."""
    lines = []
    lat = results.get("latency-alternated")
    if lat:
        lines += ["", f"Latency the relay adds: {ROUNDS} rounds of open-loop runs at {lat['open_loop_rate']}/s (half "
                  f"the file case's {lat['max_rps']:.0f} req/s), {lat['seconds']:g} s each, the baseline (B) and "
                  "hookrelay with the file sink (H) in the order shown (sent late: the part of the latency before "
                  "the request was sent, waiting for a free connection or for the load generator):", "",
                  "| round | order | baseline p99 | hookrelay p99 | added | fdatasync p99 + 1 ms | server p99 | "
                  "sent late p99, B / H | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n, x in enumerate(lat["rounds"], 1):
            lines.append(f"| {n} | {x['order']} | {ms(x['baseline_p99_us'])} | {ms(x['hookrelay_p99_us'])} | "
                         f"{ms(x['added_us'])} | {ms(x['allowed_us'])} | {ms(x['server_p99_us'])} | "
                         f"{ms(x.get('baseline_lag_p99_us', 0))} / {ms(x.get('hookrelay_lag_p99_us', 0))} | "
                         f"{'met' if x['met'] else 'NOT met'} |")
    return lines


def targets_latency(results):
    """Target 3's row."""
    rows = []
    lat = results.get("latency-alternated")
    if lat:
        n = lat["met_rounds"]
        rows.append((f"open loop at half max: hookrelay p99 - baseline p99 <= fdatasync p99 + 1 ms, in >= 4 of "
                     f"{ROUNDS} alternated runs", f"met in {n} of {len(lat['rounds'])}", n >= 4))
    return rows


# --- Target 5: the soak's tail ---


def case_baseline_soak(a, results):
    """The bare server soaked at the file soak's rate (half the `file` case's
    maximum) and length (SOAK_SECONDS): what the host and the load generator give
    over as long a run."""
    rate = results.get("file-soak", {}).get("open_loop_rate") or bench.half_file_rate(results)
    return bench.case_baseline(dict(a, seconds=float(os.environ.get("SOAK_SECONDS", "300"))), rate=rate)


def report_soak(results):
    """file-soak beside baseline-soak: overall and per window."""
    lines = []
    soaks = [(c, results[c]) for c in ("file-soak", "baseline-soak") if c in results]
    if soaks:
        lines += ["", "The soak's tail: hookrelay (file sink) and the bare baseline, each soaked open loop at the "
                  "same rate in this run; client latency from the intended send time (sent late: how much of it passed before "
                  "the request was sent, waiting for a free connection or for the load generator), per window of "
                  f"{soaks[0][1].get('interval_secs', 10)} s:", "",
                  "| case | rate | p50 | p99 | p99.9 | max | sent late, p99 | worst window's p99 (from) | "
                  "windows with p99 > 10 ms |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c, r in soaks:
            w = r.get("intervals", [])
            worst = max(w, key=lambda x: x["p99_us"]) if w else None
            lines.append(f"| {c} | {r.get('open_loop_rate', '-')}/s | {ms(r['p50_us'])} | {ms(r['p99_us'])} | "
                         f"{ms(r['p999_us'])} | {ms(r.get('max_us', 0))} | {ms(r.get('lag_p99_us', 0))} | "
                         + (f"{ms(worst['p99_us'])} ({worst['from_s']:g} s)" if worst else "-")
                         + f" | {sum(x['p99_us'] > 10_000 for x in w)} of {len(w)} |")
        width = max(len(r.get("intervals", [])) for _, r in soaks)
        if width:
            lines += ["", "p99 / max / sent late p99, per window (ms):", "",
                      "| from | " + " | ".join(c for c, _ in soaks) + " |", "|---|" + "---|" * len(soaks)]
            for n in range(width):
                cells = []
                for _, r in soaks:
                    w = r.get("intervals", [])
                    cells.append(f"{w[n]['p99_us'] / 1000:.1f} / {w[n]['max_us'] / 1000:.1f} / "
                                 f"{w[n].get('lag_p99_us', 0) / 1000:.1f}" if n < len(w) else "-")
                lines.append(f"| {n * soaks[0][1].get('interval_secs', 10):g} s | " + " | ".join(cells) + " |")
    return lines


def targets_soak(results):
    """Target 5's row: the relay's soak tail within what it may add (target 3's
    allowance) over the baseline's at the same rate."""
    rows = []
    f, b = results.get("file-soak"), results.get("baseline-soak")
    if f and b and f.get("fsync_p99_us"):
        allowed = f["fsync_p99_us"] + 1000
        added = f["p99_us"] - b["p99_us"]
        rows.append(("soak: hookrelay p99 - baseline p99 (same rate, same run) <= fdatasync p99 + 1 ms "
                     "(the tail is the host's)",
                     f"{ms(f['p99_us'])} - {ms(b['p99_us'])} = {ms(added)} vs {ms(allowed)}", added <= allowed))
    return rows
