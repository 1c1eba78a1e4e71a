"""track (DESIGN B.11) over the message log: a message followed through a
deferral and a delivery by a real next hop, by every filter, across a
rotated log file, with files outside the time range skipped, and the
errors (no log file, bad filters)."""
import json
import os
import re
import signal
import subprocess
import time

from conftest import BUILD, wait_until
from sink import Sink
from test_delivery import FAST_QUEUE, RELAY, config, smart, submit

CTL = os.path.join(BUILD, "posternctl")
LOG_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def ctl(sock, *args):
    r = subprocess.run([CTL, "-s", str(sock)] + list(args), capture_output=True, timeout=30)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def track(sock, *args):
    rc, out, err = ctl(sock, "track", *args, "--json")
    assert rc == 0, (out, err)
    return json.loads(out)


def log_events(path, event):
    try:
        text = open(path).read()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        f = {k: v[1:-1] if v.startswith('"') else v for k, v in LOG_FIELD.findall(line)}
        if f.get("event") == event:
            out.append(f)
    return out


def start(postern, tmp_path, connectors, log=True):
    sock = tmp_path / "run" / "stats.sock"
    logf = tmp_path / "logs" / "postern.log"
    logf.parent.mkdir(exist_ok=True)
    extra = '  stats_socket = "%s";\n' % sock
    if log:
        extra += '  log_file = "%s";\n' % logf
    p = postern(connectors, server_extra=extra)
    wait_until(lambda: sock.exists(), 10, what="stats socket")
    return p, sock, logf


def body(mid, subject="tracked"):
    # A folded Message-ID header: what the log records is the unfolded value.
    return ("Subject: %s\r\nMessage-ID:\r\n <%s>\r\n\r\nhello\r\n" % (subject, mid)).encode()


def test_track_deferral_then_delivery(postern, tmp_path):
    attempts = []

    def data_reply(txn):
        attempts.append(txn)
        return "451 4.3.0 try again later" if len(attempts) == 1 else None

    with Sink(data_reply=data_reply) as sink:
        p, sock, logf = start(postern, tmp_path, config(smart("Smart", ["*"], sink.port)))
        qid = submit(p.port, "alice@corp.example", ["bob@remote.example", "carol@remote.example"],
                     body("one@client.example"))
        wait_until(lambda: len(log_events(logf, "deliver")) >= 2, 20, what="delivery")
        assert len(attempts) == 2

        for args in (["message_id=<one@client.example>"], ["message_id=one@client.example"],
                     ["id=%s" % qid], ["sender=alice@corp.example"], ["rcpt=<carol@remote.example>"],
                     ["rcpt=@REMOTE.example"], ["sender=alice@corp.example", "rcpt=bob@remote.example"],
                     ["since=1h"], ["since=1h", "until=now"]):
            out = track(sock, *args)
            assert out["count"] == 1 and out["truncated"] is None, (args, out)
            m = out["messages"][0]
            assert m["id"] == qid and m["status"] == "delivered", (args, m)
        m = out["messages"][0]
        assert m["message_id"] == "<one@client.example>"
        assert m["from"] == "<alice@corp.example>"
        assert m["to"] == ["bob@remote.example", "carol@remote.example"]
        assert m["connector"] == "Relay" and m["client"] == "127.0.0.10"
        assert m["size"] > len(body("one@client.example")) and m["attempts"] == 2
        kinds = [e["event"] for e in m["events"]]
        assert kinds == ["receive", "defer", "defer", "deliver", "deliver"], kinds
        relay = "[127.0.0.1]:%d" % sink.port
        for e in m["events"][1:3]:
            assert e["reply"] == "451 4.3.0 try again later" and e["relay"] == relay, e
            assert e["send_connector"] == "Smart" and e["attempts"] == "1", e
        for e in m["events"][3:]:
            assert e["relay"] == relay and e["reply"].startswith("250 "), e
            assert e["attempts"] == "2", e
        assert sorted(e["to"] for e in m["events"][3:]) == ["bob@remote.example",
                                                              "carol@remote.example"]
        for e in m["events"]:
            assert e["id"] == qid and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
                                                   e["ts"]), e

        # No match: other filters, and a range after the message.
        for args in (["message_id=<other@client.example>"], ["sender=bob@corp.example"],
                     ["rcpt=dave@remote.example"], ["id=0000000000000000"],
                     ["until=2020-01-01"], ["since=2099-01-01T00:00:00Z"],
                     ["rcpt=@corp.example"]):
            out = track(sock, *args)
            assert out["count"] == 0 and out["messages"] == [], (args, out)

        # The text form: one block, every event, the outcome.
        rc, out, err = ctl(sock, "track", "id=%s" % qid)
        assert rc == 0, err
        lines = out.splitlines()
        assert lines[0] == ('message %s status=delivered message_id=<one@client.example> '
                            'attempts=2' % qid), lines
        assert [l.split()[1] for l in lines[1:6]] == ["event=receive", "event=defer",
                                                     "event=defer", "event=deliver",
                                                     "event=deliver"], lines
        assert lines[6].startswith("1 message; files: %s" % logf), lines


def test_track_deferred_message_and_limit(postern, tmp_path):
    with Sink(data_reply=lambda txn: "451 4.3.0 not now") as sink:
        p, sock, logf = start(postern, tmp_path, config(smart("Smart", ["*"], sink.port),
                                                        queue=FAST_QUEUE))
        ids = [submit(p.port, "s%d@corp.example" % i, ["r@remote.example"],
                      body("m%d@client.example" % i)) for i in range(3)]
        wait_until(lambda: len(log_events(logf, "defer")) >= 3, 20, what="deferrals")
        out = track(sock, "rcpt=r@remote.example")
        assert out["count"] == 3 and [m["id"] for m in out["messages"]] == ids
        assert all(m["status"] == "deferred" for m in out["messages"])
        out = track(sock, "rcpt=r@remote.example", "limit=2")
        assert out["count"] == 2 and out["truncated"] == "limit", out
        assert [m["id"] for m in out["messages"]] == ids[:2]


def test_track_reads_rotated_files_and_skips_by_time(postern, tmp_path):
    with Sink() as sink:
        p, sock, logf = start(postern, tmp_path, config(smart("Smart", ["*"], sink.port)))
        first = submit(p.port, "a@corp.example", ["x@remote.example"], body("r1@client.example"))
        wait_until(lambda: log_events(logf, "deliver"), 20, what="first delivery")
        # logrotate's way: move the file, SIGHUP, postern reopens the name.
        os.rename(logf, str(logf) + ".1")
        p.signal(signal.SIGHUP)
        wait_until(lambda: log_events(logf, "reload"), 10, what="reopened log")
        # The rotated file's last write is now clearly (more than the 2 s
        # that track allows for lines written late) before the cut.
        time.sleep(2.5)
        cut = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
        time.sleep(1.5)
        second = submit(p.port, "a@corp.example", ["x@remote.example"],
                        body("r2@client.example"))
        wait_until(lambda: log_events(logf, "deliver"), 20, what="second delivery")
        # A compressed rotation is listed, not read.
        open(str(logf) + ".2.gz", "wb").write(b"\x1f\x8b")

        out = track(sock, "sender=a@corp.example")
        assert [m["id"] for m in out["messages"]] == [first, second], out
        assert [m["status"] for m in out["messages"]] == ["delivered", "delivered"]
        files = {f["path"]: f for f in out["files"]}
        assert files[str(logf)]["read"] and files[str(logf) + ".1"]["read"], files
        assert not files[str(logf) + ".2.gz"]["read"]
        assert files[str(logf) + ".2.gz"]["skipped"].startswith("compressed"), files

        out = track(sock, "sender=a@corp.example", "since=" + cut)
        assert [m["id"] for m in out["messages"]] == [second], out
        files = {f["path"]: f for f in out["files"]}
        assert files[str(logf) + ".1"] == {"path": str(logf) + ".1", "read": False,
                                           "skipped": "outside the time range"}, files

        out = track(sock, "message_id=r1@client.example")
        assert [m["id"] for m in out["messages"]] == [first]
        assert [e["event"] for e in out["messages"][0]["events"]] == ["receive", "deliver"]


def test_track_errors(postern, tmp_path):
    p, sock, _ = start(postern, tmp_path, RELAY, log=False)
    rc, out, _ = ctl(sock, "track", "id=1")
    assert rc == 1
    assert out == ("error: track reads the message log from server.log_file, and none is "
                   "set: the log goes to stderr (set server.log_file)\n")
    for args, want in ((["since=yesterday"], "error: track: since=yesterday: not a time"),
                       (["color=red"], 'error: track: unknown or empty filter "color=red"'),
                       (["limit=0"], "error: track: limit=0: a number from 1 to 1000"),
                       (["bob"], 'error: track: "bob" is not key=value'),
                       (["since=1h", "until=2h"], "error: track: since= is later than until=")):
        rc, out, _ = ctl(sock, "track", *args)
        assert rc == 1 and out.startswith(want), (args, out)


def test_track_hostile_message_id_and_pickup(postern, tmp_path):
    """A Message-ID full of what could forge a field stays one value (the
    receive line parses strictly, the JSON is valid); a picked-up message
    is tracked like any other."""
    pickup = tmp_path / "pickup"
    pickup.mkdir()
    with Sink() as sink:
        sock = tmp_path / "run" / "stats.sock"
        logf = tmp_path / "logs" / "postern.log"
        logf.parent.mkdir()
        p = postern(config(smart("Smart", ["*"], sink.port)),
                    server_extra='  stats_socket = "%s";\n  log_file = "%s";\n'
                                 '  pickup_directory = "%s";\n' % (sock, logf, pickup))
        wait_until(lambda: sock.exists(), 10, what="stats socket")
        hostile = b'<a" id=forged event=deliver\x01\xff\xc3\xa9@x>'
        qid = submit(p.port, "h@corp.example", ["r@remote.example"],
                     b"Subject: x\r\nMessage-ID: " + hostile + b"\r\n\r\nhi\r\n")
        tmp = pickup / "f.tmp"
        tmp.write_bytes(b"X-Sender: app@corp.example\nX-Receiver: <p@remote.example>\n"
                        b"Message-ID: <picked@app>\nSubject: y\n\nbody\n")
        os.rename(tmp, pickup / "f.eml")
        wait_until(lambda: len(log_events(logf, "deliver")) >= 2, 20, what="both delivered")
        line = [l for l in open(logf, "rb").read().split(b"\n") if b"event=receive " in l
                and qid.encode() in l][0]
        assert b'message_id="<a\\" id=forged event=deliver\\x01\\xff\\xc3\\xa9@x>" ' in line, line
        keys = [k for k, _ in LOG_FIELD.findall(line.decode("ascii"))]
        assert keys.count("event") == 1 and keys.count("id") == 1, keys
        out = track(sock, "id=" + qid.lower())  # ids match in any case
        assert out["count"] == 1, out
        m = out["messages"][0]
        assert m["message_id"] == '<a" id=forged event=deliver\x01\ufffd\u00e9@x>', m
        assert [e["event"] for e in m["events"]] == ["receive", "deliver"]
        out = track(sock, "message_id=picked@app")
        assert out["count"] == 1, out
        m = out["messages"][0]
        assert m["connector"] == "Pickup" and m["client"] == "127.0.0.1", m
        assert m["status"] == "delivered" and m["to"] == ["p@remote.example"], m
        assert m["events"][0]["file"] == "f.eml", m["events"][0]


def test_track_runs_beside_health_checks(postern, tmp_path):
    """A long track never makes /healthz or the stats socket wait: it runs
    on a thread of its own."""
    import threading
    import urllib.request
    from conftest import free_port
    sock = tmp_path / "run" / "stats.sock"
    logf = tmp_path / "logs" / "postern.log"
    logf.parent.mkdir()
    mport = free_port()
    # A big rotated file of lines that all need parsing and match nothing.
    line = ('ts=2026-12-02T13:00:00.000Z level=info event=defer id=%016X from=<a@b.example> '
            'to=c@d.example send_connector="Smart" relay=[127.0.0.1]:25 status=4.0.0 '
            'reply="451 4.3.0 try again later" delay=1.0 attempts=1\n')
    with open(str(logf) + ".1", "w") as f:
        for chunk in range(40):
            f.write("".join(line % (chunk * 10000 + i) for i in range(10000)))
    p = postern(RELAY, server_extra='  stats_socket = "%s";\n  log_file = "%s";\n'
                '  metrics_listen = "127.0.0.1:%d";\n' % (sock, logf, mport))
    wait_until(lambda: sock.exists(), 10, what="stats socket")
    results = []

    def one():
        t0 = time.monotonic()
        out = track(sock, "sender=nobody@b.example")
        results.append((time.monotonic() - t0, out))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    body = urllib.request.urlopen("http://127.0.0.1:%d/healthz" % mport, timeout=10).read()
    health = time.monotonic() - t0
    rc, out, _ = ctl(sock, "show", "info")
    info = time.monotonic() - t0
    for t in threads:
        t.join(30)
    assert rc == 0 and "io_backend:" in out
    assert len(results) == 2
    slowest = min(r[0] for r in results)
    for took, out in results:
        assert out["count"] == 0, out
        assert out["lines_read"] >= 400000 or out["truncated"] == "deadline", out
    # The queries were long enough to matter; the others did not wait for them.
    # (How long a query takes depends on the machine: the bound is its own.)
    assert slowest > 0.1, [r[0] for r in results]
    assert health < slowest / 2 and info < slowest / 2, (health, info, slowest)
