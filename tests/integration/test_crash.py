"""Crash safety (DESIGN B.5): kill -9 postern in the middle of a load, start
it again on the same spool: every message that got a 250 is there, whole,
and nothing is there that is not a complete message."""
import hashlib
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import Postern, RawClient, SLOW, wait_until

RELAY = """receive_connectors = (
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ]; }
);
"""


def body_for(client, n):
    """A message whose content can be checked after recovery: the header
    carries its own digest."""
    line = ("client %d message %d: the quick brown fox\r\n" % (client, n)).encode()
    payload = line * (5 + (n * 37 + client) % 300)
    digest = hashlib.sha256(payload).hexdigest()
    return (b"Subject: crash test\r\nX-Digest: " + digest.encode() + b"\r\n\r\n" +
            payload + b"\r\n")


class Loader(threading.Thread):
    """Sends messages over one connection until the server dies; records
    the id of every message that got a 250."""

    def __init__(self, port, client, pause=0.0):
        super().__init__(daemon=True)
        self.port, self.client, self.pause = port, client, pause
        self.acked = []
        self.stop = False

    def run(self):
        try:
            c = RawClient(self.port, "127.0.0.%d" % (10 + self.client), timeout=10)
            c.cmd("EHLO loader.example")
            n = 0
            while not self.stop:
                c.send("MAIL FROM:<load@app.example>\r\nRCPT TO:<x@other.example>\r\nDATA\r\n")
                if c.replies(3)[2] != "354 Start mail input; end with <CRLF>.<CRLF>":
                    return
                c.send(body_for(self.client, n) + b".\r\n")
                r = c.reply()
                m = re.match(r"250 2\.6\.0 <([0-9A-F]+)> Queued mail for delivery$", r)
                if not m:
                    return
                self.acked.append(m.group(1))
                n += 1
                if self.pause:
                    time.sleep(self.pause)
        except (AssertionError, OSError):
            return  # the server was killed


def check_recovered(p, acked):
    listed = p.messages()
    assert len(listed) == len(set(listed)), "a message id appears twice"
    msgs = p.all_messages()
    assert sorted(msgs) == listed
    missing = sorted(set(acked) - set(msgs))
    assert missing == [], "acknowledged but lost: %r" % missing[:10]
    # Everything present is complete and intact, acknowledged or not.
    for mid, data in msgs.items():
        env, _, message = data.partition(b"\r\n\r\n")
        assert env.startswith(b"POSTERN/1\r\nid: " + mid.encode() + b"\r\n")
        assert message.startswith(b"Received: from ")
        m = re.search(rb"\r\nX-Digest: ([0-9a-f]{64})\r\n\r\n(.*)\r\n\Z", message, re.S)
        assert m, "message %s is not whole" % mid
        assert hashlib.sha256(m.group(2)).hexdigest().encode() == m.group(1), mid
    return msgs


@pytest.fixture
def cleanup():
    procs = []
    yield procs
    for p in procs:
        p.kill()


def load_and_kill(p, nloaders, kill_after, pause=0.0, half_header=b""):
    """Loads p from nloaders clients plus one left in the middle of DATA,
    kills it with SIGKILL kill_after seconds after the 20th ack, and
    returns the acknowledged ids."""
    loaders = [Loader(p.port, i, pause=pause) for i in range(nloaders)]
    half = RawClient(p.port, "127.0.0.40")
    half.cmd("EHLO half.example")
    half.send("MAIL FROM:<half@app.example>\r\nRCPT TO:<x@other.example>\r\nDATA\r\n")
    assert half.replies(3)[2].startswith("354 ")
    half.send(b"Subject: half\r\n" + half_header + b"\r\n" + b"never finished\r\n" * 500)
    for l in loaders:
        l.start()
    wait_until(lambda: sum(len(l.acked) for l in loaders) >= 20, 10, what="some acks")
    time.sleep(kill_after * SLOW)
    p.proc.send_signal(signal.SIGKILL)
    p.proc.wait()
    for l in loaders:
        l.stop = True
        l.join(10)
    half.close()
    return [i for l in loaders for i in l.acked]


def restart(p):
    """The same configuration and spool, after a crash (the spool lock died
    with the process)."""
    p.stopped = True
    q = Postern.__new__(Postern)
    q.__dict__.update(p.__dict__)
    q.proc = None
    q.stopped = False
    q.crashed = True
    q.start()
    return q


@pytest.mark.parametrize("kill_after", [0.3, 0.8, 1.5])
def test_kill_9_during_load_loses_nothing(tmp_path, kill_after, cleanup):
    p = Postern(tmp_path, RELAY, name="crash").start()
    cleanup.append(p)
    acked = load_and_kill(p, 8, kill_after)
    assert len(acked) >= 20

    q = restart(p)
    cleanup.append(q)
    log = q.stderr()
    m = re.search(r"event=recover segments=\d+ messages=(\d+) bytes=\d+ torn_tails=\d+ "
                  r"discarded_partial=(\d+)", log)
    assert m, log
    msgs = check_recovered(q, acked)
    assert int(m.group(1)) == len(msgs)
    assert int(m.group(2)) >= 1  # at least the half-sent message
    # The restarted server accepts more on top.
    c = RawClient(q.port, "127.0.0.10")
    c.cmd("EHLO again.example")
    c.send("MAIL FROM:<a@app.example>\r\nRCPT TO:<x@other.example>\r\nDATA\r\n")
    c.replies(3)
    c.send(body_for(99, 1) + b".\r\n")
    new = re.match(r"250 2\.6\.0 <([0-9A-F]+)> ", c.reply()).group(1)
    c.cmd("QUIT")
    c.close()
    q.stop()
    assert new not in acked
    check_recovered(q, acked + [new])


# ---- with delivery: the next hop is down while postern is killed ---------

def relay_to(sink_port):
    return RELAY + """send_connectors = (
  { name = "Next hop"; address_spaces = [ "*" ]; smart_hosts = [ "127.0.0.1:%d" ]; }
);
queue = { retry_interval = "1s"; max_retry_interval = "1s"; };
""" % sink_port


def delivered_ids(sink):
    """Postern id of every message the sink got (from the Received: header
    Postern adds), with the count of each."""
    seen = {}
    for m in sink.snapshot():
        r = re.search(rb"with E?SMTP id ([0-9A-F]{16})", m["data"])
        assert r, m["data"][:300]
        mid = r.group(1).decode()
        seen[mid] = seen.get(mid, 0) + 1
        # Whole and intact, acknowledged or not.
        d = re.search(rb"\r\nX-Digest: ([0-9a-f]{64})\r\n\r\n(.*)\r\n\Z", m["data"], re.S)
        assert d, "message %s arrived cut short" % mid
        assert hashlib.sha256(d.group(2)).hexdigest().encode() == d.group(1), mid
    return seen


@pytest.mark.parametrize("kill_after", [0.3, 1.0])
def test_kill_9_with_next_hop_down_then_everything_acked_arrives(tmp_path, kill_after,
                                                                  cleanup):
    from conftest import free_port
    from sink import Sink
    sink_port = free_port()
    p = Postern(tmp_path, relay_to(sink_port), name="crash").start()
    cleanup.append(p)
    # Paced, so the queue the sink must drain stays in the hundreds.
    acked = load_and_kill(p, 6, kill_after, pause=0.01, half_header=b"X-Digest: 0\r\n")
    # The next hop was down: every attempt was deferred, none delivered.
    assert "event=deliver " not in p.stderr()
    assert "event=defer " in p.stderr()

    q = restart(p)
    cleanup.append(q)
    with Sink(sink_port) as sink:
        wait_until(lambda: set(acked) <= set(delivered_ids(sink)), 30 * SLOW,
                   interval=0.5, what="every acknowledged message at the sink")
        wait_until(lambda: q.messages() == [], 10 * SLOW, interval=0.2,
                   what="the queue to empty")
        seen = delivered_ids(sink)
        dups = {k: v for k, v in seen.items() if v > 1}
        # Nothing was delivered before the crash, so nothing twice.
        assert dups == {}, "delivered twice: %r" % dups
        unacked = set(seen) - set(acked)
        # At most the messages whose 250 was in flight at the kill, one per
        # loader, and never the one cut off mid-DATA (checked whole above).
        assert len(unacked) <= 6, unacked
        q.stop()
    log = q.stderr()
    assert log.count("event=deliver ") == len(seen)


def test_kill_9_while_delivering_counts_duplicates(tmp_path, cleanup):
    """Killed while messages are being delivered: what the sink took but
    whose state was not yet durable is delivered again after the restart
    (at least once); nothing acknowledged is missing."""
    from conftest import free_port
    from sink import Sink
    sink_port = free_port()
    slow = Sink(sink_port, data_reply=lambda m: time.sleep(0.02) or None)
    try:
        p = Postern(tmp_path, relay_to(sink_port), name="crash").start()
        cleanup.append(p)
        loaders = [Loader(p.port, i, pause=0.01) for i in range(4)]
        for l in loaders:
            l.start()
        wait_until(lambda: slow.count() >= 10, 20 * SLOW, what="deliveries to start")
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait()
        for l in loaders:
            l.stop = True
            l.join(10)
        acked = [i for l in loaders for i in l.acked]
        q = restart(p)
        cleanup.append(q)
        try:
            wait_until(lambda: set(acked) <= set(delivered_ids(slow)), 30 * SLOW,
                       interval=0.5, what="every acknowledged message at the sink")
        except AssertionError:
            missing = sorted(set(acked) - set(delivered_ids(slow)))
            log = q.stderr()
            raise AssertionError("not delivered: %r\nlog of %s:\n%s\nlast lines:\n%s" % (
                missing[:5], missing[:1],
                "\n".join(l for l in log.splitlines() if missing and missing[0] in l),
                "\n".join(log.splitlines()[-30:])))
        wait_until(lambda: q.messages() == [], 10 * SLOW, interval=0.2,
                   what="the queue to empty")
        seen = delivered_ids(slow)
        dups = sum(v - 1 for v in seen.values())
        print("delivered %d distinct, %d duplicates after kill -9 mid-delivery"
              % (len(seen), dups))
        # Only messages in flight at the kill can come twice: bounded by
        # the connections Postern had open (20 per send connector).
        assert dups <= 20 * 2, seen
        q.stop()
    finally:
        slow.close()


def test_compaction_then_kill_9_keeps_every_message_once(tmp_path, cleanup):
    """Small segments fill with messages that are delivered at once, with a
    few for a next hop that is down among them. Compaction moves those few
    out so the old segments can go; a kill -9 as it happens leaves at most
    two copies of a message, and recovery takes one."""
    import subprocess
    from conftest import free_port
    from sink import Sink
    go_port, keep_port = free_port(), free_port()
    conf = RELAY.replace('permission_groups = [ "anonymous_relay" ];',
                         'permission_groups = [ "anonymous_relay" ]; '
                         'max_inbound_connection_per_source = "unlimited";') + """
send_connectors = (
  { name = "Go"; address_spaces = [ "go.test" ]; smart_hosts = [ "127.0.0.1:%d" ]; },
  { name = "Keep"; address_spaces = [ "keep.test" ]; smart_hosts = [ "127.0.0.1:%d" ]; }
);
queue = { retry_interval = "1s"; max_retry_interval = "1s"; };
""" % (go_port, keep_port)
    p = Postern(tmp_path, conf, name="crash",
                server_extra='  spool_segment_size = "1MB";\n').start()
    cleanup.append(p)
    with Sink(go_port) as go:
        for rcpt, n in (("go", 800), ("keep", 40), ("go", 800), ("keep", 40), ("go", 800)):
            r = subprocess.run(["smtp-source", "-s", "5", "-m", str(n), "-l", "1500",
                                "-f", "a@app.example", "-t", "x@%s.test" % rcpt,
                                "127.0.0.1:%d" % p.port], capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr
        wait_until(lambda: "event=compact " in p.stderr(), 20 * SLOW, interval=0.05,
                   what="a compaction")
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait()
    log = p.stderr()
    keep = sorted(set(re.findall(r"event=receive id=([0-9A-F]{16}) from=<a@app.example> "
                                 r"to=<x@keep.test>", log)))
    assert len(keep) == 80
    assert "event=deliver " in log and "to=x@keep.test" not in \
        "".join(l for l in log.splitlines() if "event=deliver " in l)

    # Recovery sees each queued message once, moved or not. The spool is
    # read at rest: the restarted server compacts at once, and a listing
    # taken meanwhile can read the new segment before a moved copy is in it
    # and the old one after it is gone (CI saw two messages missing from
    # such a listing while the server had both queued).
    q = restart(p)
    cleanup.append(q)
    q.stop()
    listed = q.messages()
    assert listed == sorted(set(listed))
    assert set(keep) <= set(listed)

    # Route keep.test to a live next hop: each arrives exactly once.
    q.config.write_text(q.config.read_text().replace(
        '"127.0.0.1:%d" ]; } );' % keep_port, '"127.0.0.1:%d" ]; } );' % go_port).replace(
        'smart_hosts = [ "127.0.0.1:%d" ]' % keep_port, 'smart_hosts = [ "127.0.0.1:%d" ]' % go_port))
    r2 = restart(q)
    r2.crashed = False
    cleanup.append(r2)
    with Sink(go_port) as sink:
        def keep_ids():
            ids = []
            for m in sink.snapshot():
                if m["rcpts"][0] == "x@keep.test":
                    ids.append(re.search(rb"id ([0-9A-F]{16})", m["data"]).group(1).decode())
            return ids
        wait_until(lambda: set(keep) <= set(keep_ids()), 30 * SLOW, interval=0.2,
                   what="every held message delivered")
        wait_until(lambda: r2.messages() == [], 10 * SLOW, interval=0.2,
                   what="the queue to empty")
        ids = keep_ids()
        assert sorted(ids) == sorted(set(ids)), "delivered twice"
        r2.stop()


def test_moved_then_delivered_is_not_delivered_again_after_kill_9(tmp_path, cleanup):
    """The worst point of a compaction: messages were moved out of a
    segment that stays (a message stuck in a delivery attempt pins it), the
    moved copies were delivered, and postern dies before the old segment is
    deleted. The old segment still holds the originals with nothing
    delivered; recovery must take the moved copies, which are finished, and
    deliver none of them again."""
    import subprocess
    from conftest import free_port
    from sink import Sink
    go_port, keep_port, stall_port = free_port(), free_port(), free_port()
    conf = RELAY.replace('permission_groups = [ "anonymous_relay" ];',
                         'permission_groups = [ "anonymous_relay" ]; '
                         'max_inbound_connection_per_source = "unlimited";') + """
send_connectors = (
  { name = "Go"; address_spaces = [ "go.test" ]; smart_hosts = [ "127.0.0.1:%d" ]; },
  { name = "Keep"; address_spaces = [ "keep.test" ]; smart_hosts = [ "127.0.0.1:KEEP" ]; },
  { name = "Stall"; address_spaces = [ "stall.test" ]; smart_hosts = [ "127.0.0.1:%d" ]; }
);
queue = { retry_interval = "1s"; max_retry_interval = "1s"; };
""" % (go_port, stall_port)
    release = threading.Event()
    # One connection per worker's first segment takes a stalled message
    # into a delivery attempt that never ends: those segments stay.
    stall = Sink(stall_port, rcpt_reply=lambda a, l: release.wait(120) and None)
    go = Sink(go_port)
    try:
        p = Postern(tmp_path, conf.replace("KEEP", str(keep_port)), name="crash",
                    server_extra='  spool_segment_size = "1MB";\n')
        p.config.write_text(p.config.read_text().replace("workers = 2;", "workers = 1;"))
        p.start()
        cleanup.append(p)

        def source(rcpt, n, sessions=5):
            r = subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(n), "-l", "1500",
                                "-f", "a@app.example", "-t", "x@%s.test" % rcpt,
                                "127.0.0.1:%d" % p.port], capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr
        source("stall", 1, 1)
        wait_until(lambda: stall.commands("RCPT"), 10 * SLOW, what="the stalled attempt")
        for rcpt, n in (("keep", 40), ("go", 800), ("keep", 40), ("go", 800)):
            source(rcpt, n)
        # The first segment holds the stalled message: its compaction
        # moves the rest of what is queued there, and the segment stays.
        # Compaction looks every 5 s, and the first segment qualifies only
        # once enough of its go.test messages are finished: 10-30 s on a
        # quiet 2-core machine (timed, five runs), more beside the other
        # suites (CI timed out at 30 s once).
        wait_until(lambda: re.search(r"event=compact worker=0 segment=0+1 ", p.stderr()),
                   60 * SLOW, interval=0.05, what="the first segment's compaction")
        log = p.stderr()
        keep = sorted(set(re.findall(r"event=receive id=([0-9A-F]{16}) from=<a@app.example> "
                                     r"to=<x@keep.test>", log)))
        assert len(keep) == 80
        # The moves made durable, then keep.test goes through: the moved
        # copies are delivered.
        time.sleep(1.0)
        moved_log = p.stderr()
        p.config.write_text(p.config.read_text().replace(
            "127.0.0.1:%d" % keep_port, "127.0.0.1:%d" % go_port))
        p.signal(signal.SIGHUP)
        wait_until(lambda: "event=reload status=ok" in p.stderr(), 10 * SLOW, what="reload")

        def keep_ids(sink):
            ids = []
            for m in sink.snapshot():
                if m["rcpts"][0] == "x@keep.test":
                    ids.append(re.search(rb"id ([0-9A-F]{16})", m["data"]).group(1).decode())
            return ids
        wait_until(lambda: set(keep) <= set(keep_ids(go)), 30 * SLOW, interval=0.1,
                   what="every held message delivered")
        # Their DELIVERED states made durable (group commit), then the kill.
        time.sleep(0.5)
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait()
        first = keep_ids(go)
        assert sorted(first) == sorted(set(first)), "delivered twice before the crash"
        moved = int(re.search(r"event=compact worker=0 segment=0+1 messages=(\d+)",
                              moved_log).group(1))
        assert moved >= 10, moved_log  # keep.test messages among them
        # The old segment is still there: the stalled message pins it.
        assert "seg-0000000000000001.log" in p.spool_names()

        q = restart(p)
        cleanup.append(q)
        time.sleep(3 * SLOW)  # retries are due every second: time to redeliver
        again = [i for i in keep_ids(go) if i in keep]
        assert sorted(again) == sorted(set(again)), "delivered again after the crash: %r" % (
            sorted(i for i in set(again) if again.count(i) > 1)[:10])
        listed = q.messages()
        assert not set(keep) & set(listed), "moved and delivered, yet queued again"
        release.set()
        q.stop()
    finally:
        release.set()
        go.close()
        stall.close()


def test_bounce_over_64_mib_survives_kill_9(tmp_path, cleanup):
    """A bounce that returns a 70 MiB original (RET=FULL, externally
    secured sender: no size limit) is written in bounded records; after a
    kill -9 recovery finds it, whole, and nothing after it is lost. Before,
    it was one record over recovery's 64 MiB limit: read as a torn tail,
    the bounce was gone."""
    import smtplib
    from conftest import SPOOL_TOOL, free_port
    from sink import Sink
    fail_port, hold_port = free_port(), free_port()
    conf = """receive_connectors = (
  { name = "Trusted"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.20" ]; permission_groups = [ "externally_secured" ]; },
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ]; }
);
send_connectors = (
  { name = "Fail"; address_spaces = [ "fail.test" ]; smart_hosts = [ "127.0.0.1:%d" ]; },
  { name = "Hold"; address_spaces = [ "*" ]; smart_hosts = [ "127.0.0.1:%d" ]; }
);
queue = { retry_interval = "1h"; max_return_size = "200MB"; };
""" % (fail_port, hold_port)
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-the-big-one\r\n"
    body = b"Subject: big\r\n\r\n" + line * ((70 << 20) // len(line) + 1)
    with Sink(fail_port, rcpt_reply=lambda a, l: "550 5.1.1 no such user"):
        p = Postern(tmp_path, conf, name="crash").start()
        cleanup.append(p)
        with smtplib.SMTP("127.0.0.1", p.port, source_address=("127.0.0.20", 0),
                          timeout=120 * SLOW) as s:
            s.sendmail("a@b.example", ["x@fail.test"], body, mail_options=["RET=FULL"])
        wait_until(lambda: "event=dsn kind=bounce " in p.stderr(), 60 * SLOW, interval=0.1,
                   what="the bounce")
        # Acknowledged after the bounce was written: it must survive too.
        with smtplib.SMTP("127.0.0.1", p.port, source_address=("127.0.0.30", 0),
                          timeout=20 * SLOW) as s:
            s.sendmail("c@d.example", ["y@else.example"], b"Subject: after\r\n\r\nsmall\r\n")
        dsn_id = re.search(r"event=dsn kind=bounce id=\w+ dsn_id=(\w+) ", p.stderr()).group(1)
        time.sleep(0.5)  # the bounce's records covered by a group commit
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait()
    r = subprocess.run([SPOOL_TOOL, str(p.spool), "stats"], capture_output=True, timeout=120)
    assert b'"torn_tails": 0' in r.stdout, r.stdout
    q = restart(p)
    cleanup.append(q)
    queued = q.message_sizes()
    assert dsn_id in queued, (dsn_id, queued, q.stderr()[-2000:])
    assert queued[dsn_id] > len(body), queued
    assert len(queued) == 2, queued
    data = q.read_message(dsn_id)
    assert data.count(line) == body.count(line)
    q.stop()
