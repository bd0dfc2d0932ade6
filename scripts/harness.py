"""What scripts/bench.py and scripts/chaos.py both need to drive hookrelay from the
outside: its configuration, starting it on ports it picks itself, and reading its
/metrics. One copy, so the two cannot drift apart (they once matched metric names
differently).

hookrelay binds port 0 and logs the addresses it got (the `listening` line, at
info level from `hookrelay::app`); `start` reads them back. Reserving a port by
binding and closing it first races with everything else that binds on the host.
"""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TYPES = ["message.delivered", "message.read", "message.failed", "template.status_update"]
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2f"


def config(work, sink_section, secret_env, spool_extra="", extra="", listen="127.0.0.1:0",
           admin="127.0.0.1:0"):
    """A relay configuration: one quickassist source whose secret is in `secret_env`,
    spool and dead-letter file under `work`, quiet JSON logs but for the start line."""
    return f"""
[server]
listen = "{listen}"
admin_listen = "{admin}"
[spool]
dir = "{work}/spool"
{spool_extra}
[dead_letter]
path = "{work}/dead.jsonl"
[log]
format = "json"
level = "warn,hookrelay::app=info"
{sink_section}
{extra}
[sources.quickassist]
scheme = "quickassist"
secret_env = "{secret_env}"
"""


def config_with_sources(work, sink_section, secret_env, sources, **kw):
    """`config` with `sources` instead of its one source: {name: extra TOML lines},
    each a quickassist source whose secret is in `secret_env`
    (`{"orders": 'sink = "bus"', "audit": 'sinks = ["bus", "archive"]'}`)."""
    head = config(work, sink_section, secret_env, **kw)
    head = head[:head.rindex("[sources.quickassist]")]
    return head + "".join(f'[sources.{name}]\nscheme = "quickassist"\nsecret_env = "{secret_env}"\n{lines}\n\n'
                          for name, lines in sources.items())


def start(argv, env, log_path, timeout=60):
    """Starts a relay and returns (process, webhook port, admin port) once it listens.
    Its stderr goes to `log_path` (appended). Fails with the log's tail if it exits
    or stays silent for `timeout` seconds."""
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found = {}
    listening = threading.Event()

    def follow():
        with open(log_path, "a") as log:
            for line in p.stderr:
                log.write(line)
                log.flush()
                if not listening.is_set() and '"listening"' in line:
                    try:
                        fields = json.loads(line).get("fields", json.loads(line))
                    except ValueError:
                        continue
                    found.update(fields)
                    listening.set()
        listening.set()

    threading.Thread(target=follow, daemon=True).start()
    if not listening.wait(timeout) or "webhooks" not in found:
        stop(p, 5)
        with open(log_path) as f:
            tail = "".join(f.readlines()[-20:])
        raise RuntimeError(f"hookrelay did not start (exit {p.poll()}); {log_path}:\n{tail}")
    return p, port_of(found["webhooks"]), port_of(found["admin"])


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def free_port():
    """For servers that cannot report a port they picked (tansu): a port free now,
    which may be taken before they bind it. Never used for hookrelay."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def stop(p, timeout=30):
    """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit status or "timeout"."""
    if p.poll() is not None:
        return p.returncode
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return "timeout"


def http_get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def metrics_text(admin):
    return http_get(f"http://127.0.0.1:{admin}/metrics", timeout=5)[1]


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text):
    """(name, labels, value) of every sample in a Prometheus text exposition."""
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            yield m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))


def metric(text, name, **labels):
    """The sum of the samples of exactly `name` whose labels include `labels` (in any
    order): `metric(t, "hookrelay_sink_published_total", sink="file")`."""
    return sum(v for n, ls, v in samples(text)
               if n == name and all(ls.get(k) == want for k, want in labels.items()))


def scrape(admin, name, **labels):
    """`metric` over a fresh scrape of the admin port."""
    return metric(metrics_text(admin), name, **labels)


def quantiles(text, histogram, qs, **labels):
    """Quantiles of a histogram (`histogram` without `_bucket`), by linear
    interpolation inside buckets; None where it holds no samples."""
    buckets = {}
    for n, ls, v in samples(text):
        if n == histogram + "_bucket" and all(ls.get(k) == want for k, want in labels.items()):
            le = float("inf") if ls["le"] == "+Inf" else float(ls["le"])
            buckets[le] = buckets.get(le, 0.0) + v
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0
    out = []
    for q in qs:
        target, prev_le, prev_n, value = q * total, 0.0, 0.0, None
        for le, n in ordered:
            if n >= target and total:
                value = prev_le if le == float("inf") else \
                    prev_le + (le - prev_le) * ((target - prev_n) / max(n - prev_n, 1e-9))
                break
            prev_le, prev_n = le, n
        out.append(value)
    return out
