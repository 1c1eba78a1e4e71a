"""Content rules (DESIGN B.9): Hyperscan patterns on the body (decoded from
dot-stuffing, base64 and quoted-printable), the header block, one header
field, the sender and the recipients; reject (550, the session goes on),
hold (stored, not delivered, across a restart), add_header (the field
reaches the next hop and the drop directory), route (to a send connector
without address spaces); precedence; externally_secured bypass; hit
counters in show stat and /metrics; the log line; FILE:LINE errors for bad
rules at --check and at reload (nothing changes)."""
import base64
import json
import os
import re
import subprocess
import time
import urllib.request

from sink import Sink
from conftest import (BUILD, R_MAIL_OK, R_QUIT, R_RCPT_OK, R_START_DATA, SLOW, Postern,
                      RawClient, assert_config_error, free_port, wait_until)
from test_delivery import events, wait_event

CTL = os.path.join(BUILD, "posternctl")


def reject_reply(rule):
    return "550 5.7.1 Message rejected by content rule %s" % rule


CONNECTORS = """receive_connectors = (
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ]; },
  { name = "Trusted"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.30" ]; permission_groups = [ "externally_secured" ]; }
);
"""

RULES = r"""content_rules = (
  { name = "no-executables"; where = "body"; pattern = "TVqQAAMAAAAEAAAA"; action = "reject"; },
  { name = "decoded-secret"; where = "body"; pattern = "(?i)project nightjar"; action = "reject"; },
  { name = "card-numbers"; where = "body"; pattern = "\\b4[0-9]{12}(?:[0-9]{3})?\\b"; action = "hold"; },
  { name = "stuffed-dot"; where = "body"; pattern = "^\\.hidden-line\\r$"; action = "reject"; },
  { name = "tag-confidential"; where = "header:Subject"; pattern = "(?i)confidential"; action = "add_header"; header = "X-Classification: confidential"; },
  { name = "tag-all"; where = "headers"; pattern = "^X-Mailer: batch"; action = "add_header"; header = "X-Batch: yes"; },
  { name = "legal-archive"; where = "header:To"; pattern = "@legal\\.corp\\.example"; action = "route"; send_connector = "Legal Archive"; },
  { name = "bad-sender"; where = "sender"; pattern = "^compromised@"; action = "reject"; },
  { name = "hold-rcpt"; where = "recipient"; pattern = "^audit@"; action = "hold"; }
);
"""


def config(sink_port, drop_dir, rules=RULES):
    return (CONNECTORS +
            'send_connectors = (\n'
            '  { name = "Out"; address_spaces = [ "*" ]; smart_hosts = [ "127.0.0.1:%d" ]; },\n'
            '  { name = "Legal Archive"; drop_directory = "%s"; }\n'
            ');\n'
            'queue = { retry_interval = "1s"; max_retry_interval = "2s"; };\n'
            % (sink_port, drop_dir) + rules)


def server_extra(tmp_path, metrics_port=None):
    extra = '  stats_socket = "%s";\n' % (tmp_path / "run" / "stats.sock")
    if metrics_port:
        extra += '  metrics_listen = "127.0.0.1:%d";\n' % metrics_port
    return extra


def send(c, body, sender="app@corp.example", rcpts=("ops@other.example",)):
    """One transaction on an open session; returns the reply to the end of
    data."""
    assert c.cmd("MAIL FROM:<%s>" % sender) == R_MAIL_OK
    for r in rcpts:
        assert c.cmd("RCPT TO:<%s>" % r) == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    c.send(body + b".\r\n")
    return c.reply()


def queued_id(reply):
    m = re.match(r"250 2\.6\.0 <([0-9A-F]+)> Queued mail for delivery$", reply)
    assert m, reply
    return m.group(1)


def ctl(tmp_path, *args):
    r = subprocess.run([CTL, "-s", str(tmp_path / "run" / "stats.sock")] + list(args),
                       capture_output=True, timeout=30)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def msg(subject, text, extra=""):
    return ("Subject: %s\r\n%sMessage-ID: <%s@client.example>\r\n\r\n%s"
            % (subject, extra, subject.replace(" ", "-"), text)).encode()


def exe_attachment():
    """A multipart message with a PE file attached in base64."""
    pe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(range(200))
    enc = base64.encodebytes(pe).replace(b"\n", b"\r\n")
    return (b"Subject: invoice\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"==b\"\r\n\r\n"
            b"--==b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            b"--==b\r\nContent-Type: application/octet-stream; name=\"invoice.exe\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + enc +
            b"--==b--\r\n")


def test_reject_and_session_goes_on(postern, tmp_path):
    with Sink() as sink:
        p = postern(config(sink.port, tmp_path / "legal"), server_extra=server_extra(tmp_path))
        with RawClient(p.port, "127.0.0.10") as c:
            c.cmd("EHLO client.example")
            # The DESIGN example: a base64-attached executable.
            assert send(c, exe_attachment()) == reject_reply("no-executables")
            # A rule on decoded text hits inside a base64 part ...
            secret = base64.b64encode(b"plans for Project NIGHTJAR attached").decode()
            body = ("Subject: s\r\nContent-Transfer-Encoding: base64\r\n\r\n%s\r\n"
                    % secret).encode()
            assert send(c, body) == reject_reply("decoded-secret")
            # ... and on a line the client had to dot-stuff.
            assert send(c, msg("dots", "fine\r\n..hidden-line\r\n")) == reject_reply(
                "stuffed-dot")
            assert send(c, msg("s", "x\r\n"), sender="compromised@corp.example") == \
                reject_reply("bad-sender")
            # RSET semantics: the next message on the session goes through.
            qid = queued_id(send(c, msg("harmless", "nothing to see\r\n")))
            assert c.cmd("QUIT") == R_QUIT
        wait_until(lambda: len(sink.messages) == 1, 10 * SLOW, what="one delivery")
        assert b"Subject: harmless\r\n" in sink.messages[0]["data"]
        # Refused messages were never stored: only the good one was queued.
        rejects = events(p, "reject", reason="content_rule")
        assert len(rejects) == 4, rejects
        hits = events(p, "content_rule")
        assert [(h["rule"], h["action"], h["where"]) for h in hits] == [
            ("no-executables", "reject", "body"), ("decoded-secret", "reject", "body"),
            ("stuffed-dot", "reject", "body"), ("bad-sender", "reject", "sender")], hits
        assert all(re.fullmatch(r"[0-9A-F]{16}", h["id"]) for h in hits), hits
        assert qid not in [h["id"] for h in hits]
        wait_event(p, "deliver", id=qid)


def test_hold_survives_restart_and_is_not_delivered(postern, tmp_path):
    with Sink() as sink:
        p = postern(config(sink.port, tmp_path / "legal"), server_extra=server_extra(tmp_path))
        with RawClient(p.port, "127.0.0.10") as c:
            c.cmd("EHLO client.example")
            # A card number split by a quoted-printable soft line break.
            held = queued_id(send(c, msg("order", "card 41111111=\r\n11111111 thanks\r\n",
                                         "Content-Transfer-Encoding: quoted-printable\r\n")))
            held_rcpt = queued_id(send(c, msg("audit", "x\r\n"),
                                       rcpts=("audit@other.example",)))
            free = queued_id(send(c, msg("plain", "x\r\n")))
        wait_event(p, "deliver", id=free)
        env = p.read_message(held)
        assert b"\r\nheld: card-numbers\r\n" in env, env[:400]
        assert b"\r\nheld: hold-rcpt\r\n" in p.read_message(held_rcpt)
        ctl(tmp_path, "flush")  # due now: still held
        time.sleep(2 * SLOW)
        assert len(sink.messages) == 1, [m["data"][:200] for m in sink.messages]
        assert events(p, "deliver", id=held) == []
        hits = events(p, "content_rule", action="hold")
        assert {(h["rule"], h["id"]) for h in hits} == {("card-numbers", held),
                                                         ("hold-rcpt", held_rcpt)}
        assert events(p, "receive", id=held)[0]["held"] == "card-numbers"
        assert "held" not in events(p, "receive", id=free)[0]
        p.stop()
        p.start()
        time.sleep(2 * SLOW)
        assert len(sink.messages) == 1
        assert held in p.messages() and held_rcpt in p.messages()
        assert events(p, "deliver") == []
        # show queue says why; release (the queue-control command) lets one go.
        rc, out, _ = ctl(tmp_path, "--json", "show", "queue", "state=held")
        assert rc == 0, out
        shown = {m["id"]: m["held_reason"] for m in json.loads(out)["messages"]}
        assert shown == {held: "card-numbers", held_rcpt: "hold-rcpt"}, out
        rc, out, _ = ctl(tmp_path, "release", held)
        assert (rc, out) == (0, "released: 1\n"), out
        wait_event(p, "deliver", id=held)
        assert len(sink.messages) == 2
        assert b"card 41111111=\r\n11111111" in sink.messages[1]["data"]
        # released is durable: a restart does not hold it again; the other
        # one stays held.
        p.stop()
        p.start()
        time.sleep(2 * SLOW)
        assert len(sink.messages) == 2
        assert held_rcpt in p.messages() and held not in p.messages()


def test_add_header_and_route(postern, tmp_path):
    legal = tmp_path / "legal"
    with Sink() as sink:
        p = postern(config(sink.port, legal), server_extra=server_extra(tmp_path))
        with RawClient(p.port, "127.0.0.10") as c:
            c.cmd("EHLO client.example")
            tagged = queued_id(send(c, msg("Quarterly CONFIDENTIAL numbers", "x\r\n",
                                           "X-Mailer: batch 1.0\r\n")))
            # Folded To: the field is unfolded before it is matched.
            routed = queued_id(send(c, msg("memo", "y\r\n",
                                           "To: Someone\r\n <counsel@legal.corp.example>\r\n"),
                                    rcpts=("counsel@legal.corp.example",)))
        wait_event(p, "deliver", id=tagged)
        data = sink.messages[0]["data"]
        assert data.startswith(b"X-Classification: confidential\r\nX-Batch: yes\r\n"
                               b"Received: from "), data[:300]
        assert data.count(b"X-Classification") == 1
        # Routed: into the drop directory, although "*" goes to the sink.
        wait_event(p, "deliver", id=routed)
        assert len(sink.messages) == 1
        names = os.listdir(legal)
        assert len(names) == 1 and names[0].startswith(routed), names
        for e in events(p, "deliver", id=routed):
            assert e["send_connector"] == "Legal Archive", e["_line"]
        assert events(p, "receive", id=routed)[0]["route"] == "Legal Archive"
        hits = {(h["rule"], h["where"]) for h in events(p, "content_rule")}
        assert hits == {("tag-confidential", "header:Subject"), ("tag-all", "headers"),
                        ("legal-archive", "header:To")}, hits


def test_route_and_header_survive_restart(postern, tmp_path):
    """Marks live in the envelope: a message queued before a restart is
    routed and tagged after it."""
    legal = tmp_path / "legal"
    dead = free_port()  # nothing listens: "*" defers
    p = postern(config(dead, legal).replace(
        'queue = { retry_interval = "1s"; max_retry_interval = "2s"; };',
        'queue = { hold = true; };'), server_extra=server_extra(tmp_path))
    with RawClient(p.port, "127.0.0.10") as c:
        c.cmd("EHLO client.example")
        qid = queued_id(send(c, msg("confidential memo", "z\r\n",
                                    "To: <a@legal.corp.example>\r\n")))
    env = p.read_message(qid)
    assert b"\r\nroute: Legal Archive\r\n" in env
    assert b"\r\nheader: X-Classification: confidential\r\n" in env
    p.stop()
    text = p.config.read_text().replace("queue = { hold = true; };",
                                        'queue = { retry_interval = "1s"; };')
    p.config.write_text(text)
    p.start()
    wait_event(p, "deliver", id=qid)
    names = os.listdir(legal)
    assert len(names) == 1, names
    data = (legal / names[0]).read_bytes()
    assert re.match(rb"X-Sender: <app@corp\.example>\r\nX-Receiver: <ops@other\.example>\r\n"
                    rb"X-Classification: confidential\r\nReceived: from ", data), data[:300]


def test_precedence_counters_and_bypass(postern, tmp_path):
    mport = free_port()
    with Sink() as sink:
        p = postern(config(sink.port, tmp_path / "legal"),
                    server_extra=server_extra(tmp_path, mport))
        both = msg("confidential", "card 4111111111111111\r\n" + "TVqQAAMAAAAEAAAA\r\n",
                   "To: <x@legal.corp.example>\r\n")
        with RawClient(p.port, "127.0.0.10") as c:
            c.cmd("EHLO client.example")
            # reject beats hold, route and add_header ...
            assert send(c, both) == reject_reply("no-executables")
            # ... hold beats route.
            held = queued_id(send(c, msg("confidential", "card 4111111111111111\r\n",
                                         "To: <x@legal.corp.example>\r\n")))
        env = p.read_message(held)
        assert b"held: card-numbers" in env and b"route:" not in env
        assert b"header: X-Classification: confidential" in env
        # externally_secured bypasses the rules altogether.
        with RawClient(p.port, "127.0.0.30") as c:
            c.cmd("EHLO trusted.example")
            trusted = queued_id(send(c, both))
        wait_event(p, "deliver", id=trusted)
        assert b"X-Classification" not in sink.messages[0]["data"]
        assert [h for h in events(p, "content_rule") if h["id"] == trusted] == []
        # Every hit counts, whichever action won.
        rc, out, err = ctl(tmp_path, "show", "stat")
        assert rc == 0, err
        rows = {l.split()[0]: l.split()[1:] for l in out.split("content rule", 1)[1]
                .strip().splitlines()[1:]}
        assert rows["no-executables"] == ["reject", "1"], out
        assert rows["card-numbers"] == ["hold", "2"], out
        assert rows["legal-archive"] == ["route", "2"], out
        assert rows["tag-confidential"] == ["add_header", "2"], out
        assert rows["bad-sender"] == ["reject", "0"], out
        rc, out, err = ctl(tmp_path, "--json", "show", "stat")
        assert rc == 0, err
        j = json.loads(out)
        cr = {r["name"]: r for r in j["content_rules"]}
        assert cr["card-numbers"]["hits"] == 2 and cr["card-numbers"]["action"] == "hold"
        assert cr["card-numbers"]["by_action"]["hold"] == 2
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport,
                                      timeout=10).read().decode()
        assert 'postern_content_rule_hits_total{rule="no-executables",action="reject"} 1\n' in text
        assert 'postern_content_rule_hits_total{rule="card-numbers",action="hold"} 2\n' in text
        assert 'postern_content_rule_hits_total{rule="bad-sender",action="reject"} 0\n' in text
        assert 'postern_messages_rejected_total{connector="Relay",reason="content_rule"} 1\n' \
            in text, [l for l in text.splitlines() if "rejected" in l]


def test_config_errors(tmp_path):
    legal = tmp_path / "legal"
    cases = [
        ('{ name = "broken"; where = "body"; pattern = "a(b"; action = "reject"; }',
         "rule broken: "),
        ('{ name = "r"; where = "subject"; pattern = "a"; action = "reject"; }',
         "rule r: where: \"subject\" is not body"),
        ('{ name = "r"; where = "body"; pattern = "a"; action = "route"; send_connector = "Nowhere"; }',
         "rule r: send_connector: no send connector \"Nowhere\""),
        ('{ name = "r"; where = "body"; pattern = "a"; action = "add_header"; }',
         "rule r: action add_header needs header"),
        ('{ name = "r"; where = "body"; pattern = "a"; action = "add_header"; header = "no colon"; }',
         "rule r: header:"),
        ('{ name = "r"; where = "body"; pattern = "a"; action = "quarantine"; }',
         "rule r: action: \"quarantine\""),
        ('{ name = "r"; where = "body"; pattern = "a"; action = "reject"; },\n'
         '  { name = "R"; where = "body"; pattern = "b"; action = "reject"; }',
         "rule R: the name is used twice"),
    ]
    for i, (rule, word) in enumerate(cases):
        pt = Postern(tmp_path, config(1, legal, "content_rules = (\n  %s\n);\n" % rule),
                     name="bad%d" % i)
        assert_config_error(pt, word)
    # The bad pattern's own line is named.
    pt = Postern(tmp_path, config(1, legal, 'content_rules = (\n'
                                  '  { name = "ok"; where = "body"; pattern = "a"; action = "reject"; },\n'
                                  '  { name = "broken"; where = "body";\n'
                                  '    pattern = "x{2,1}"; action = "reject"; }\n);\n'),
                 name="badline")
    r = subprocess.run([os.path.join(BUILD, "postern"), "-c", str(pt.config), "--check"],
                       capture_output=True, timeout=20 * SLOW)
    err = r.stderr.decode()
    lines = pt.config.read_text().splitlines()
    want = next(i for i, l in enumerate(lines, 1) if 'pattern = "x{2,1}"' in l)
    assert err.startswith("%s:%d: rule broken: " % (pt.config, want)), err
    # A send connector without address_spaces needs a route to it.
    pt = Postern(tmp_path, config(1, legal, ""), name="noroute")
    assert_config_error(pt, "address_spaces")


def test_bad_reload_changes_nothing(postern, tmp_path):
    with Sink() as sink:
        p = postern(config(sink.port, tmp_path / "legal"), server_extra=server_extra(tmp_path))
        good = p.config.read_text()
        p.config.write_text(good.replace('pattern = "TVqQAAMAAAAEAAAA"', 'pattern = "(unclosed"'))
        rc, out, err = ctl(tmp_path, "reload")
        assert rc != 0
        assert "rule no-executables: " in out + err, out + err
        with RawClient(p.port, "127.0.0.10") as c:
            c.cmd("EHLO client.example")
            assert send(c, exe_attachment()) == reject_reply("no-executables")
        # A good reload takes effect: the rule is gone.
        p.config.write_text(good.replace('pattern = "TVqQAAMAAAAEAAAA"', 'pattern = "ZZZZ-never"'))
        rc, out, err = ctl(tmp_path, "reload")
        assert rc == 0, out + err
        with RawClient(p.port, "127.0.0.10") as c:
            c.cmd("EHLO client.example")
            queued_id(send(c, exe_attachment()))


def test_added_header_over_outbound_tls(postern, tmp_path):
    """The added field goes through the cipher before the stored bytes
    (no sendfile under TLS)."""
    import tlsutil
    from tls_sink import TlsSink
    from test_delivery import RECEIVED
    (tmp_path / "pki").mkdir()
    pki = tlsutil.make_pki(tmp_path / "pki")
    sink = TlsSink(cert=pki.server.cert, key=pki.server.key, require_tls=True)
    p = None
    try:
        rules = ('content_rules = ( { name = "tag"; where = "header:Subject"; pattern = "outbound"; '
                 'action = "add_header"; header = "X-Tag: yes"; } );\n')
        p = postern(CONNECTORS + 'send_connectors = ( { name = "Smart"; address_spaces = [ "*" ]; '
                    'smart_hosts = [ "127.0.0.1:%d" ]; tls = "opportunistic"; } );\n'
                    'queue = { retry_interval = "1s"; };\n' % sink.port + rules)
        body = msg("outbound", "over TLS\r\n..dot\r\n")
        with RawClient(p.port, "127.0.0.10") as c:
            c.cmd("EHLO client.example")
            qid = queued_id(send(c, body))
        wait_event(p, "deliver", id=qid)
        [txn] = sink.snapshot()
        assert txn["tls"], txn
        assert txn["data"].startswith(b"X-Tag: yes\r\n"), txn["data"][:200]
        rest = txn["data"][len(b"X-Tag: yes\r\n"):]
        m = RECEIVED.match(rest)
        assert m, rest[:300]
        assert rest[m.end():] == body
    finally:
        if p:
            p.stop()  # before its next hop goes
        sink.close()


def bdat_chunks(chunks):
    out = b""
    for i, ch in enumerate(chunks):
        out += b"BDAT %d%s\r\n" % (len(ch), b" LAST" if i == len(chunks) - 1 else b"") + ch
    return out


def test_rules_on_bdat_chunks_and_outbound_bdat_with_added_header(postern, tmp_path):
    """BDAT bytes are the message as it is (no dot-stuffing to undo), a
    pattern split across chunks still matches, and a header a rule adds is
    part of the one outbound BDAT chunk (its size counts it)."""
    with Sink(chunking=True) as sink:
        p = postern(config(sink.port, tmp_path / "legal"), server_extra=server_extra(tmp_path))
        with RawClient(p.port, "127.0.0.10") as c:
            c.cmd("EHLO client.example")

            def bdat_send(chunks):
                assert c.cmd("MAIL FROM:<app@corp.example>") == R_MAIL_OK
                assert c.cmd("RCPT TO:<ops@other.example>") == R_RCPT_OK
                c.send(bdat_chunks(chunks))
                return c.replies(len(chunks))
            # A line beginning with a dot, sent raw: the same rule as DATA's
            # "..hidden-line" hits it.
            first = b"Subject: dots\r\n\r\nfine\r\n"
            r = bdat_send([first, b".hidden-line\r\nend\r\n"])
            assert r == ["250 2.0.0 %d bytes received" % len(first),
                         reject_reply("stuffed-dot")], r
            # The decoded-text rule, its words split between two chunks.
            r = bdat_send([b"Subject: s\r\n\r\nplans for Project NIGH", b"TJAR inside\r\n"])
            assert r[-1] == reject_reply("decoded-secret"), r
            # Tagged by a rule, relayed by BDAT to a CHUNKING next hop.
            body = [b"Subject: Quarterly CONFIDENTIAL numbers\r\n", b"\r\nx\r\n"]
            r = bdat_send(body)
            qid = queued_id(r[-1])
            assert c.cmd("QUIT") == R_QUIT
        wait_event(p, "deliver", id=qid)
        [txn] = sink.snapshot()
        assert txn["via"] == "BDAT", txn
        data = txn["data"]
        assert data.startswith(b"X-Classification: confidential\r\nReceived: from "), data[:200]
        assert data.endswith(b"".join(body))
        assert txn["chunks"] == [len(data)]
        assert sink.commands("BDAT") == ["BDAT %d LAST" % len(data)]
        assert [(h["rule"], h["action"]) for h in events(p, "content_rule")] == [
            ("stuffed-dot", "reject"), ("decoded-secret", "reject"),
            ("tag-confidential", "add_header")]
