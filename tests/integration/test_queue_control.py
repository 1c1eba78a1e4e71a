"""Queue control (DESIGN B.11) over the stats socket and posternctl, with
real next hops: show queue with filters and paging, show destinations,
hold / release / delete / bounce / retry by id and by filter, held
messages surviving a kill -9 and never delivered (not even by flush), and
postern-spool's read-only views of a stopped node's spool."""
import json
import os
import re
import signal
import subprocess
import threading
import time

from sink import Sink
from conftest import (BUILD, R_MAIL_OK, R_QUIT, R_RCPT_OK, R_START_DATA, SLOW,
                      RawClient, free_port, wait_until)

CTL = os.path.join(BUILD, "posternctl")
SPOOL_TOOL = os.path.join(BUILD, "postern-spool")


def config(one_port, two_port, drop_dir, retry="1h", two_extra=""):
    """one.test and two.test each behind their own smart host; a DSN to
    x.test or y.test lands in drop_dir."""
    return """receive_connectors = (
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ]; }
);
send_connectors = (
  { name = "One"; address_spaces = [ "one.test" ]; smart_hosts = [ "127.0.0.1:%d" ]; },
  { name = "Two"; address_spaces = [ "two.test" ]; smart_hosts = [ "127.0.0.1:%d" ]; %s },
  { name = "Senders"; address_spaces = [ "x.test", "y.test" ]; drop_directory = "%s"; }
);
queue = { retry_interval = "%s"; };
""" % (one_port, two_port, two_extra, drop_dir, retry)


def submit(port, sender, rcpts, subject, source="127.0.0.10"):
    with RawClient(port, source) as c:
        c.cmd("EHLO client.example")
        assert c.cmd("MAIL FROM:<%s>" % sender) == R_MAIL_OK
        for r in rcpts:
            assert c.cmd("RCPT TO:<%s>" % r) == R_RCPT_OK
        assert c.cmd("DATA") == R_START_DATA
        c.send(("Subject: %s\r\n\r\nbody of %s\r\n.\r\n" % (subject, subject)).encode())
        r = c.reply()
        m = re.match(r"250 2\.6\.0 <([0-9A-F]{16})> Queued mail for delivery$", r)
        assert m, r
        assert c.cmd("QUIT") == R_QUIT
    return m.group(1)


def submit_apart(*a, **k):
    """submit, then 5 ms: the queue lists messages by id (arrival ms, then
    worker), so two accepted in the same ms by different workers are listed
    by worker whatever order they were sent in; a ms apart, the order sent
    is the order listed."""
    qid = submit(*a, **k)
    time.sleep(0.005)
    return qid


def ctl(sock, *args):
    r = subprocess.run([CTL, "-s", str(sock)] + list(args), capture_output=True,
                       timeout=60 * SLOW)
    return r.returncode, r.stdout.decode()


def ctl_json(sock, *args):
    rc, out = ctl(sock, "--json", *args)
    assert rc == 0, out
    return json.loads(out)


def queue(sock, *filters):
    return ctl_json(sock, "show", "queue", *filters)


def ids(q):
    return [m["id"] for m in q["messages"]]


class Node:
    def __init__(self, postern, tmp_path, retry="1h", two_extra=""):
        self.one, self.two = free_port(), free_port()
        self.drop = tmp_path / "drop"
        self.drop.mkdir(exist_ok=True)
        self.sock = tmp_path / "stats.sock"
        self.p = postern(config(self.one, self.two, self.drop, retry, two_extra),
                         server_extra='  stats_socket = "%s";\n' % self.sock)

    def wait_tried(self, n):
        """Every one of n messages tried once (next hop down): deferred."""
        wait_until(lambda: sum(1 for m in queue(self.sock, "limit=1000")["messages"]
                               if m["attempts"] >= 1) == n,
                   10 * SLOW, what="%d messages deferred" % n)

    def dsns(self):
        return sorted(n for n in os.listdir(self.drop) if n.endswith(".eml"))


def admin_lines(p, action):
    return [l for l in p.stderr().splitlines() if "event=admin action=%s " % action in l]


def test_hold_release_by_id_with_next_hop_down_then_up(postern, tmp_path):
    n = Node(postern, tmp_path)
    a = submit(n.p.port, "app@x.test", ["r1@one.test"], "first")
    b = submit(n.p.port, "app@x.test", ["r2@one.test"], "second")
    n.wait_tried(2)
    q = queue(n.sock)
    assert q["total"] == 2 and q["count"] == 2 and q["offset"] == 0 and q["limit"] == 100
    assert ids(q) == sorted([a, b])
    m = q["messages"][0]
    assert m["state"] == "deferred" and m["sender"] == "<app@x.test>", m
    assert m["recipient_states"][0]["state"] == "pending", m
    assert m["recipient_states"][0]["status"].startswith("4.4."), m
    assert "Connection refused" in m["last_error"], m

    rc, out = ctl(n.sock, "hold", a)
    assert (rc, out) == (0, "held: 1\n")
    rc, out = ctl(n.sock, "hold", a)
    assert (rc, out) == (0, "held: 0 (unchanged: 1 held already)\n")
    held = queue(n.sock, "state=held")
    assert ids(held) == [a] and held["messages"][0]["held_reason"] == "operator"
    assert held["messages"][0]["next_attempt"] is None
    assert ids(queue(n.sock, "state=deferred")) == [b]
    assert len(admin_lines(n.p, "hold")) == 3  # the message's line, both commands'
    assert any(" id=%s by=stats" % a in l for l in admin_lines(n.p, "hold"))

    # The next hop comes back: flush delivers b, never the held a.
    with Sink(port=n.one) as sink:
        rc, out = ctl(n.sock, "flush")
        assert rc == 0
        wait_until(lambda: len(sink.messages) == 1, 10 * SLOW, what="b delivered")
        assert sink.messages[0]["rcpts"] == ["r2@one.test"]
        time.sleep(1.0)
        assert len(sink.messages) == 1
        assert ids(queue(n.sock)) == [a]
        # retry does not release a held message
        rc, out = ctl(n.sock, "retry", a)
        assert (rc, out) == (0, "retried: 0 (unchanged: 1 held: use release)\n")
        rc, out = ctl(n.sock, "release", a)
        assert (rc, out) == (0, "released: 1\n")
        wait_until(lambda: len(sink.messages) == 2, 10 * SLOW, what="a delivered once released")
        assert sink.messages[1]["rcpts"] == ["r1@one.test"]
        wait_until(lambda: queue(n.sock)["total"] == 0, 10 * SLOW, what="an empty queue")
    rc, out = ctl(n.sock, "release", a)
    assert (rc, out) == (1, "error: no message %s in the queue\n" % a)
    rc, out = ctl(n.sock, "hold", "nothex")
    assert rc == 1 and out.startswith('error: "nothex" is not a message id'), out
    rc, out = ctl(n.sock, "hold")
    assert (rc, out) == (1, 'error: hold needs a message id or "all" [filters]\n')


def test_filters_paging_destinations_and_text(postern, tmp_path):
    n = Node(postern, tmp_path)

    sent = [submit_apart(n.p.port, "app@x.test", ["r%d@one.test" % i], "a%d" % i)
            for i in range(3)]
    sent += [submit_apart(n.p.port, "spam@y.test", ["s%d@two.test" % i, "t@one.test"],
                          "b%d" % i, source="127.0.0.66") for i in range(2)]
    assert sent == sorted(sent)  # hex ids of one width: text order is id order
    n.wait_tried(5)
    assert queue(n.sock)["total"] == 5
    assert ids(queue(n.sock, "sender=app@x.test")) == sent[:3]
    assert ids(queue(n.sock, "sender=<spam@y.test>")) == sent[3:]
    assert ids(queue(n.sock, "sender=*@Y.TEST")) == sent[3:]
    assert ids(queue(n.sock, "domain=two.test")) == sent[3:]
    assert ids(queue(n.sock, "domain=one.test")) == sent
    assert ids(queue(n.sock, "rcpt=r1@one.test")) == [sent[1]]
    assert ids(queue(n.sock, "client=127.0.0.66")) == sent[3:]
    assert queue(n.sock, "state=held")["total"] == 0
    page = queue(n.sock, "limit=2", "offset=1")
    assert (page["total"], page["count"], page["offset"], page["limit"]) == (5, 2, 1, 2)
    assert ids(page) == sent[1:3]
    assert ids(queue(n.sock, "limit=2", "offset=4")) == sent[4:]
    assert queue(n.sock, "offset=9")["count"] == 0
    # Deep pages go in two rounds (ids, then the page's rows): the same.
    deep = queue(n.sock, "limit=1000", "offset=1")
    assert (deep["total"], deep["count"], ids(deep)) == (5, 4, sent[1:])
    assert ids(queue(n.sock, "limit=999", "offset=3")) == sent[3:]
    empty = queue(n.sock, "limit=1000", "offset=5")
    assert (empty["total"], empty["count"], empty["messages"]) == (5, 0, [])
    assert ids(queue(n.sock, "limit=1000", "offset=1", "sender=app@x.test")) == sent[1:3]

    rc, text = ctl(n.sock, "show", "queue", "domain=two.test")
    assert rc == 0 and text.endswith("2 messages queued\n"), text
    assert "rcpt <s0@two.test> pending 4.4." in text, text
    assert len([l for l in text.splitlines() if l.lstrip().startswith("last error: ")]) == 2
    rc, text = ctl(n.sock, "show", "queue", "limit=1")
    assert rc == 0 and text.endswith("5 messages queued, 1 shown from offset 0 (limit=1)\n")

    d = ctl_json(n.sock, "show", "destinations")
    by = {x["destination"]: x for x in d["destinations"]}
    assert sorted(by) == ["One", "Two"] and d["count"] == 2
    assert (by["One"]["messages"], by["One"]["recipients"]) == (5, 5)
    assert (by["Two"]["messages"], by["Two"]["recipients"]) == (2, 2)
    assert "Connection refused" in by["Two"]["last_error"]
    assert by["One"]["next_attempt_in_s"] > 3000 and by["One"]["held"] == 0
    assert by["One"]["throttled"] is False
    rc, text = ctl(n.sock, "show", "destinations")
    assert rc == 0 and text.splitlines()[0].split()[:3] == ["destination", "messages",
                                                             "recipients"]
    assert text.endswith("2 destinations\n")

    for bad, want in [("state=stuck", "error: state must be active, deferred or held\n"),
                      ("limit=0", "error: limit must be 1 to 10000\n"),
                      ("color=red", 'error: unknown filter "color=red" (sender=, rcpt=, '
                                    'domain=, client=, state=, limit=, offset=)\n')]:
        assert ctl(n.sock, "show", "queue", bad) == (1, want)


def test_filtered_hold_delete_bounce(postern, tmp_path):
    n = Node(postern, tmp_path)
    good = [submit_apart(n.p.port, "app@x.test", ["r%d@one.test" % i], "good%d" % i)
            for i in range(3)]
    spam = [submit_apart(n.p.port, "spam@y.test", ["s%d@two.test" % i], "spam%d" % i,
                         source="127.0.0.66") for i in range(4)]
    n.wait_tried(7)
    # Hold everything for one.test while it is broken.
    assert ctl_json(n.sock, "hold", "all", "domain=one.test") == {
        "held": 3, "matched": 3, "busy": 0, "unchanged": 0}
    assert ids(queue(n.sock, "state=held")) == good
    # Purge the compromised host's spam: silently.
    rc, out = ctl(n.sock, "delete", "all", "client=127.0.0.66", "rcpt=s0@two.test")
    assert (rc, out) == (0, "deleted: 1\n")
    rc, out = ctl(n.sock, "delete", "all", "client=127.0.0.66")
    assert (rc, out) == (0, "deleted: 3\n")
    assert ids(queue(n.sock)) == good
    assert n.dsns() == []
    assert len([l for l in admin_lines(n.p, "delete") if " id=" in l]) == 4
    # Bounce one held message: a failure notice to its sender, gone.
    rc, out = ctl(n.sock, "bounce", good[0])
    assert (rc, out) == (0, "bounced: 1\n")
    wait_until(lambda: len(n.dsns()) == 1, 10 * SLOW, what="the bounce in the drop folder")
    with open(n.drop / n.dsns()[0], "rb") as f:
        dsn = f.read().decode()
    assert "X-Sender: <>\r\nX-Receiver: <app@x.test>\r\n" in dsn, dsn[:400]
    assert "report-type=delivery-status" in dsn
    assert "Action: failed" in dsn and "Status: 5.0.0" in dsn
    assert "Final-Recipient: rfc822; r0@one.test" in dsn
    assert ("removed from the queue by the relay's administrator"
            in re.sub(r"\r\n[ \t]+", " ", dsn)), dsn
    assert ids(queue(n.sock)) == good[1:]
    # Release the rest: due now, and delivered once the next hop is back.
    with Sink(port=n.one) as sink:
        rc, out = ctl(n.sock, "release", "all", "state=held")
        assert (rc, out) == (0, "released: 2\n")
        wait_until(lambda: len(sink.messages) == 2, 10 * SLOW, what="the released delivered")
        assert sorted(m["rcpts"][0] for m in sink.messages) == ["r1@one.test", "r2@one.test"]
    wait_until(lambda: queue(n.sock)["total"] == 0, 10 * SLOW, what="an empty queue")


def test_destination_throttled_by_its_send_rate(postern, tmp_path):
    with Sink() as sink:
        n = Node.__new__(Node)
        n.one, n.two = free_port(), sink.port
        n.drop = tmp_path / "drop"
        n.drop.mkdir()
        n.sock = tmp_path / "stats.sock"
        n.p = postern(config(n.one, n.two, n.drop, two_extra="max_message_rate = 1;"),
                      server_extra='  stats_socket = "%s";\n' % n.sock)
        sent = [submit(n.p.port, "app@x.test", ["r%d@two.test" % i], "t%d" % i)
                for i in range(3)]
        wait_until(lambda: len(sink.messages) == 1, 10 * SLOW, what="the first delivered")

        def two():
            d = ctl_json(n.sock, "show", "destinations")["destinations"]
            return {x["destination"]: x for x in d}.get("Two")
        wait_until(lambda: two() and two()["throttled"] and two()["messages"] == 2,
                   10 * SLOW, what="Two throttled with 2 messages waiting")
        q = queue(n.sock, "domain=two.test")
        assert q["total"] == 2 and all(m["state"] == "active" for m in q["messages"]), q
        assert sorted(ids(q) + [i for i in sent if i not in ids(q)]) == sorted(sent)
        rc, text = ctl(n.sock, "show", "destinations")
        assert re.search(r"^Two +2 +2 +\d+ +0 +\S+ +yes ", text, re.M), text
        # In delivery (waiting for the rate): not deleted under the job.
        rc, out = ctl(n.sock, "delete", "all", "domain=two.test")
        assert (rc, out) == (0, "deleted: 0 (busy: 2 in delivery or being moved; try again)\n")
        rc, out = ctl(n.sock, "delete", ids(q)[0])
        assert rc == 1 and out == ("error: message %s is being delivered or moved now; "
                                   "try again\n" % ids(q)[0])
        n.p.stop()


def test_retry_makes_due_now(postern, tmp_path):
    n = Node(postern, tmp_path)
    a = submit(n.p.port, "app@x.test", ["r@two.test"], "retry me")
    n.wait_tried(1)
    assert queue(n.sock)["messages"][0]["next_attempt_in_s"] > 3000
    with Sink(port=n.two) as sink:
        rc, out = ctl(n.sock, "retry", a)
        assert (rc, out) == (0, "retried: 1\n")
        wait_until(lambda: len(sink.messages) == 1, 10 * SLOW, what="the retried message")
    assert any(" id=%s by=stats" % a in l for l in admin_lines(n.p, "retry"))


def restart(p):
    p.kill()
    p.stopped = False
    p.crashed = True
    p.start()


def test_held_survives_kill9_and_restart(postern, tmp_path):
    n = Node(postern, tmp_path)
    a = submit(n.p.port, "app@x.test", ["r@one.test"], "keep held")
    b = submit(n.p.port, "app@x.test", ["q@one.test"], "deleted")
    c = submit(n.p.port, "app@x.test", ["z@one.test"], "released")
    n.wait_tried(3)
    assert ctl(n.sock, "hold", a) == (0, "held: 1\n")
    assert ctl(n.sock, "hold", c) == (0, "held: 1\n")
    assert ctl(n.sock, "release", c) == (0, "released: 1\n")
    assert ctl(n.sock, "delete", b) == (0, "deleted: 1\n")
    # Acknowledged: durable. kill -9 at once. (c was tried again when
    # released, and deferred: the next hop is down.)
    restart(n.p)
    q = queue(n.sock)
    assert ids(q) == [a, c], q
    assert [m["state"] for m in q["messages"]] == ["held", "deferred"], q
    assert q["messages"][0]["held_reason"] == "operator"
    with Sink(port=n.one) as sink:
        assert ctl(n.sock, "flush")[0] == 0
        wait_until(lambda: len(sink.messages) == 1, 10 * SLOW, what="c delivered by flush")
        assert sink.messages[0]["rcpts"] == ["z@one.test"]
        time.sleep(1.0)
        assert len(sink.messages) == 1  # b deleted, a held
        restart(n.p)
        assert ids(queue(n.sock, "state=held")) == [a]
        assert ctl(n.sock, "release", a) == (0, "released: 1\n")
        wait_until(lambda: len(sink.messages) == 2, 10 * SLOW, what="a delivered")
        assert sink.messages[1]["rcpts"] == ["r@one.test"]
        wait_until(lambda: queue(n.sock)["total"] == 0, 10 * SLOW, what="an empty queue")
        restart(n.p)
        time.sleep(0.5)
        assert len(sink.messages) == 2  # released and delivered: not again
        assert queue(n.sock)["total"] == 0


def submit_many(port, n, sender="app@x.test", domain="one.test"):
    ids_ = []
    with RawClient(port, "127.0.0.10") as c:
        c.cmd("EHLO client.example")
        for i in range(n):
            assert c.cmd("MAIL FROM:<%s>" % sender) == R_MAIL_OK
            assert c.cmd("RCPT TO:<r%d@%s>" % (i, domain)) == R_RCPT_OK
            assert c.cmd("DATA") == R_START_DATA
            c.send(b"Subject: many\r\n\r\nbody\r\n.\r\n")
            r = c.reply()
            assert r.startswith("250 2.6.0 <"), r
            ids_.append(r[11:27])
    return ids_


def test_kill9_during_hold_all(postern, tmp_path):
    """kill -9 while `hold all` runs (its records written, not all yet
    durable, no reply yet): after the restart every message is still
    queued, each held or not, none lost; once a reply came, every message
    it counted is held, after another kill -9 too."""
    n = Node(postern, tmp_path)
    sent = submit_many(n.p.port, 400)
    n.wait_tried(400)
    outcomes = []
    for delay in (0.0, 0.001, 0.002, 0.003, 0.004, 0.006):
        answers = []
        t = threading.Thread(target=lambda: answers.append(ctl(n.sock, "hold", "all")))
        t.start()
        time.sleep(delay)
        n.p.proc.send_signal(signal.SIGKILL)
        t.join(30)
        n.p.proc.wait()
        n.p.stopped = False
        n.p.crashed = True
        n.p.start()
        q = queue(n.sock, "limit=1000")
        assert sorted(ids(q)) == sorted(sent), "a message was lost"
        held = sum(1 for m in q["messages"] if m["state"] == "held")
        if answers and answers[0][0] == 0:
            assert answers[0][1].startswith("held: "), answers
            assert held == 400, (answers, held)
        outcomes.append((answers[0][1].strip() if answers else "no reply", held))
        assert ctl(n.sock, "release", "all")[0] == 0
    print("kill -9 during hold all: (reply, held after restart):", outcomes)
    # After the reply: as acknowledged.
    rc, out = ctl(n.sock, "hold", "all")
    assert (rc, out) == (0, "held: 400\n"), (out, outcomes)
    restart(n.p)
    q = queue(n.sock, "limit=1000")
    assert q["total"] == 400 and all(m["state"] == "held" for m in q["messages"]), q


def test_spool_tool_views_of_a_stopped_node(postern, tmp_path):
    n = Node(postern, tmp_path)
    a = submit(n.p.port, "app@x.test", ["r@one.test", "s@two.test"], "one")
    b = submit(n.p.port, "other@y.test", ["t@two.test"], "two")
    n.wait_tried(2)
    assert ctl(n.sock, "hold", b) == (0, "held: 1\n")
    n.p.stop()
    r = subprocess.run([SPOOL_TOOL, str(n.p.spool), "queue", "json"], capture_output=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)
    assert q["total"] == 2 and ids(q) == [a, b]
    assert [m["state"] for m in q["messages"]] == ["deferred", "held"]
    assert q["messages"][0]["recipients"] == ["<r@one.test>", "<s@two.test>"]
    assert q["messages"][0]["attempts"] == 1
    r = subprocess.run([SPOOL_TOOL, str(n.p.spool), "queue", "sender=other@y.test"],
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout.decode().endswith("1 message queued\n"), r.stdout
    r = subprocess.run([SPOOL_TOOL, str(n.p.spool), "destinations", "json"],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    by = {x["destination"]: x for x in json.loads(r.stdout)["destinations"]}
    assert sorted(by) == ["one.test", "two.test"]
    assert (by["two.test"]["messages"], by["two.test"]["held"]) == (2, 1)
    r = subprocess.run([SPOOL_TOOL, str(n.p.spool), "queue", "state=bogus"],
                       capture_output=True, timeout=30)
    assert r.returncode == 2 and b"state must be" in r.stderr


def test_bounce_and_delete_many(postern, tmp_path):
    """A filtered bounce of many messages at once: a notice each, every
    one gone, the rest untouched; then a delete of the rest."""
    n = Node(postern, tmp_path)
    with RawClient(n.p.port, "127.0.0.10") as c:
        c.cmd("EHLO client.example")
        for i in range(150):
            assert c.cmd("MAIL FROM:<app%d@x.test>" % (i % 3)) == R_MAIL_OK
            assert c.cmd("RCPT TO:<r%d@one.test>" % i) == R_RCPT_OK
            assert c.cmd("DATA") == R_START_DATA
            c.send(b"Subject: many\r\n\r\nbody\r\n.\r\n")
            assert c.reply().startswith("250 2.6.0 ")
    n.wait_tried(150)
    rc, out = ctl(n.sock, "bounce", "all", "sender=app1@x.test")
    assert (rc, out) == (0, "bounced: 50\n")
    wait_until(lambda: len(n.dsns()) == 50, 20 * SLOW, what="50 notices")
    assert queue(n.sock, "sender=app1@x.test")["total"] == 0
    assert queue(n.sock)["total"] == 100
    rc, out = ctl(n.sock, "delete", "all")
    assert (rc, out) == (0, "deleted: 100\n")
    assert queue(n.sock)["total"] == 0
    time.sleep(0.5)
    assert len(n.dsns()) == 50


def test_drain_leaves_held_messages_held(postern, tmp_path):
    """A drain delivers everything but the held, then exits at once (not
    at drain_timeout), the held ones left in the spool, still held."""
    n = Node(postern, tmp_path)
    a = submit(n.p.port, "app@x.test", ["r@one.test"], "held")
    b = submit(n.p.port, "app@x.test", ["s@one.test"], "delivered")
    n.wait_tried(2)
    assert ctl(n.sock, "hold", a) == (0, "held: 1\n")
    with Sink(port=n.one) as sink:
        rc, out = ctl(n.sock, "drain")
        assert rc == 0, out
        assert n.p.wait_exit(20) == 0
        assert [m["rcpts"] for m in sink.messages] == [["s@one.test"]]
    err = n.p.stderr()
    assert ('event=drain status=done held=1 note="only held messages left: in the spool, '
            'held, for the next start"') in err, err[-2000:]
    n.p.stop()
    assert n.p.messages() == [a]
    n.p.stopped = False
    n.p.start()
    q = queue(n.sock)
    assert ids(q) == [a] and q["messages"][0]["state"] == "held", q
    assert b not in ids(q)
