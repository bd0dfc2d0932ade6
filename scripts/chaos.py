#!/usr/bin/env python3
"""Chaos runs: hookrelay under broker restarts, broker outages and SIGKILLs, checked
Jepsen-style. Run through scripts/chaos.sh (which builds first).

A sender (examples/chaos_client.rs) behaves like a provider: it retries every event
until it gets a 200 and records the ids that did. A consumer records every id that
reached the broker. Faults are spread over the run by progress (fault i of F fires
once i/(F+1) of the events are acked), in a shuffled order from --seed. At the end
the checker prints

  acked       ids that got a 200
  consumed    distinct ids read from the broker
  lost        acked but never consumed          (must be 0)
  unexpected  consumed but never sent           (must be 0)
  duplicates  deliveries beyond the first       (allowed: at-least-once)

and exits 1 unless lost = 0 and unexpected = 0.

Profile `isolation` checks that per sink (an event routed to two sinks must reach
both), and also records, per source, the 503s it got while each sink was down: a
source not routed to the failing sink must get none (exit 1 otherwise).
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import harness
from harness import AMQP, ROOT, TYPES, free_port, metric, metrics_text, scrape, wait_port

BIN = os.path.join(ROOT, "target", os.environ.get("CHAOS_PROFILE", "release"))
SECRET = "chaos-secret"


CHILDREN = []


def spawn(*args, **kwargs):
    """subprocess.Popen, remembered so a failed run leaves nothing behind."""
    p = subprocess.Popen(*args, **kwargs)
    CHILDREN.append(p)
    return p


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Relay:
    """One hookrelay process; killed and restarted on the same spool. The first start
    picks its ports; restarts keep them, since the sender was told the URL."""

    def __init__(self, work, name, sink_section, extra="", sources=None,
                 spool_extra="segment_bytes = 4194304"):
        """`sources`: {name: TOML lines} instead of the one quickassist source
        (`harness.config_with_sources`)."""
        self.name = name
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.cfg = os.path.join(self.dir, "hookrelay.toml")
        self.sink_section, self.extra = sink_section, extra
        self.sources, self.spool_extra = sources, spool_extra
        self.port = self.admin = 0
        self.proc = None
        self.url = None
        self.write_config()

    def write_config(self):
        kw = dict(spool_extra=self.spool_extra, extra=self.extra, listen=f"127.0.0.1:{self.port}",
                  admin=f"127.0.0.1:{self.admin}")
        with open(self.cfg, "w") as f:
            if self.sources is None:
                f.write(harness.config(self.dir, self.sink_section, "CHAOS_SECRET", **kw))
            else:
                f.write(harness.config_with_sources(self.dir, self.sink_section, "CHAOS_SECRET", self.sources, **kw))

    def url_for(self, source):
        return f"http://127.0.0.1:{self.port}/webhooks/{source}"

    def start(self):
        env = dict(os.environ, CHAOS_SECRET=SECRET)
        self.proc, port, admin = harness.start([os.path.join(BIN, "hookrelay"), "run", "--config", self.cfg],
                                               env, os.path.join(self.dir, "log"))
        CHILDREN.append(self.proc)
        if not self.port:
            self.port, self.admin = port, admin
            self.url = f"http://127.0.0.1:{self.port}/webhooks/quickassist"
            self.write_config()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def crash_and_restart(self, down=None):
        """SIGKILL, a moment down, then a restart on the same spool."""
        self.kill()
        time.sleep(random.uniform(0, 1) if down is None else down)
        self.start()

    def stop(self):
        return harness.stop(self.proc, 90)

    def metric(self, name, **labels):
        return scrape(self.admin, name, **labels)

    def dead_letters(self):
        path = os.path.join(self.dir, "dead.jsonl")
        return sum(1 for _ in open(path)) if os.path.exists(path) else 0


class Sender:
    """The provider: examples/chaos_client send, with its progress followed."""

    def __init__(self, work, targets, events, connections, tag, rate=0, name="acked"):
        self.acked_file = os.path.join(work, f"{name}.txt")
        self.tag, self.events = tag, events
        self.progress = 0
        # Failed attempts so far (503, other non-200, no answer), as last printed.
        self.failed = {"503": 0, "other": 0, "transport": 0}
        self.summary = None
        self.proc = spawn(
            [os.path.join(BIN, "examples", "chaos_client"), "send", "--targets", ",".join(targets),
             "--secret", SECRET, "--tag", tag, "--events", str(events), "--connections", str(connections),
             "--acked", self.acked_file, "--rate", str(rate)], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self):
        for line in self.proc.stdout:
            if line.startswith("acked "):
                self.progress = int(line.split()[1])
            elif line.startswith("failed "):
                self.failed = json.loads(line[7:])
            elif line.startswith("done "):
                self.summary = json.loads(line[5:])

    def running(self):
        return self.proc.poll() is None

    def wait(self):
        self.proc.wait()
        time.sleep(0.2)
        if self.proc.returncode != 0 or self.summary is None:
            raise RuntimeError(f"sender failed ({self.proc.returncode})")
        return self.summary

    def acked_ids(self):
        return set(line.strip() for line in open(self.acked_file) if line.strip())

    def sent_ids(self):
        return {f"{TYPES[n % 4]}:{self.tag}-{n}" for n in range(self.events)}


class Senders:
    """Several senders (one per source) seen as one: running while any is, progress summed."""

    def __init__(self, senders):
        self.all = senders

    def running(self):
        return any(s.running() for s in self.all.values())

    @property
    def progress(self):
        return sum(s.progress for s in self.all.values())


class Consumer:
    def __init__(self, work, args, name=None):
        self.out = os.path.join(work, f"consumed-{name}.txt" if name else "consumed.txt")
        self.stop_file = os.path.join(work, f"stop-consuming-{name}" if name else "stop-consuming")
        self.proc = spawn([os.path.join(BIN, "examples", "chaos_client")] + args +
                                     ["--out", self.out, "--stop-file", self.stop_file],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"consumer did not start: {line!r}")

    def finish(self):
        open(self.stop_file, "w").close()
        self.proc.wait(timeout=600)
        return [line.rstrip("\n") for line in open(self.out)]


def shuffled(plan):
    random.shuffle(plan)
    return plan


def run_faults(sender, events, plan, act):
    """Fires plan[i] once (i+1)/(len(plan)+1) of the events are acked. Faults still
    due when the sender is done fire anyway: the spool is then still draining into
    the broker, which is worth breaking too."""
    done = []
    for i, fault in enumerate(plan):
        threshold = (i + 1) * events // (len(plan) + 1)
        while sender.running() and sender.progress < threshold:
            time.sleep(0.05)
        # A random moment inside the next stretch, not exactly on the threshold.
        time.sleep(random.uniform(0, 0.3))
        when = f"acked so far {sender.progress}" if sender.running() else "after sending, while draining"
        log(f"fault {i + 1}/{len(plan)}: {fault} ({when})")
        act(fault)
        done.append(fault)
    return done


def drain(relays, timeout=300):
    """Waits until every relay's spool has nothing unconfirmed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        left = sum(r.metric("hookrelay_spool_events") for r in relays)
        if left == 0:
            return
        time.sleep(0.5)
    diagnose(relays)
    raise RuntimeError("spools did not drain")


def diagnose(relays):
    """Prints what explains a stuck run where CI shows it: the relays' delivery
    metrics and log tails, and the broker's alarms."""
    watched = ("hookrelay_spool_", "hookrelay_forward_", "hookrelay_rabbitmq_", "hookrelay_sink_",
               "hookrelay_kafka_", "hookrelay_nats_")
    for r in relays:
        try:
            lines = [l for l in metrics_text(r.admin).splitlines() if l.startswith(watched) and "_bucket" not in l]
        except OSError as e:
            lines = [f"metrics unavailable: {e}"]
        log(f"{r.name} metrics:\n  " + "\n  ".join(lines))
        with open(os.path.join(r.dir, "log")) as f:
            tail = f.readlines()[-40:]
        log(f"{r.name} log, last {len(tail)} lines:\n" + "".join(tail))
    for cmd in (["rabbitmq-diagnostics", "-q", "alarms"], ["rabbitmqctl", "-q", "list_connections", "name", "state"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            log(f"{' '.join(cmd)}:\n{out.stdout}{out.stderr}")
        except (OSError, subprocess.TimeoutExpired) as e:
            log(f"{' '.join(cmd)}: {e}")


def log_summary(relays, top=8):
    """The relays' warnings and errors, counted by message (the most frequent first):
    what a run's report shows of how the relay took its faults."""
    counts = {}
    for r in relays:
        with open(os.path.join(r.dir, "log")) as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                level = e.get("level", "")
                if level in ("WARN", "ERROR"):
                    # Numbers (attempts, delays, ports) vary: counted as one message.
                    msg = re.sub(r"\d+(\.\d+)?", "N", str(e.get("fields", e).get("message", "?")))[:200]
                    key = f"{level} {e.get('target', '')}: {msg}"
                    counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:top])


def check(name, tag, events, acked_file, consumed, extra):
    acked = set(line.strip() for line in open(acked_file) if line.strip())
    sent = {f"{TYPES[n % 4]}:{tag}-{n}" for n in range(events)}
    cset = set(consumed)
    report = dict(profile=name, sent=events, acked=len(acked), consumed=len(cset),
                  lost=len(acked - cset), unexpected=len(cset - sent),
                  duplicates=len(consumed) - len(cset), **extra)
    for what, ids in (("lost", acked - cset), ("unexpected", cset - sent)):
        if ids:
            log(f"{what}, first few: {sorted(ids)[:10]}")
    return report


def drive(name, a, work, tag, relays, consumer, plan, act, **extra):
    """Sends while the faults fire, drains, stops everything, and checks."""
    started = time.time()
    sender = Sender(work, [r.url for r in relays], a.events, a.connections, tag, a.rate)
    faults = run_faults(sender, a.events, plan, act)
    summary = sender.wait()
    drain(relays)
    consumed = consumer.finish()
    codes = [r.stop() for r in relays]
    return check(name, tag, a.events, sender.acked_file, consumed, dict(
        seconds=round(time.time() - started, 1), **{f: faults.count(k) for k, f in extra.items()},
        retries=summary["retries"], refused_503=summary["refused_503"],
        refused_other=summary["refused_other"], transport_errors=summary["transport_errors"],
        abandoned=summary["abandoned"], dead_lettered=sum(r.dead_letters() for r in relays), exit_codes=codes,
        log=log_summary(relays)))


def rmq(*args):
    return subprocess.run(["rabbitmqctl", "-q"] + list(args), capture_output=True, text=True)


def profile_rabbitmq(a, work, tag):
    exchange, queue = f"chaos-{tag}", f"chaos-{tag}-all"
    relay = Relay(work, "relay", f'[sinks.rabbitmq]\nuri = "{AMQP}"\nexchange = "{exchange}"')
    relay.start()
    consumer = Consumer(work, ["consume-amqp", "--uri", AMQP, "--exchange", exchange, "--queue", queue])
    stopped = [False]

    def act(fault):
        if fault == "restart":
            stopped[0] = True
            r = rmq("stop_app")
            if r.returncode != 0:
                raise RuntimeError(f"rabbitmqctl stop_app: {r.stderr}")
            time.sleep(random.uniform(0.5, 3))
            rmq("start_app")
            rmq("await_startup")
            stopped[0] = False
        else:
            relay.crash_and_restart()

    plan = shuffled(["restart"] * a.restarts + ["kill"] * a.kills)
    try:
        return drive("rabbitmq", a, work, tag, [relay], consumer, plan, act,
                     restart="broker_restarts", kill="sigkills")
    finally:
        if stopped[0]:
            rmq("start_app")
        rmq("delete_queue", queue)
        rmq("delete_queue", f"{exchange}.unroutable")


def profile_kafka(a, work, tag):
    topics = [f"quickassist.{t}" for t in TYPES]
    mock = spawn([os.path.join(BIN, "examples", "mock_kafka"), "3"] + topics,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        bootstrap = mock.stdout.readline().strip()
        relay = Relay(work, "relay", f'[sinks.kafka]\nbrokers = "{bootstrap}"')
        relay.start()
        consumer = Consumer(work, ["consume-kafka", "--brokers", bootstrap, "--topics", ",".join(topics)])

        def act(fault):
            if fault == "down":
                ids = [1, 2, 3] if random.random() < 0.3 else [random.randint(1, 3)]
                for i in ids:
                    mock.stdin.write(f"down {i}\n")
                mock.stdin.flush()
                time.sleep(random.uniform(1, 4))
                for i in ids:
                    mock.stdin.write(f"up {i}\n")
                mock.stdin.flush()
            else:
                relay.crash_and_restart()

        plan = shuffled(["down"] * a.restarts + ["kill"] * a.kills)
        return drive("kafka-mock", a, work, tag, [relay], consumer, plan, act,
                     down="broker_outages", kill="sigkills")
    finally:
        mock.kill()


def profile_redis(a, work, tag):
    exchange, queue = f"chaos-{tag}", f"chaos-{tag}-all"
    dedup = '[dedup]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:6379/0"\non_redis_error = "reject"'
    relays = [Relay(work, f"relay{i}", f'[sinks.rabbitmq]\nuri = "{AMQP}"\nexchange = "{exchange}"', dedup)
              for i in range(3)]
    for r in relays:
        r.start()
    consumer = Consumer(work, ["consume-amqp", "--uri", AMQP, "--exchange", exchange, "--queue", queue])
    turn = [0]

    def act(_):
        # One at a time, in turn: the others keep serving (and deduplicating) meanwhile.
        relays[turn[0] % len(relays)].crash_and_restart(down=random.uniform(0.5, 2))
        turn[0] += 1

    try:
        return drive("redis-3-relays", a, work, tag, relays, consumer, ["kill"] * a.kills, act,
                     kill="sigkills")
    finally:
        rmq("delete_queue", queue)
        rmq("delete_queue", f"{exchange}.unroutable")


NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class NatsServer:
    """A nats-server of the run's own (JetStream, file store in the run's directory),
    stopped with SIGTERM and started again on the same port and store. The shared
    one on 4222 is never touched."""

    def __init__(self, work):
        if not os.access(NATS_SERVER, os.X_OK):
            raise RuntimeError("nats-server is not installed (apt-get install nats-server)")
        self.store = os.path.join(work, "nats-store")
        os.makedirs(self.store)
        self.log = os.path.join(work, "nats-server.log")
        self.port = None
        self.proc = None

    def start(self):
        # The first start picks a free port (a race with other binders: retried on
        # another); restarts take the same one, which the relay was told.
        for _ in range(5):
            port = self.port or free_port()
            self.proc = spawn([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", self.store,
                               "-l", self.log], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(port, 30)
            except RuntimeError:
                pass
            time.sleep(0.2)
            if self.proc.poll() is None:
                self.port = port
                return
            if self.port:
                break
        raise RuntimeError(f"nats-server did not start; see {self.log}")

    def stop(self):
        return harness.stop(self.proc, 30) if self.proc else None

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"


class NatsConsumer:
    """JetStream keeps what it acked: the stream is read once the relay has drained,
    from its first message to its last (`chaos_client consume-nats`)."""

    def __init__(self, work, server, stream):
        self.work, self.server, self.stream = work, server, stream

    def finish(self):
        out = os.path.join(self.work, "consumed.txt")
        p = spawn([os.path.join(BIN, "examples", "chaos_client"), "consume-nats", "--server", self.server.url,
                   "--stream", self.stream, "--out", out], stdout=subprocess.PIPE, text=True)
        said, _ = p.communicate(timeout=400)
        if p.returncode != 0:
            raise RuntimeError(f"consume-nats failed ({p.returncode}): {said!r}")
        log(said.strip().splitlines()[-1])
        return [line.rstrip("\n") for line in open(out)]


def profile_nats(a, work, tag):
    nats = NatsServer(work)
    nats.start()
    stream = "CHAOS"
    try:
        relay = Relay(work, "relay", f'[sinks.bus]\ntype = "nats"\nservers = ["{nats.url}"]\nstream = "{stream}"\n'
                                     'create_stream = true\nsubjects = ["quickassist.>"]')
        relay.start()
        consumer = NatsConsumer(work, nats, stream)

        def act(fault):
            if fault == "restart":
                nats.stop()
                time.sleep(random.uniform(0.5, 3))
                nats.start()
            else:
                relay.crash_and_restart()

        plan = shuffled(["restart"] * a.restarts + ["kill"] * a.kills)
        return drive("nats", a, work, tag, [relay], consumer, plan, act,
                     restart="broker_restarts", kill="sigkills")
    finally:
        nats.stop()


# The isolation profile's sources and the sinks each is routed to.
ISOLATION = {"rabbit-only": ["rabbit"], "kafka-only": ["kafka"], "both": ["rabbit", "kafka"]}


class Monitor:
    """Samples the isolation relay every 250 ms (each sink's state, backlog, lag and
    confirmed count; each source's 503s so far) into a trace file, keeping the
    samples for the checker. A SIGKILLed relay is sampled as it comes back."""

    def __init__(self, relay, senders, path):
        self.relay, self.senders = relay, senders
        self.samples = []
        self.latest = None
        self.out = open(path, "w")
        self.t0 = time.time()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            try:
                text = metrics_text(self.relay.admin)
                sinks = {}
                for sink in ("rabbit", "kafka"):
                    state = next((st for st in ("full", "retrying", "delivering")
                                  if metric(text, "hookrelay_sink_state", sink=sink, state=st) == 1), "?")
                    sinks[sink] = (state, metric(text, "hookrelay_spool_bytes", sink=sink),
                                   metric(text, "hookrelay_forward_lag_seconds", sink=sink),
                                   metric(text, "hookrelay_sink_published_total", sink=sink))
                m = dict(t=time.time(), sinks=sinks, **{"503": {k: s.failed["503"] for k, s in self.senders.items()}})
                self.samples.append(m)
                self.latest = m
                self.out.write(f"{m['t'] - self.t0:8.2f} " + " ".join(
                    f"{k}:{st} backlog={int(b)} lag={lag:.2f} published={int(p)}" for k, (st, b, lag, p) in sinks.items())
                    + " 503 " + " ".join(f"{k}={v}" for k, v in m["503"].items()) + "\n")
            except OSError:
                pass  # the relay is down (SIGKILL) or busy: the next sample will do
            self.done.wait(0.25)

    def mark(self, what):
        self.out.write(f"{time.time() - self.t0:8.2f} --- {what}\n")

    def published(self, sink):
        return self.latest["sinks"][sink][3] if self.latest else 0

    def window(self, t0, t1):
        return [m for m in self.samples if t0 <= m["t"] <= t1]

    def stop(self):
        self.done.set()
        self.thread.join()
        self.out.close()


def profile_isolation(a, work, tag):
    """One relay, a RabbitMQ sink and a Kafka (mock cluster) sink, a source routed to
    each and one fanned out to both. Each outage (RabbitMQ stopped, or every mock
    broker down) lasts --outage-secs, then waits until its sink is delivering again
    with under a second of lag. Faults come one after another from a tenth of the
    events on, each once the relay is quiet (both sinks delivering, no 503 for a
    second), so the 503s of an outage's window are its own; every outage must land
    while all three sources are sending (the run fails otherwise: raise --events). The
    sinks' backlogs are small (--backlog-bytes) so that an outage can fill the
    failing sink's: its sources then get 503, the others must not."""
    exchange, queue = f"chaos-{tag}", f"chaos-{tag}-all"
    topics = [f"{src}.{t}" for src, sinks in ISOLATION.items() if "kafka" in sinks for t in TYPES]
    mock = spawn([os.path.join(BIN, "examples", "mock_kafka"), "3"] + topics,
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stopped = [False]
    try:
        bootstrap = mock.stdout.readline().strip()
        budget = a.backlog_bytes
        segment = max(budget // 4, 4096)
        relay = Relay(
            work, "relay",
            f'[sinks.rabbit]\ntype = "rabbitmq"\nuri = "{AMQP}"\nexchange = "{exchange}"\nbacklog_max_bytes = {budget}\n'
            # Named after its kind: `type` left out.
            f'[sinks.kafka]\nbrokers = "{bootstrap}"\nbacklog_max_bytes = {budget}',
            sources={src: (f'sink = "{sinks[0]}"' if len(sinks) == 1 else
                           "sinks = [" + ", ".join(f'"{s}"' for s in sinks) + "]")
                     for src, sinks in ISOLATION.items()},
            spool_extra=f"segment_bytes = {segment}\nmax_bytes = {2 * budget}")
        relay.start()
        consumers = {
            "rabbit": Consumer(work, ["consume-amqp", "--uri", AMQP, "--exchange", exchange, "--queue", queue],
                               name="rabbit"),
            "kafka": Consumer(work, ["consume-kafka", "--brokers", bootstrap, "--topics", ",".join(topics)],
                              name="kafka"),
        }
        started = time.time()
        per = a.events // len(ISOLATION)
        senders = {src: Sender(work, [relay.url_for(src)], per, max(4, a.connections // len(ISOLATION)),
                               f"{tag}-{src}", a.rate / len(ISOLATION), name=f"acked-{src}")
                   for src in ISOLATION}
        outages, kills = [], []
        monitor = Monitor(relay, senders, os.path.join(ROOT, "target", "chaos", "isolation.trace"))

        def settle(timeout=60):
            """Waits until the relay is quiet: both sinks delivering with under a
            second of lag, and no source refused for the last second. A fault
            starts only then, so the 503s of its window are its own."""
            t = time.time()
            quiet_since = None
            last = None
            while time.time() < t + timeout:
                m = monitor.latest
                refused = tuple(m["503"].values()) if m else None
                calm = m and m["t"] > time.time() - 1 and \
                    all(st == "delivering" and lag < 1.0 for st, _, lag, _ in m["sinks"].values())
                if calm and refused == last:
                    quiet_since = quiet_since or time.time()
                    if time.time() - quiet_since >= 1.0:
                        return round(time.time() - t, 1)
                else:
                    quiet_since = None
                last = refused
                time.sleep(0.25)
            log(f"the relay did not settle in {timeout} s: {monitor.latest}")
            return None

        def outage(fault, settled):
            sink = "rabbit" if fault == "rabbitmq" else "kafka"
            before = {src: dict(s.failed) for src, s in senders.items()}
            acked_before = {src: s.progress for src, s in senders.items()}
            t0 = time.time()
            monitor.mark(f"{sink} down")
            if fault == "rabbitmq":
                stopped[0] = True
                r = rmq("stop_app")
                if r.returncode != 0:
                    raise RuntimeError(f"rabbitmqctl stop_app: {r.stderr}")
            else:
                for i in (1, 2, 3):
                    mock.stdin.write(f"down {i}\n")
                mock.stdin.flush()
            time.sleep(a.outage_secs)
            if fault == "rabbitmq":
                rmq("start_app")
                rmq("await_startup")
                stopped[0] = False
            else:
                for i in (1, 2, 3):
                    mock.stdin.write(f"up {i}\n")
                mock.stdin.flush()
            t_restored = time.time()
            monitor.mark(f"{sink} restored")
            published = monitor.published(sink)
            first = None
            deadline = time.time() + 120
            recovered = False
            while time.time() < deadline:
                m = monitor.latest
                st, _, lag, pub = m["sinks"][sink]
                if first is None and pub > published:
                    first = m["t"]
                if st == "delivering" and lag < 1.0:
                    recovered = True
                    break
                time.sleep(0.25)
            t_end = time.time()
            at_end = {src: dict(s.failed) for src, s in senders.items()}
            monitor.mark(f"{sink} delivering again")
            # The window closes once the relay is quiet again: the providers' retries
            # and their catch-up refill the backlog for a moment after it drained,
            # and those 503s are this outage's too.
            quiet = settle() if recovered else None
            monitor.mark("quiet")
            time.sleep(0.5)  # the senders print their counts every 200 ms
            after = {src: dict(s.failed) for src, s in senders.items()}
            window = monitor.window(t0, time.time())
            row = dict(
                fault="RabbitMQ stop_app/start_app" if fault == "rabbitmq" else "Kafka mock: all 3 brokers down",
                sink=sink, settled_before_s=settled, down_s=round(t_restored - t0, 1),
                first_delivery_s=round(first - t_restored, 1) if first else None,
                recovery_s=round(t_end - t_restored, 1),
                quiet_s=round(t_end - t_restored + quiet, 1) if quiet is not None else None,
                under_load=all(s.running() for s in senders.values()),
                recovered=recovered, backlog_full=any(w["sinks"][sink][0] == "full" for w in window),
                max_backlog_bytes=int(max((w["sinks"][sink][1] for w in window), default=0)),
                other_sink_states=sorted({w["sinks"][o][0] for w in window for o in w["sinks"] if o != sink}),
                # While the sink was down or recovering (what isolation is judged on),
                # and after, until quiet: the providers' catch-up, the fan-out
                # source's included, may then fill the other sink's backlog too.
                refused_503={src: at_end[src]["503"] - before[src]["503"] for src in senders},
                refused_503_after={src: after[src]["503"] - at_end[src]["503"] for src in senders},
                other_failures={src: after[src]["other"] - before[src]["other"] +
                                after[src]["transport"] - before[src]["transport"] for src in senders},
                acked_during={src: senders[src].progress - acked_before[src] for src in senders})
            log(f"outage of {sink}: {json.dumps(row)}")
            outages.append(row)
            if not recovered:
                diagnose([relay])
                raise RuntimeError(f"sink {sink} did not recover within 120 s")

        def kill(settled):
            before = {src: s.failed["503"] for src, s in senders.items()}
            monitor.mark("SIGKILL")
            t0 = time.time()
            relay.crash_and_restart()
            monitor.mark("restarted")
            back = settle()
            row = dict(settled_before_s=settled, quiet_again_after_s=back,
                       refused_503={src: s.failed["503"] - before[src] for src, s in senders.items()})
            log(f"SIGKILL: {json.dumps(row)}")
            kills.append(row)

        # Outages alternate (RabbitMQ first); the kills fall between them at random.
        plan = []
        for i in range(max(a.restarts, a.outages)):
            plan += ["rabbitmq"] * (i < a.restarts) + ["kafka"] * (i < a.outages)
        for _ in range(a.kills):
            plan.insert(random.randint(0, len(plan)), "kill")
        agg = Senders(senders)
        while agg.running() and agg.progress < a.events // 10:
            time.sleep(0.05)
        faults = []
        try:
            for i, fault in enumerate(plan):
                settled = settle()
                when = f"acked so far {agg.progress}" if agg.running() else "after sending, while draining"
                log(f"fault {i + 1}/{len(plan)}: {fault} ({when}; quiet after {settled} s)")
                if fault == "kill":
                    kill(settled)
                else:
                    outage(fault, settled)
                faults.append(fault)
        finally:
            monitor.stop()
        summaries = {src: s.wait() for src, s in senders.items()}
        drain([relay])
        consumed = {sink: c.finish() for sink, c in consumers.items()}
        codes = [relay.stop()]
        return check_isolation(a, senders, summaries, consumed, outages, dict(
            kills=kills, seconds=round(time.time() - started, 1), broker_restarts=faults.count("rabbitmq"),
            kafka_outages=faults.count("kafka"), sigkills=faults.count("kill"), backlog_max_bytes=budget,
            outage_secs=a.outage_secs, dead_lettered=relay.dead_letters(), exit_codes=codes,
            log=log_summary([relay])))
    finally:
        if stopped[0]:
            rmq("start_app")
            rmq("await_startup")
        mock.kill()
        rmq("delete_queue", queue)
        rmq("delete_queue", f"{exchange}.unroutable")


def check_isolation(a, senders, summaries, consumed, outages, extra):
    """Per sink: every event acked for a source routed to it must be there. Per
    outage: a source not routed to the failing sink got no 503 while that sink was
    down or recovering (503s after it delivers again are reported, not judged: the
    providers' catch-up may fill a healthy sink's backlog too)."""
    acked = {src: s.acked_ids() for src, s in senders.items()}
    sent = {src: s.sent_ids() for src, s in senders.items()}
    sinks = {}
    for sink, lines in consumed.items():
        mine = [src for src, routed in ISOLATION.items() if sink in routed]
        want = set().union(*(acked[s] for s in mine))
        could = set().union(*(sent[s] for s in mine))
        got = set(lines)
        sinks[sink] = dict(sources=mine, acked=len(want), consumed=len(got), lost=len(want - got),
                           unexpected=len(got - could), duplicates=len(lines) - len(got))
        for what, ids in (("lost", want - got), ("unexpected", got - could)):
            if ids:
                log(f"{sink}: {what}, first few: {sorted(ids)[:10]}")
    violations = []
    for i, o in enumerate(outages, 1):
        if not o["under_load"]:
            violations.append(f"outage {i} ({o['sink']}) ended after a sender had finished: not under load "
                              "(raise --events or --rate)")
        for src, n in o["refused_503"].items():
            if n and o["sink"] not in ISOLATION[src]:
                violations.append(f"{src} got {n} 503s while {o['sink']} (not routed from it) was down")
    for v in violations:
        log(f"ISOLATION VIOLATED: {v}")
    sources = {src: dict(sinks=ISOLATION[src], sent=senders[src].events, acked=len(acked[src]),
                         refused_503=summaries[src]["refused_503"], retries=summaries[src]["retries"],
                         abandoned=summaries[src]["abandoned"]) for src in senders}
    report = dict(profile="isolation", sent=sum(s.events for s in senders.values()),
                  acked=sum(len(x) for x in acked.values()),
                  consumed=sum(x["consumed"] for x in sinks.values()), lost=sum(x["lost"] for x in sinks.values()),
                  unexpected=sum(x["unexpected"] for x in sinks.values()),
                  duplicates=sum(x["duplicates"] for x in sinks.values()),
                  violations=violations, sinks=sinks, sources=sources, outages=outages,
                  retries=sum(x["retries"] for x in summaries.values()),
                  abandoned=sum(x["abandoned"] for x in summaries.values()), **extra)
    log("tables (docs/reliability.md, Isolation):\n" + isolation_tables(report))
    return report


def isolation_tables(r):
    srcs = list(ISOLATION)
    lines = ["| sink | sources routed to it | acked for it | consumed | lost | unexpected | duplicates |",
             "|---|---|---|---|---|---|---|"]
    for sink, x in r["sinks"].items():
        lines.append(f"| {sink} | {', '.join(x['sources'])} | {x['acked']:,} | {x['consumed']:,} | **{x['lost']}** | "
                     f"**{x['unexpected']}** | {x['duplicates']:,} |")
    lines += ["", "| outage | down | first delivery after | backlog drained after | no 503 for 1 s after | "
              "failing sink's backlog | " + " | ".join(f"503s `{s}`" for s in srcs) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(srcs)]
    for i, o in enumerate(r["outages"], 1):
        cells = []
        for s in srcs:
            n, later = o["refused_503"][s], o["refused_503_after"][s]
            cell = f"{n:,}" if o["sink"] in ISOLATION[s] else f"**{n}**"
            cells.append(cell + (f" (+{later:,} after)" if later else ""))
        backlog = ("full" if o["backlog_full"] else "not full") + f", max {o['max_backlog_bytes'] / 1048576:.2f} MiB"
        first = "-" if o["first_delivery_s"] is None else f"{o['first_delivery_s']} s"
        quiet = "-" if o["quiet_s"] is None else f"{o['quiet_s']} s"
        lines.append(f"| {i}. {o['fault']} | {o['down_s']} s | {first} | {o['recovery_s']} s | {quiet} | {backlog} | "
                     + " | ".join(cells) + " |")
    for k in r.get("kills", []):
        quiet = "-" if k["quiet_again_after_s"] is None else f"{k['quiet_again_after_s']} s"
        lines.append(f"| SIGKILL + restart (not an outage) | - | - | - | {quiet} | - | "
                     + " | ".join(f"{k['refused_503'][s]:,}" for s in srcs) + " |")
    return "\n".join(lines)


PROFILES = {"rabbitmq": profile_rabbitmq, "kafka": profile_kafka, "redis": profile_redis, "nats": profile_nats,
            "isolation": profile_isolation}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", choices=sorted(PROFILES))
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--restarts", type=int, default=5,
                   help="broker restarts (RabbitMQ, NATS) or outages (Kafka mock); isolation: RabbitMQ restarts")
    p.add_argument("--outages", type=int, default=1, help="isolation: Kafka mock outages (all brokers down)")
    p.add_argument("--outage-secs", type=float, default=8, help="isolation: how long each outage lasts")
    p.add_argument("--backlog-bytes", type=int, default=1 << 20,
                   help="isolation: each sink's backlog_max_bytes (spool segments are a quarter of it)")
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs of hookrelay")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--rate", type=float, default=0,
                   help="events/s in total; 0 = as fast as answered. Set it so the run outlasts its faults")
    a = p.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 32)
    random.seed(seed)
    tag = f"{a.profile}{seed:x}{os.getpid():x}"
    out = os.path.join(ROOT, "target", "chaos")
    os.makedirs(out, exist_ok=True)
    log(f"profile {a.profile}: {a.events} events, seed {seed}")
    with tempfile.TemporaryDirectory(dir=out) as work:
        try:
            report = PROFILES[a.profile](a, work, tag)
        except Exception:
            log(f"failed; logs kept in {out}/failed-{tag}")
            for p in CHILDREN:
                if p.poll() is None:
                    p.kill()
            subprocess.run(["cp", "-r", work, os.path.join(out, f"failed-{tag}")])
            raise
    report["seed"] = seed
    print(json.dumps(report))
    with open(os.path.join(out, f"{a.profile}.json"), "w") as f:
        json.dump(report, f, indent=2)
    ok = report["lost"] == 0 and report["unexpected"] == 0 and not report.get("violations")
    log(f"{'PASS' if ok else 'FAIL'}: acked {report['acked']}, consumed {report['consumed']}, lost {report['lost']}, "
        f"unexpected {report['unexpected']}, duplicates {report['duplicates']}"
        + (f", isolation violations {len(report['violations'])}" if "violations" in report else ""))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
