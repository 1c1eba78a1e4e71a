"""Log lines cannot be forged (issue 17): every value a client or a next hop
controls (sender, recipient, HELO/EHLO name, AUTH user name, reply texts of
next hops) and the connector names of the configuration reach the log as
one logfmt value. Every line postern writes is parsed with a strict logfmt
parser (key=bare or key="quoted" with \\" \\\\ and \\xHH escapes only, one space
between fields, no key twice), and the fields that carry such values must
decode to exactly what was sent."""
import base64
import re

from conftest import R_MAIL_OK, R_QUIT, R_RCPT_OK, R_START_DATA, RawClient, wait_until
from sink import Sink

FIELD = re.compile(
    rb'([a-z_][a-z0-9_]*)='
    rb'("(?:[^"\\\x00-\x1f\x7f-\xff]|\\["\\]|\\x[0-9a-f]{2})*"'
    rb'|[\x21\x23-\x3c\x3e-\x5b\x5d-\x7e]+)')
ESCAPE = re.compile(rb'\\(["\\]|x[0-9a-f]{2})')


def decode(value):
    """The bytes a logfmt value stands for."""
    if not value.startswith(b'"'):
        return value
    return ESCAPE.sub(lambda m: m.group(1) if len(m.group(1)) == 1
                      else bytes([int(m.group(1)[1:], 16)]), value[1:-1])


def parse_line(line):
    """A dict of the line's fields (values decoded); fails on anything that
    is not strict logfmt or names a key twice."""
    fields, pos = {}, 0
    while True:
        m = FIELD.match(line, pos)
        assert m, "not logfmt at byte %d: %r" % (pos, line)
        key = m.group(1).decode()
        assert key not in fields, "key %s twice in %r" % (key, line)
        fields[key] = decode(m.group(2))
        pos = m.end()
        if pos == len(line):
            return fields
        assert line[pos:pos + 1] == b" " and line[pos + 1:pos + 2] not in (b" ", b""), \
            "no single space after %s= in %r" % (key, line)
        pos += 1


def test_parser_is_strict():
    """The parser itself: what it must refuse, and what it decodes."""
    assert parse_line(b'a=1 b="x \\"y\\" \\\\ \\x0a" c=<d@e>') == \
        {"a": b"1", "b": b'x "y" \\ \n', "c": b"<d@e>"}
    for bad in [b'a=1 a=2', b'a=1  b=2', b'a=1 ', b'a="x', b'a="x"y', b'a=x"y',
                b'a=', b'a=b=c', b'a="\\n"', b'a="\\x0A"', b'a="\x01"', b'a=\xc3\xa9',
                b'A=1', b'a=1 b', b'a=1\nb=2']:
        try:
            parse_line(bad)
        except AssertionError:
            continue
        raise AssertionError("parsed %r" % bad)


# Connector names with a quote, a backslash and "=": they are values too.
RELAY_NAME = 'Relay \\"Q\\" \\\\ x=1'   # libconfig text; the name is: Relay "Q" \ x=1
RELAY_NAME_BYTES = b'Relay "Q" \\ x=1'

CONNECTORS = """receive_connectors = (
  { name = "%s";
    bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.10" ];
    permission_groups = [ "anonymous_relay", "authenticated" ];
    protocol_log = true;
    auth_users_file = "{users}"; allow_auth_without_tls = true; max_logon_failures = 10;
  },
  { name = "Default Frontend";
    bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "0.0.0.0/0" ];
    permission_groups = [ "anonymous" ];
    protocol_log = true;
  }
);
send_connectors = ( { name = "Smart"; address_spaces = [ "*" ];
                      smart_hosts = [ "127.0.0.1:{sink}" ]; } );
queue = { retry_interval = "1s"; max_retry_interval = "2s"; };
""" % RELAY_NAME

# Valid paths (RFC 5321 quoted local parts, atext with "=") that read like
# fields and lines of their own.
SENDERS = [
    '"x> status=2.0.0 to=y"@a.test',
    '"a\\"b\\\\c level=error\\" x"@a.test',
    'id=1@a.test',
]
RCPTS = [
    '"y> reason=relay from=<z"@other.example',
    '"\\" ts=2026-01-01T00:00:00.000Z level=error event=forged \\""@corp.example',
    'c=d@other.example',
]
REFUSED_RCPT = '"r> reason=none worker=9"@other.example'
EHLO_NAME = '[x-tag:"=a"level=error<b>"]'
AUTH_USERS = [
    'u" result=ok user=admin',
    'v\r\nts=2026-01-01T00:00:00.000Z level=info event=auth result=ok',
    'w\x1b[31m\xc3\xa9\\',
]
# A next hop's reply text with quotes, "=", an escape sequence and UTF-8.
HOSTILE_REPLY = '550 5.1.1 no" status=2.0.0 relay=x \\ \x1b[0m \u00e9 to=<forged@x>'


def rcpt_reply(addr, line):
    return HOSTILE_REPLY if line.upper().startswith("RCPT TO:<C=D@") else None


def test_no_value_adds_a_field_or_a_line(postern, tmp_path):
    users = tmp_path / "users"
    users.write_text("# nobody\n")
    with Sink(rcpt_reply=rcpt_reply) as sink:
        p = postern(CONNECTORS.replace("{users}", str(users)).replace("{sink}", str(sink.port)))
        ids = []
        with RawClient(p.port, "127.0.0.10") as c:
            r = c.cmd("EHLO " + EHLO_NAME)
            assert r[0].startswith("250-"), r
            for user in AUTH_USERS:
                resp = base64.b64encode(b"\0" + user.encode("latin-1") + b"\0pw").decode()
                assert c.cmd("AUTH PLAIN " + resp) == "535 5.7.8 Authentication credentials invalid"
            for s in SENDERS:
                assert c.cmd("MAIL FROM:<%s>" % s) == R_MAIL_OK, s
                for rc in RCPTS:
                    assert c.cmd("RCPT TO:<%s>" % rc) == R_RCPT_OK, rc
                assert c.cmd("DATA") == R_START_DATA
                c.send(b"Subject: forging\r\n\r\nbody\r\n.\r\n")
                m = re.fullmatch(r"250 2\.6\.0 <([0-9A-F]{16})> Queued mail for delivery",
                                 c.reply())
                assert m
                ids.append(m.group(1))
            assert c.cmd("QUIT") == R_QUIT
        with RawClient(p.port, "127.0.0.50") as c:
            assert c.cmd("EHLO client.example")[0].startswith("250-")
            assert c.cmd("MAIL FROM:<%s>" % SENDERS[0]) == R_MAIL_OK
            assert c.cmd("RCPT TO:<%s>" % REFUSED_RCPT) == "550 5.7.1 Unable to relay"
            assert c.cmd("QUIT") == R_QUIT
        # Each message: two recipients delivered, c=d refused by the next
        # hop (a bounce, whose notice to the sender is delivered too).
        wait_until(lambda: p.stderr().count(" event=bounce ") >= len(SENDERS) and
                   p.stderr().count(" event=deliver ") >= 3 * len(SENDERS), 30,
                   what="deliveries and bounces")
        p.stop()

    lines = [parse_line(ln) for ln in p.stderr_path.read_bytes().split(b"\n") if ln]
    assert lines
    for f in lines:
        assert list(f)[:3] == ["ts", "level", "event"], f

    def of(event, **match):
        return [f for f in lines if f["event"] == event.encode() and
                all(f.get(k) == v for k, v in match.items())]

    relay = RELAY_NAME_BYTES
    # Received: sender and recipients exactly.
    rcv = of("receive")
    assert [f["id"].decode() for f in rcv] == ids
    for f, s in zip(rcv, SENDERS):
        assert f["from"] == b"<%s>" % s.encode()
        assert f["to"] == b",".join(b"<%s>" % r.encode() for r in RCPTS)
        assert f["connector"] == relay
        assert f["nrcpt"] == b"3"
    # The refused recipient.
    rej = of("reject", reason=b"relay")
    assert len(rej) == 1
    assert rej[0]["from"] == b"<%s>" % SENDERS[0].encode()
    assert rej[0]["to"] == b"<%s>" % REFUSED_RCPT.encode()
    assert rej[0]["reply"] == b"550 5.7.1 Unable to relay"
    assert rej[0]["connector"] == b"Default Frontend"
    # The protocol log: the EHLO name and the commands as sent.
    cmds = [f["line"] for f in of("smtp", dir=b"in", connector=relay)]
    assert b"EHLO " + EHLO_NAME.encode() in cmds
    for s in SENDERS:
        assert b"MAIL FROM:<%s>" % s.encode() in cmds
    for r in RCPTS:
        assert b"RCPT TO:<%s>" % r.encode() in cmds
    # AUTH user names.
    auth = of("auth", result=b"failed")
    assert [f["user"] for f in auth] == [u.encode("latin-1") for u in AUTH_USERS]
    # Deliveries and bounces: envelope, and the next hop's reply exactly.
    for s in SENDERS:
        sender = b"<%s>" % s.encode()
        dl = [f for f in of("deliver") if f["from"] == sender]
        assert sorted(f["to"] for f in dl) == sorted(r.encode() for r in RCPTS[:2])
        bo = [f for f in of("bounce") if f["from"] == sender]
        assert len(bo) == 1, bo
        assert bo[0]["to"] == RCPTS[2].encode()
        # as postern keeps it: the client makes control bytes spaces
        assert bo[0]["reply"] == re.sub(r"[\x00-\x1f\x7f]", " ", HOSTILE_REPLY).encode()
        assert bo[0]["send_connector"] == b"Smart"
        dsn = [f for f in of("dsn", kind=b"bounce") if f["to"] == sender]
        assert len(dsn) == 1, dsn
