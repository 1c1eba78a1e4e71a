"""Mail loops end fast (DESIGN B.6): a next hop that is ourselves -- a smart
host or MX target that is one of our own listening addresses, or a server
whose greeting or EHLO reply names our server.hostname -- is never
delivered to. Its recipients are deferred with
"451 4.4.6 mail for <domain> loops back to myself" and bounced with
"554 5.4.6 ..." at the message's third attempt (outconn.h:
OUTCONN_LOOP_ATTEMPTS), never relayed round until the hop count runs out.
A looping target among others is skipped. <Postmaster> is accepted from
anyone (RFC 5321 4.5.1), routed by server.hostname through the send
connectors and sent on as Postmaster@<hostname>; when that route is
ourselves it bounces like any loop."""
import socket

import pytest

from conftest import (HOSTNAME, R_QUIT, R_RCPT_OK, TWO_CONNECTORS, RawClient, free_port,
                      free_wildcard_port, wait_until)
from sink import Sink
from test_delivery import (FAST_QUEUE, Dsn, check_dsn_envelope, drop, event_lines, events,
                           queued, send_message, simple_body, submit, wait_dsns, wait_event)

LOOP_TEXT = "mail for %s loops back to myself"


def relay_config(binding, smart_hosts, dropdir, spaces='"*"', frontend=""):
    """One relay connector on binding, "Out" for spaces through smart_hosts,
    DSNs to drop.test in dropdir."""
    return ('receive_connectors = (\n%s'
            '  { name = "Relay"; bindings = [ "%s" ];\n'
            '    remote_ip_ranges = [ "127.0.0.10" ];\n'
            '    permission_groups = [ "anonymous_relay" ]; }\n);\n'
            'send_connectors = (\n'
            '  { name = "Out"; address_spaces = [ %s ]; smart_hosts = [ %s ]; },\n'
            '  %s\n);\n'
            'queue = { %s };\n'
            % (frontend, binding, spaces, ", ".join('"%s"' % h for h in smart_hosts),
               drop("Drop", ["drop.test"], dropdir), FAST_QUEUE))


def check_loop_bounce(p, dropdir, qid, rcpt, domain):
    """Two deferrals with the loop's text, the bounce at the third attempt,
    its DSN to the sender with 5.4.6; then the queue is empty."""
    b = wait_event(p, "bounce", timeout=20, id=qid)[0]
    assert b["status"] == "5.4.6", b["_line"]
    assert b["reply"] == "554 5.4.6 " + LOOP_TEXT % domain, b["_line"]
    assert b["attempts"] == "3", b["_line"]
    defers = events(p, "defer", id=qid)
    assert [d["status"] for d in defers] == ["4.4.6", "4.4.6"], "\n".join(event_lines(p))
    assert all(d["reply"] == "451 4.4.6 " + LOOP_TEXT % domain for d in defers), \
        [d["_line"] for d in defers]
    assert [d["attempts"] for d in defers] == ["1", "2"]
    (dsn,) = wait_dsns(dropdir, 1)
    check_dsn_envelope(dsn, "s@drop.test")
    r = dsn.rcpt(rcpt)
    assert r["Action"] == "failed"
    assert r["Status"] == "5.4.6"
    assert "5.4.6 " + LOOP_TEXT % domain in Dsn.field(r, "Diagnostic-Code"), \
        r["Diagnostic-Code"]
    wait_until(lambda: queued(p) == [], 5, what="postern-spool list to be empty")


def check_never_to_ourselves(p, client="127.0.0.10"):
    """Our receive side saw the test's own client and message only: one
    message received, and no connection once it was (the harness's probes
    for the port come before; every attempt after)."""
    lines = event_lines(p)
    received = [i for i, l in enumerate(lines) if " event=receive " in l]
    assert len(received) == 1 and "client=%s " % client in lines[received[0]], \
        "\n".join(lines)
    assert [l for l in lines[received[0]:] if " event=connect " in l] == [], "\n".join(lines)


def local_ipv4():
    """A non-loopback address of this machine (the source of a route to
    TEST-NET-2; nothing is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))
            a = s.getsockname()[0]
        except OSError:
            return None
    return None if a.startswith("127.") or a == "0.0.0.0" else a


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# (binding, smart host, wildcard port needed); "{port}" is the relay's port.
OWN_ADDRESSES = {
    "the binding itself": ("127.0.0.1:{port}", "127.0.0.1:{port}", False),
    "0.0.0.0, loopback": ("0.0.0.0:{port}", "127.0.0.1:{port}", True),
    "0.0.0.0, elsewhere in 127/8": ("0.0.0.0:{port}", "127.0.0.2:{port}", True),
    "[::], ::1": ("[::]:{port}", "[::1]:{port}", True),
    "[::], an interface's IPv4": ("[::]:{port}", "LOCAL4:{port}", True),
}


@pytest.mark.parametrize("case", list(OWN_ADDRESSES))
def test_smart_host_that_is_our_own_listener(postern, tmp_path, case):
    binding, host, wildcard = OWN_ADDRESSES[case]
    if "LOCAL4" in host:
        addr = local_ipv4()
        if not addr:
            pytest.skip("no non-loopback IPv4 address here")
        host = host.replace("LOCAL4", addr)
    if "::" in binding and not ipv6_loopback():
        pytest.skip("no IPv6 here")
    port = free_wildcard_port() if wildcard else free_port()
    dropdir = tmp_path / "dsn"
    host = host.replace("{port}", str(port))
    p = postern(relay_config(binding, [host], dropdir), ports=[port])
    qid = submit(p.port, "s@drop.test", ["r@other.test"], simple_body("loop " + case))
    check_loop_bounce(p, dropdir, qid, "r@other.test", "other.test")
    loops = events(p, "loop")
    assert loops, "\n".join(event_lines(p))
    assert all(e["reason"] == "one of our own listening addresses" for e in loops), loops
    assert loops[0]["targets_left"] == "0", loops[0]["_line"]
    check_never_to_ourselves(p)


def test_our_own_listener_among_smart_hosts_is_skipped(postern, tmp_path):
    """The other smart host takes the message; no deferral, no bounce."""
    port = free_port()
    dropdir = tmp_path / "dsn"
    with Sink() as sink:
        p = postern(relay_config("127.0.0.1:{port}",
                                 ["127.0.0.1:%d" % port, "127.0.0.1:%d" % sink.port], dropdir),
                    ports=[port])
        qid = submit(p.port, "s@drop.test", ["r@other.test"], simple_body("skip us"))
        e = wait_event(p, "deliver", id=qid)[0]
        assert e["relay"] == "[127.0.0.1]:%d" % sink.port, e["_line"]
        assert events(p, "defer") == [] and events(p, "bounce") == []
        (loop,) = events(p, "loop")
        assert loop["targets_left"] == "1", loop["_line"]
        assert len(sink.messages) == 1
        check_never_to_ourselves(p)
        p.stop()


class GreetsAsUs(Sink):
    """A next hop calling itself by the relay's own hostname."""
    greeting = "220 %s ESMTP" % HOSTNAME


class EhloAsUs(Sink):
    """... in its EHLO reply only."""

    def extra_command(self, c, line):
        if line[:4].upper() != "EHLO":
            return False
        c.say("250-%s Hello\r\n250 PIPELINING" % HOSTNAME.upper())
        return True


@pytest.mark.parametrize("cls,where", [(GreetsAsUs, "greeting"), (EhloAsUs, "EHLO reply")])
def test_next_hop_that_names_our_hostname(postern, tmp_path, cls, where):
    dropdir = tmp_path / "dsn"
    with cls() as sink:
        p = postern(relay_config("127.0.0.1:{port}", ["127.0.0.1:%d" % sink.port], dropdir))
        qid = submit(p.port, "s@drop.test", ["r@other.test"], simple_body("names us"))
        check_loop_bounce(p, dropdir, qid, "r@other.test", "other.test")
        loops = events(p, "loop")
        assert len(loops) == 3, "\n".join(event_lines(p))
        assert all(e["reason"] == "The next hop's %s names our own hostname %s"
                   % (where, HOSTNAME) for e in loops), [e["_line"] for e in loops]
        # Nothing after the greeting (or EHLO): no transaction, ever.
        assert sink.commands("MAIL") == [] and sink.messages == []
        assert len(sink.commands("EHLO")) == (3 if cls is EhloAsUs else 0)
        check_never_to_ourselves(p)
        p.stop()


def test_next_hop_that_names_us_then_a_healthy_one(postern, tmp_path):
    dropdir = tmp_path / "dsn"
    with GreetsAsUs() as us, Sink() as ok:
        p = postern(relay_config("127.0.0.1:{port}",
                                 ["127.0.0.1:%d" % us.port, "127.0.0.1:%d" % ok.port], dropdir))
        qid = submit(p.port, "s@drop.test", ["r@other.test"], simple_body("then healthy"))
        e = wait_event(p, "deliver", id=qid)[0]
        assert e["relay"] == "[127.0.0.1]:%d" % ok.port, e["_line"]
        assert len(events(p, "loop")) == 1
        assert events(p, "defer") == [] and events(p, "bounce") == []
        assert us.lines == [] and len(ok.messages) == 1
        p.stop()


# ---------------------------------------------------------------------------
# <Postmaster>

# An anonymous frontend for everyone (no relay right) beside "Relay".
FRONTEND = ('  { name = "Frontend"; bindings = [ "127.0.0.1:{port}" ];\n'
            '    remote_ip_ranges = [ "0.0.0.0-255.255.255.255" ];\n'
            '    permission_groups = [ "anonymous" ]; },\n')


def postmaster_from_anyone(port, sender="s@drop.test"):
    """<Postmaster> from a client without relay rights (127.0.0.50 gets the
    frontend): accepted."""
    with RawClient(port, "127.0.0.50") as c:
        c.cmd("EHLO client.example")
        qid = send_message(c, sender, ["Postmaster"], simple_body("for the postmaster"))
        assert c.cmd("QUIT") == R_QUIT
    return qid


def test_postmaster_goes_out_qualified_by_our_hostname(postern, tmp_path):
    """Routed by server.hostname: the send connector for it gets
    RCPT TO:<Postmaster@hostname>, so the next hop does not take it for
    its own postmaster."""
    dropdir = tmp_path / "dsn"
    with Sink() as sink:
        p = postern(relay_config("127.0.0.1:{port}", ["127.0.0.1:%d" % sink.port], dropdir,
                                 spaces='"%s"' % HOSTNAME, frontend=FRONTEND))
        qid = postmaster_from_anyone(p.port)
        e = wait_event(p, "deliver", id=qid)[0]
        assert e["send_connector"] == "Out", e["_line"]
        assert sink.commands("RCPT") == ["RCPT TO:<Postmaster@%s>" % HOSTNAME]
        # It is no way to relay elsewhere: another domain is refused.
        with RawClient(p.port, "127.0.0.50") as c:
            c.cmd("EHLO client.example")
            c.cmd("MAIL FROM:<s@drop.test>")
            assert c.cmd("RCPT TO:<x@other.test>").startswith("550 "), "relayed for anyone"
            assert c.cmd("RCPT TO:<postmaster@other.test>").startswith("550 ")
        p.stop()


def test_postmaster_routed_back_to_ourselves_bounces(postern, tmp_path):
    """server.hostname's route is our own listener: the loop ends at the
    third attempt with a bounce to the sender, never a round trip."""
    port = free_port()
    dropdir = tmp_path / "dsn"
    p = postern(relay_config("127.0.0.1:{port}", ["127.0.0.1:%d" % port], dropdir,
                             frontend=FRONTEND), ports=[port])
    qid = postmaster_from_anyone(p.port)
    check_loop_bounce(p, dropdir, qid, "Postmaster", HOSTNAME)
    check_never_to_ourselves(p, "127.0.0.50")
