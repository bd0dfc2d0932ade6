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
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

import harness
from harness import AMQP, ROOT, TYPES, metrics_text, scrape

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

    def __init__(self, work, name, sink_section, extra=""):
        self.name = name
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.cfg = os.path.join(self.dir, "hookrelay.toml")
        self.sink_section, self.extra = sink_section, extra
        self.port = self.admin = 0
        self.proc = None
        self.url = None
        self.write_config()

    def write_config(self):
        with open(self.cfg, "w") as f:
            f.write(harness.config(self.dir, self.sink_section, "CHAOS_SECRET", spool_extra="segment_bytes = 4194304",
                                   extra=self.extra, listen=f"127.0.0.1:{self.port}",
                                   admin=f"127.0.0.1:{self.admin}"))

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

    def __init__(self, work, targets, events, connections, tag, rate=0):
        self.acked_file = os.path.join(work, "acked.txt")
        self.progress = 0
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


class Consumer:
    def __init__(self, work, args):
        self.out = os.path.join(work, "consumed.txt")
        self.stop_file = os.path.join(work, "stop-consuming")
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
               "hookrelay_kafka_")
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
        retries=summary["retries"], abandoned=summary["abandoned"],
        dead_lettered=sum(r.dead_letters() for r in relays), exit_codes=codes))


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


PROFILES = {"rabbitmq": profile_rabbitmq, "kafka": profile_kafka, "redis": profile_redis}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", choices=sorted(PROFILES))
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--restarts", type=int, default=5, help="broker restarts (RabbitMQ) or outages (Kafka mock)")
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
    ok = report["lost"] == 0 and report["unexpected"] == 0
    log(f"{'PASS' if ok else 'FAIL'}: acked {report['acked']}, consumed {report['consumed']}, lost {report['lost']}, "
        f"unexpected {report['unexpected']}, duplicates {report['duplicates']}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
