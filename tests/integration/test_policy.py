"""Sender policy, recipient validation and accepted-domain types (DESIGN
B.9): an anonymous client may not send as our authoritative domains; an
authoritative domain with a recipients_file refuses unknown recipients at
RCPT (re-read on reload); internal_relay/external_relay domains skip both
checks and are relayed to their send connector; a bounce to a message from
an anonymous session carries headers only, whatever RET says."""
import os
import signal

from sink import Sink
from conftest import (R_MAIL_OK, R_QUIT, R_RCPT_OK, R_START_DATA, R_UNABLE_TO_RELAY, free_port,
                      wait_until)
from test_delivery import (Dsn, check_dsn_envelope, drop, events, sinks, submit,  # noqa: F401
                           wait_dsns, wait_event, simple_body, smart)
from test_tls import ctl

R_SENDER_DENIED = "550 5.7.1 Client does not have permissions to send as this sender"
R_NOT_FOUND = ("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by "
               "SMTP address lookup")

CONNECTORS = """receive_connectors = (
  { name = "Default Frontend"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "0.0.0.0-255.255.255.255" ]; permission_groups = [ "anonymous" ]; },
  { name = "Anonymous Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.10" ]; permission_groups = [ "anonymous_relay" ]; }
);
"""


def domains(rcpts_file=None):
    rf = ' recipients_file = "%s";' % rcpts_file if rcpts_file else ""
    return """accepted_domains = (
  { domain = "corp.example"; type = "authoritative";%s },
  { domain = "*.corp.example"; },
  { domain = "partner.example"; type = "internal_relay"; },
  { domain = "outside.example"; type = "external_relay"; }
);
""" % rf


def metric_of(tmp_path, reason, connector):
    rc, out = ctl(tmp_path / "stats.sock", "show", "metrics")
    assert rc == 0, out
    want = ('postern_messages_rejected_total{connector="%s",reason="%s"} '
            % (connector, reason))
    for line in out.splitlines():
        if line.startswith(want):
            return int(line[len(want):])
    raise AssertionError("no %s in metrics" % want)


def start(postern, tmp_path, connectors=CONNECTORS, rcpts_file=None):
    return postern(connectors, domains=domains(rcpts_file),
                   server_extra='  stats_socket = "%s";\n' % (tmp_path / "stats.sock"))


def test_anonymous_may_not_send_as_an_authoritative_domain(postern, smtp_raw, tmp_path):
    p = start(postern, tmp_path)
    c = smtp_raw(p.port, "127.0.0.50")
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<ceo@corp.example>") == R_SENDER_DENIED
    assert c.cmd("MAIL FROM:<CEO@Corp.EXAMPLE> SIZE=100") == R_SENDER_DENIED
    assert c.cmd("MAIL FROM:<x@eu.corp.example>") == R_SENDER_DENIED
    # a refused MAIL leaves no transaction: RCPT is out of sequence
    assert c.cmd("RCPT TO:<x@corp.example>") == "503 5.5.1 Bad sequence of commands"
    # relay-type domains are not ours to vouch for; the null sender is fine
    for sender in ("x@partner.example", "x@outside.example", "x@other.example", ""):
        assert c.cmd("MAIL FROM:<%s>" % sender) == R_MAIL_OK, sender
        assert c.cmd("RSET") == "250 2.0.0 Resetting"
    assert c.cmd("QUIT") == R_QUIT
    # a client with a relay right may
    r = smtp_raw(p.port, "127.0.0.10")
    r.cmd("EHLO app.example")
    assert r.cmd("MAIL FROM:<ceo@corp.example>") == R_MAIL_OK
    assert r.cmd("QUIT") == R_QUIT
    assert metric_of(tmp_path, "sender_permission", "Default Frontend") == 3
    assert metric_of(tmp_path, "sender_permission", "Anonymous Relay") == 0
    rej = events(p, "reject", reason="sender_permission")
    assert len(rej) == 3 and rej[0]["reply"] == R_SENDER_DENIED, rej


def write_list(path, lines):
    tmp = str(path) + ".new"
    with open(tmp, "w") as f:
        f.write("".join(l + "\n" for l in lines))
    os.rename(tmp, path)


def rcpt_replies(port, source, addrs, smtp_raw):
    c = smtp_raw(port, source)
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<app@other.example>") == R_MAIL_OK
    out = [c.cmd("RCPT TO:<%s>" % a) for a in addrs]
    assert c.cmd("QUIT") == R_QUIT
    return out


def test_recipients_file_refuses_unknown_and_is_reread_on_reload(postern, smtp_raw, tmp_path):
    lst = tmp_path / "corp-recipients"
    write_list(lst, ["# from the directory", "CEO@corp.example", "  alice@corp.example ",
                     "*@sales.corp.example"])
    p = start(postern, tmp_path, rcpts_file=lst)
    addrs = ["ceo@corp.example", "Alice@CORP.example", "mallory@corp.example",
             "anyone@sales.corp.example", "anyone@eu.corp.example", "x@partner.example",
             "x@outside.example", "x@other.example"]
    assert rcpt_replies(p.port, "127.0.0.50", addrs, smtp_raw) == [
        R_RCPT_OK, R_RCPT_OK, R_NOT_FOUND, R_RCPT_OK, R_RCPT_OK, R_RCPT_OK, R_RCPT_OK,
        R_UNABLE_TO_RELAY]
    # a relay right does not make an unknown address of ours exist
    assert rcpt_replies(p.port, "127.0.0.10", ["mallory@corp.example", "x@other.example"],
                        smtp_raw) == [R_NOT_FOUND, R_RCPT_OK]
    assert metric_of(tmp_path, "unknown_recipient", "Default Frontend") == 1
    assert metric_of(tmp_path, "unknown_recipient", "Anonymous Relay") == 1

    write_list(lst, ["ceo@corp.example", "mallory@corp.example"])
    p.signal(signal.SIGHUP)
    wait_event(p, "reload", status="ok")
    assert rcpt_replies(p.port, "127.0.0.50", ["mallory@corp.example", "alice@corp.example"],
                        smtp_raw) == [R_RCPT_OK, R_NOT_FOUND]

    # a bad list, or none, is refused and the running configuration stays
    write_list(lst, ["ceo@corp.example", "not an address", "bob@corp.example"])
    p.signal(signal.SIGHUP)
    failed = wait_event(p, "reload", status="failed")
    assert "recipients_file" in failed[0]["error"] and ":2: " in failed[0]["error"], failed
    os.unlink(lst)
    rc, out = ctl(tmp_path / "stats.sock", "reload")
    assert rc == 1 and "No such file or directory" in out, (rc, out)
    wait_event(p, "reload", status="failed", count=2)
    assert rcpt_replies(p.port, "127.0.0.50", ["mallory@corp.example", "bob@corp.example"],
                        smtp_raw) == [R_RCPT_OK, R_NOT_FOUND]


def test_check_names_domain_types(tmp_path):
    from conftest import Postern, check_config
    lst = tmp_path / "list"
    write_list(lst, ["a@corp.example", "*@x.corp.example"])
    pt = Postern(tmp_path, CONNECTORS + 'send_connectors = ( { name = "Partner"; '
                 'address_spaces = [ "partner.example" ]; smart_hosts = [ "127.0.0.1:9" ]; },\n'
                 '  { name = "Internet"; address_spaces = [ "*" ]; } );\n',
                 domains=domains(lst))
    r = check_config(pt)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert "corp.example authoritative recipients_file=%s (2 entries" % lst in out, out
    assert 'partner.example internal_relay (relayed to send connector "Partner"' in out, out
    assert 'outside.example external_relay (relayed to send connector "Internet"' in out, out


def test_bounce_to_an_anonymous_sender_carries_headers_only(sinks, postern, tmp_path):
    """Backscatter: the content of a message an anonymous client sent in
    someone's name never goes back to that someone, even with RET=FULL."""
    sink = sinks(Sink, rcpt_reply=lambda addr, line: "550 5.1.1 no such mailbox")
    dropdir = tmp_path / "dsn"
    p = postern(CONNECTORS + "send_connectors = (\n  %s,\n  %s\n);\n"
                'queue = { retry_interval = "1s"; };\n'
                % (smart("Corp", ["corp.example"], sink.port), drop("Drop", ["drop.test"], dropdir)),
                domains='accepted_domains = ( { domain = "corp.example"; } );\n')
    body = simple_body("forged", "the secret body text\r\n")
    anon = submit(p.port, "victim@drop.test", ["x@corp.example"], body, " RET=FULL",
                  source="127.0.0.50")
    (dsn,) = wait_dsns(dropdir, 1)
    check_dsn_envelope(dsn, "victim@drop.test")
    assert dsn.returned.get_content_type() == "text/rfc822-headers"
    assert dsn.returned_headers()["Subject"] == "forged"
    assert b"the secret body text" not in dsn.body
    assert len(events(p, "dsn", kind="bounce", id=anon)) == 1
    # the same from a client with a relay right comes back whole
    full = submit(p.port, "victim@drop.test", ["x@corp.example"], body, " RET=FULL",
                  source="127.0.0.10")
    wait_event(p, "dsn", kind="bounce", id=full)
    dsns = wait_dsns(dropdir, 2)
    kinds = sorted(d.returned.get_content_type() for d in dsns)
    assert kinds == ["message/rfc822", "text/rfc822-headers"], kinds


def test_relay_domains_go_to_their_send_connector(sinks, postern, smtp_raw, tmp_path):
    """internal_relay: an anonymous client's mail for it is accepted without
    a recipient check and relayed to the send connector that covers it."""
    partner = sinks(Sink)
    lst = tmp_path / "corp"
    write_list(lst, ["ceo@corp.example"])
    p = postern(CONNECTORS + "send_connectors = (\n  %s,\n  %s\n);\n"
                'queue = { retry_interval = "1s"; };\n'
                % (smart("Partner", ["partner.example"], partner.port),
                   smart("Rest", ["*"], free_port())),
                domains=domains(lst))
    qid = submit(p.port, "app@host.example", ["anyone@partner.example"],
                 simple_body("to partner"), source="127.0.0.50")
    ev = wait_event(p, "deliver", id=qid)
    assert ev[0]["send_connector"] == "Partner", ev
    wait_until(lambda: partner.count() == 1, 5, what="the message at the partner's next hop")
    assert partner.snapshot()[0]["rcpts"] == ["anyone@partner.example"]
