"""The pickup directory (DESIGN B.11): good files (there at start, renamed
in, many at once with max_parallel) are spooled durably, delivered to a
real next hop byte for byte and deleted; bad ones are renamed *.bad with
their reason logged; a file still being written is never taken; the
counters and track see them; a missing directory stops the start."""
import json
import os
import re
import subprocess
import time
import urllib.request

from conftest import BINARY, BUILD, free_port, wait_until
from sink import Sink
from test_delivery import config, smart

CTL = os.path.join(BUILD, "posternctl")
LOG_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def log_events(p, event):
    out = []
    for line in p.stderr().splitlines():
        f = {k: v[1:-1] if v.startswith('"') else v for k, v in LOG_FIELD.findall(line)}
        if f.get("event") == event:
            out.append(f)
    return out


def start(postern, tmp_path, sink, pickup_extra="", name="postern", spaces=("*",)):
    d = tmp_path / "pickup"
    d.mkdir(exist_ok=True)
    sock = tmp_path / ("%s.sock" % name)
    mport = free_port()
    extra = ('  stats_socket = "%s";\n  metrics_listen = "127.0.0.1:%d";\n'
             '  pickup = { directory = "%s"; %s };\n' % (sock, mport, d, pickup_extra))
    p = postern(config(smart("Smart", list(spaces), sink.port)), server_extra=extra, name=name)
    p.metrics_port = mport
    wait_until(lambda: log_events(p, "pickup_start"), 10, what="pickup_start")
    return p, d


def drop_in(d, name, data):
    """The safe way: written under another name, then renamed in."""
    tmp = d / (name + ".tmp")
    tmp.write_bytes(data)
    os.rename(tmp, d / name)


def pickup_counts(p):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % p.metrics_port,
                                  timeout=10).read().decode()
    got = dict(re.findall(r'^postern_pickup_files_total\{result="(\w+)"\} (\d+)$', text, re.M))
    received = re.search(r'^postern_messages_received_total\{connector="Pickup"\} (\d+)$',
                         text, re.M)
    return int(got["accepted"]), int(got["bad"]), int(received.group(1)) if received else 0


GOOD = (b"X-Sender: <app@corp.example>\n"
        b"X-Receiver: <bob@remote.example>\n"
        b"X-Receiver: carol@remote.example\n"
        b"Subject: from a file\n"
        b"Message-ID: <file-1@app.corp.example>\n"
        b"\n"
        b"line one\n"
        b".a line with a leading dot\n"
        b"last line without newline")
GOOD_WIRE = (b"Subject: from a file\r\n"
             b"Message-ID: <file-1@app.corp.example>\r\n"
             b"\r\n"
             b"line one\r\n"
             b"..a line with a leading dot\r\n"
             b"last line without newline\r\n")


def test_good_files_at_start_and_renamed_in(postern, tmp_path):
    with Sink() as sink:
        d = tmp_path / "pickup"
        d.mkdir()
        (d / "early.eml").write_bytes(GOOD.replace(b"file-1@", b"early@"))
        (d / "ignored.txt").write_bytes(GOOD)  # only *.eml files are taken
        p, d = start(postern, tmp_path, sink)
        wait_until(lambda: len(sink.messages) >= 1, 20, what="the file there at start")
        drop_in(d, "late.eml", GOOD)
        wait_until(lambda: len(sink.messages) >= 2, 20, what="the renamed-in file")
        wait_until(lambda: sorted(os.listdir(d)) == ["ignored.txt"], 10,
                   what="both files deleted")
        for m in sink.messages:
            assert m["mail"].startswith("MAIL FROM:<app@corp.example> SIZE="), m["mail"]
            assert sorted(m["rcpts"]) == ["bob@remote.example", "carol@remote.example"]
            assert m["data"].startswith(b"Received: from pickup"), m["data"][:200]
        late = [m for m in sink.messages if b"<file-1@" in m["data"]]
        assert len(late) == 1 and late[0]["data"].endswith(GOOD_WIRE), late
        hdr = late[0]["data"][:-len(GOOD_WIRE)].decode()
        assert re.fullmatch(r"Received: from pickup \(\[127\.0\.0\.1\]\)\r\n[^\0]*\r\n", hdr), hdr
        recv = {e["file"]: e for e in log_events(p, "receive")}
        assert set(recv) == {"early.eml", "late.eml"}, recv
        for name, mid in (("early.eml", "<early@app.corp.example>"),
                          ("late.eml", "<file-1@app.corp.example>")):
            e = recv[name]
            assert e["connector"] == "Pickup" and e["client"] == "127.0.0.1", e
            assert e["from"] == "<app@corp.example>", e
            assert e["to"] == "<bob@remote.example>,<carol@remote.example>", e
            assert e["message_id"] == mid and e["nrcpt"] == "2", e
        assert pickup_counts(p) == (2, 0, 2)
        p.stop()
        assert log_events(p, "pickup_bad") == []


def test_bad_files_renamed_with_reason(postern, tmp_path):
    with Sink() as sink:
        p, d = start(postern, tmp_path, sink,
                     'max_message_size = "2KB"; max_recipients_per_message = 2;',
                     spaces=("remote.example",))
        cases = {
            "no-sender": (b"X-Receiver: <bob@remote.example>\nSubject: x\n\nhi\n", "no_sender"),
            "no-receiver": (b"X-Sender: <app@corp.example>\nSubject: x\n\nhi\n", "no_receiver"),
            "bad-address": (b"X-Sender: <app@corp.example>\nX-Receiver: <bob@@remote>\n"
                            b"Subject: x\n\nhi\n", "bad_receiver"),
            "bad-sender": (b"X-Sender: app corp\nX-Receiver: <bob@remote.example>\n"
                           b"Subject: x\n\nhi\n", "bad_sender"),
            "too-big": (b"X-Sender: <app@corp.example>\nX-Receiver: <bob@remote.example>\n"
                        b"Subject: x\n\n" + b"x" * 70 + b"\n" * 40 + b"y" * 900 + b"\n" * 1200,
                        "too_big"),
            "nul": (b"X-Sender: <app@corp.example>\nX-Receiver: <bob@remote.example>\n"
                    b"Subject: x\n\nh\0i\n", "nul"),
            "many-rcpts": (b"X-Sender: <app@corp.example>\nX-Receiver: a@remote.example\n"
                           b"X-Receiver: b@remote.example\nX-Receiver: c@remote.example\n"
                           b"Subject: x\n\nhi\n", "too_many_recipients"),
            "bare-cr": (b"X-Sender: <app@corp.example>\nX-Receiver: <bob@remote.example>\n"
                        b"Subject: x\r\n\r\nh\ri\r\n", "bare_cr"),
            # As RCPT TO would refuse it: no send connector for the domain.
            "no-route": (b"X-Sender: <app@corp.example>\nX-Receiver: <bob@remote.example>\n"
                         b"X-Receiver: <x@elsewhere.example>\nSubject: x\n\nhi\n", "no_route"),
        }
        for name, (data, _) in cases.items():
            drop_in(d, name + ".eml", data)
        # One that cannot be read: a directory under a .eml name.
        os.mkdir(d / "folder.eml.tmp")
        os.rename(d / "folder.eml.tmp", d / "folder.eml")
        want = sorted([n + ".bad" for n in cases] + ["folder.bad"])
        wait_until(lambda: sorted(os.listdir(d)) == want, 20,
                   what="every bad file renamed; have %r" % sorted(os.listdir(d)))
        # Each file is renamed, then its line logged: wait for the lines too.
        wait_until(lambda: len(log_events(p, "pickup_bad")) >= len(cases) + 1, 10,
                   what="a pickup_bad line for every bad file")
        got = {e["file"]: e for e in log_events(p, "pickup_bad")}
        assert got["folder.eml"]["reason"] == "not_a_file", got
        for name, (data, reason) in cases.items():
            e = got[name + ".eml"]
            assert e["reason"] == reason and e["renamed"] == name + ".bad", e
            assert (d / (name + ".bad")).read_bytes() == data  # kept as it was
        assert "max_message_size 2048" in got["too-big.eml"]["detail"], got["too-big.eml"]
        assert got["no-route.eml"]["detail"] == "no send connector for <x@elsewhere.example>"
        assert pickup_counts(p) == (0, 10, 0)
        # A good file after them still goes through.
        drop_in(d, "fine.eml", GOOD)
        wait_until(lambda: len(sink.messages) == 1, 20, what="the good file")
        assert pickup_counts(p) == (1, 10, 1)
        assert log_events(p, "receive")[0]["file"] == "fine.eml"


def test_half_written_file_is_not_taken(postern, tmp_path):
    with Sink() as sink:
        p, d = start(postern, tmp_path, sink)
        half = GOOD[:len(GOOD) // 2]
        # Being written under a temporary name, and in place under .eml.
        with open(d / "slow.tmp", "wb") as a, open(d / "inplace.eml", "wb") as b:
            a.write(half)
            a.flush()
            b.write(half)
            b.flush()
            time.sleep(1.5)
            assert sink.messages == [] and log_events(p, "receive") == []
            assert log_events(p, "pickup_bad") == []
            a.write(GOOD[len(half):])
            b.write(GOOD[len(half):])
        assert sorted(os.listdir(d)) == ["inplace.eml", "slow.tmp"]
        os.rename(d / "slow.tmp", d / "slow.eml")
        wait_until(lambda: len(sink.messages) == 1, 20, what="the completed file")
        assert sink.messages[0]["data"].endswith(GOOD_WIRE)
        wait_until(lambda: os.listdir(d) == ["inplace.eml"], 10, what="slow.eml deleted")
        time.sleep(1)
        assert len(sink.messages) == 1  # never a second copy, nor the in-place one
        # A file written in place is taken at the next start (as one there
        # at start always is).
        p.stop()
        p2, _ = start(postern, tmp_path, sink, name="again")
        wait_until(lambda: len(sink.messages) == 2, 20, what="inplace.eml after a restart")
        assert sink.messages[1]["data"].endswith(GOOD_WIRE)
        wait_until(lambda: os.listdir(d) == [], 10, what="inplace.eml deleted")
        assert [e["file"] for e in log_events(p2, "receive")] == ["inplace.eml"]


def test_many_files_bounded_parallelism(postern, tmp_path):
    with Sink() as sink:
        p, d = start(postern, tmp_path, sink, "max_parallel = 2;")
        n = 40
        for i in range(n):
            drop_in(d, "m%02d.eml" % i, GOOD.replace(b"file-1@", b"many-%02d@" % i))
        wait_until(lambda: len(sink.messages) >= n and os.listdir(d) == [], 60,
                   what="%d files delivered, have %d" % (n, len(sink.messages)))
        time.sleep(0.5)
        ids = sorted(re.search(rb"<many-(\d+)@", m["data"]).group(1) for m in sink.messages)
        assert ids == [b"%02d" % i for i in range(n)]  # each exactly once
        assert pickup_counts(p) == (n, 0, n)
        r = subprocess.run([CTL, "-s", str(tmp_path / "postern.sock"), "show", "stat"],
                           capture_output=True, timeout=30)
        assert b"Pickup" in r.stdout, r.stdout


def test_missing_or_unwritable_directory_stops_the_start(tmp_path):
    conf = tmp_path / "p.conf"
    conf.write_text('server = { hostname = "relay.test"; workers = 1; spool_dir = "%s";\n'
                    '  pickup_directory = "%s"; };\n'
                    'receive_connectors = ( { name = "R"; bindings = [ "127.0.0.1:%d" ];\n'
                    '  remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ]; } );\n'
                    % (tmp_path / "spool", tmp_path / "nowhere", free_port()))
    r = subprocess.run([BINARY, "-c", str(conf)], capture_output=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.decode().endswith(
        "postern: pickup_directory %s: No such file or directory (it must exist and be "
        "readable and writable by the user postern runs as)\n" % (tmp_path / "nowhere")), r.stderr
    r = subprocess.run([BINARY, "-c", str(conf), "--check"], capture_output=True, timeout=30)
    assert r.returncode == 0
    assert ("pickup: directory=%s connector=Pickup max_parallel=4 max_message_size=37748736 "
            "max_recipients_per_message=200 permissions=anonymous_relay (read at start)\n"
            % (tmp_path / "nowhere")) in r.stdout.decode()


def test_drain_stops_taking_files(postern, tmp_path):
    with Sink() as sink:
        p, d = start(postern, tmp_path, sink)
        drop_in(d, "before.eml", GOOD)
        wait_until(lambda: len(sink.messages) == 1 and os.listdir(d) == [], 20,
                   what="the file before the drain")
        r = subprocess.run([CTL, "-s", str(tmp_path / "postern.sock"), "drain"],
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r
        drop_in(d, "after.eml", GOOD)
        assert p.wait_exit() == 0  # the queue was empty: the drain ends at once
        assert os.listdir(d) == ["after.eml"] and len(sink.messages) == 1
        assert [e["file"] for e in log_events(p, "receive")] == ["before.eml"]


def test_kill_9_loses_no_file(postern, tmp_path):
    """A file is deleted only once its message is durable: kill -9 while
    files come in (the next hop down, so everything stays queued), start
    again, and every file's message arrives; only those in flight at the
    kill (spooled, not yet deleted) may come twice."""
    import signal
    import threading
    from test_crash import restart

    class Down:
        port = free_port()

    p, d = start(postern, tmp_path, Down)
    names, stop = [], threading.Event()

    def feed():
        i = 0
        while not stop.is_set() and i < 400:
            drop_in(d, "k%03d.eml" % i, GOOD.replace(b"file-1@", b"kill-%03d@" % i))
            names.append("k%03d.eml" % i)
            i += 1
            time.sleep(0.002)

    t = threading.Thread(target=feed)
    t.start()
    wait_until(lambda: len(names) - len([n for n in os.listdir(d) if n.endswith(".eml")]) >= 20,
               20, what="20 files taken")
    p.proc.send_signal(signal.SIGKILL)
    p.proc.wait()
    stop.set()
    t.join(10)
    gone = [n for n in names if not (d / n).exists()]
    assert len(gone) >= 20
    q = restart(p)
    with Sink(Down.port) as sink:
        def arrived():
            return [re.search(rb"<kill-(\d+)@", m["data"]).group(1).decode()
                    for m in sink.messages]
        wait_until(lambda: set(arrived()) >= {n[1:4] for n in names} and os.listdir(d) == [],
                   60, interval=0.2, what="every file's message after the restart")
        time.sleep(0.5)
        got = arrived()
        assert sorted(set(got)) == sorted(n[1:4] for n in names)
        dups = len(got) - len(set(got))
        assert dups <= 4, dups  # max_parallel: the files in flight at the kill
        q.stop()


PICKUP_RULES = r"""content_rules = (
  { name = "no-secrets"; where = "body"; pattern = "(?i)project nightjar"; action = "reject"; },
  { name = "audit-hold"; where = "recipient"; pattern = "^audit@"; action = "hold"; },
  { name = "tag-batch"; where = "header:Subject"; pattern = "(?i)batch"; action = "add_header"; header = "X-Batch: yes"; }
);
"""


def test_content_rules_apply_to_pickup_files(postern, tmp_path):
    """The pickup is a connector without externally_secured: its files go
    through the content rules like a session's messages. A reject makes the
    file bad (reason content_rule), a hold keeps it queued, an added field
    reaches the next hop."""
    with Sink() as sink:
        d = tmp_path / "pickup"
        d.mkdir()
        sock = tmp_path / "postern.sock"
        extra = ('  stats_socket = "%s";\n  pickup = { directory = "%s"; };\n' % (sock, d))
        p = postern(config(smart("Smart", ["*"], sink.port)) + PICKUP_RULES, server_extra=extra)
        wait_until(lambda: log_events(p, "pickup_start"), 10, what="pickup_start")
        head = b"X-Sender: <app@corp.example>\nX-Receiver: <%s>\nSubject: %s\n\n"
        drop_in(d, "secret.eml", head % (b"bob@remote.example", b"plans") +
                b"about Project NIGHTJAR\n")
        drop_in(d, "held.eml", head % (b"audit@remote.example", b"report") + b"numbers\n")
        drop_in(d, "tagged.eml", head % (b"bob@remote.example", b"nightly batch run") +
                b"all done\n")
        wait_until(lambda: len(sink.messages) >= 1, 20, what="the tagged file delivered")
        wait_until(lambda: sorted(os.listdir(d)) == ["secret.bad"], 10,
                   what="good files deleted, the rejected one renamed")
        [m] = sink.messages
        assert m["data"].startswith(b"X-Batch: yes\r\nReceived: from pickup"), m["data"][:200]
        [bad] = log_events(p, "pickup_bad")
        assert (bad["file"], bad["reason"]) == ("secret.eml", "content_rule"), bad
        assert "no-secrets" in bad["detail"], bad
        hits = sorted((h["rule"], h["action"], h["client"]) for h in log_events(p, "content_rule"))
        assert hits == [("audit-hold", "hold", "127.0.0.1"), ("no-secrets", "reject", "127.0.0.1"),
                        ("tag-batch", "add_header", "127.0.0.1")], hits
        held = [e for e in log_events(p, "receive") if e.get("held")]
        assert [(e["held"], e["connector"]) for e in held] == [("audit-hold", "Pickup")], held
        # held: stored and queued, never delivered (a flush does not move it)
        subprocess.run([CTL, "-s", str(sock), "flush"], check=True, capture_output=True,
                       timeout=30)
        time.sleep(1.0)
        assert len(sink.messages) == 1
        p.stop()


def test_file_being_written_at_start_waits_until_quiet(postern, tmp_path):
    """A *.eml listed at start (no rename announced it) may still be being
    written in place: it is taken only once it has not changed for 2 s."""
    with Sink() as sink:
        d = tmp_path / "pickup"
        d.mkdir()
        half = GOOD[:len(GOOD) // 2]
        with open(d / "writing.eml", "wb") as f:
            f.write(half)
            f.flush()
            p, d = start(postern, tmp_path, sink)
            # The writer goes on a little every 0.5 s for 3 s.
            rest = GOOD[len(half):]
            step = len(rest) // 6 + 1
            for i in range(6):
                time.sleep(0.5)
                assert sink.messages == [] and log_events(p, "pickup_bad") == [], i
                f.write(rest[i * step:(i + 1) * step])
                f.flush()
        done = time.monotonic()
        wait_until(lambda: len(sink.messages) == 1, 20, what="the file, once quiet")
        assert time.monotonic() - done >= 1.5
        assert sink.messages[0]["data"].endswith(GOOD_WIRE)
        assert log_events(p, "pickup_bad") == []
        wait_until(lambda: os.listdir(d) == [], 10, what="writing.eml deleted")
