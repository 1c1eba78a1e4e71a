"""Delivery by MX lookup: a send connector without smart hosts resolves the
recipient domain's MX records through server.dns_servers (a dnsmasq started
here), tries the hosts in preference order, and bounces what has no mail
exchanger: NXDOMAIN (5.1.2) and a null MX (RFC 7505, 5.1.10)."""
import os
import random
import socket
import struct
import subprocess

import pytest

from conftest import free_port, wait_until
from sink import Sink
from test_delivery import (RELAY, check_dsn_envelope, drop, emls,
                           event_lines, events, queued, simple_body, strip_received,
                           submit, wait_dsns, wait_event)

DNSMASQ = "/usr/sbin/dnsmasq"
if not os.access(DNSMASQ, os.X_OK):
    pytest.skip("dnsmasq is not installed", allow_module_level=True)


def dns_rcode(port, name, qtype=15):
    """Sends one query; the answer's rcode and answer count, or None."""
    qid = random.randint(0, 65535)
    pkt = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        pkt += bytes([len(label)]) + label.encode()
    pkt += b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        try:
            s.sendto(pkt, ("127.0.0.1", port))
            data, _ = s.recvfrom(4096)
        except OSError:
            return None
    rid, flags, _, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    return (flags & 0xF, an) if rid == qid else None


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log"
    err = open(log, "wb")
    proc = subprocess.Popen(
        [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=",
         "--no-resolv", "--no-hosts", "--no-poll", "--listen-address=127.0.0.1",
         "--bind-interfaces", "--log-facility=-", "--local=/test/", "--port=%d" % port,
         "--local-ttl=300",
         "--mx-host=mx.test,mx1.mx.test,10", "--mx-host=mx.test,mx2.mx.test,20",
         "--host-record=mx1.mx.test,127.0.0.11", "--host-record=mx2.mx.test,127.0.0.12",
         "--mx-host=nullmx.test,.,0"],
        stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        def answers():
            assert proc.poll() is None, "dnsmasq exited:\n" + log.read_text()
            return dns_rcode(port, "mx.test") == (0, 2)
        wait_until(answers, 10, what="dnsmasq to answer")
        assert dns_rcode(port, "nosuch.test") == (3, 0)  # NXDOMAIN
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()


@pytest.fixture
def sink_mx2():
    """A next hop on mx2's address only: mx1 (127.0.0.11) refuses the port."""
    s = Sink(host="127.0.0.12")
    yield s
    s.close()


def start(postern, dns, sink, dropdir):
    text = (RELAY + "send_connectors = (\n"
            '  { name = "Internet"; address_spaces = [ "*" ]; port = %d; },\n'
            "  %s\n);\n"
            'queue = { retry_interval = "1s"; max_retry_interval = "2s"; };\n'
            % (sink.port, drop("Drop", ["drop.test"], dropdir)))
    return postern(text, server_extra='  dns_servers = [ "127.0.0.1:%d" ];\n' % dns)


def test_mx_preference_and_failover(dns, sink_mx2, postern, tmp_path):
    dropdir = tmp_path / "dsn"
    p = start(postern, dns, sink_mx2, dropdir)
    qid = submit(p.port, "s@drop.test", ["r@mx.test"], simple_body("via mx"))
    e = wait_event(p, "deliver", id=qid)[0]
    assert e["send_connector"] == "Internet", e["_line"]
    assert e["relay"].startswith("mx2.mx.test[127.0.0.12]"), e["_line"]
    assert e["relay"] in ("mx2.mx.test[127.0.0.12]",
                          "mx2.mx.test[127.0.0.12]:%d" % sink_mx2.port), e["_line"]
    assert e["status"] == "2.0.0" and e["attempts"] == "1", e["_line"]
    # mx1 was tried first (lower preference value).
    failed = [f["relay"] for f in events(p, "connect_failed")]
    assert any("127.0.0.11" in r for r in failed), "\n".join(event_lines(p))
    (txn,) = sink_mx2.messages
    assert txn["rcpts"] == ["r@mx.test"]
    assert strip_received(txn["data"], qid)[1] == simple_body("via mx")
    wait_until(lambda: queued(p) == [], 5, what="postern-spool list to be empty")
    assert emls(dropdir) == []


@pytest.mark.parametrize("domain,status", [("nosuch.test", "5.1.2"),
                                           ("nullmx.test", "5.1.10")])
def test_domain_without_mail_exchanger_bounces(dns, sink_mx2, postern, tmp_path,
                                               domain, status):
    dropdir = tmp_path / "dsn"
    p = start(postern, dns, sink_mx2, dropdir)
    rcpt = "r@" + domain
    qid = submit(p.port, "s@drop.test", [rcpt], simple_body("no mx"))
    b = wait_event(p, "bounce", id=qid)[0]
    assert b["status"] == status, b["_line"]
    assert b["attempts"] == "1", b["_line"]
    assert events(p, "defer", id=qid) == []
    (dsn,) = wait_dsns(dropdir, 1)
    check_dsn_envelope(dsn, "s@drop.test")
    r = dsn.rcpt(rcpt)
    assert r["Action"] == "failed"
    assert r["Status"] == status
    assert dsn.returned_headers()["Subject"] == "no mx"
    wait_until(lambda: queued(p) == [], 5, what="postern-spool list to be empty")
    assert sink_mx2.messages == [] and sink_mx2.connections == 0
