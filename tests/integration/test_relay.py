"""Connector selection by client address and the relay decision."""
import pytest

from conftest import (R_BAD_SEQUENCE, R_MAIL_OK, R_NOT_AUTHENTICATED, R_QUIT,
                      R_RCPT_OK, R_UNABLE_TO_RELAY, HOSTNAME)

TRICKS = [
    "<user%other.example@corp.example>",      # %-hack
    '<"user@other"@corp.example>',            # embedded @ in a quoted local part
    "<other!user@corp.example>",              # bang path
    "<user@[1.2.3.4]>",                       # address literal
    "<@corp.example:user@other.example>",     # source route: stripped -> other.example
]


def start_transaction(c):
    ehlo = c.cmd("EHLO client.example")
    assert isinstance(ehlo, list) and ehlo[-1] == "250 SMTPUTF8"
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK


def test_anonymous_submits_only_to_accepted_domains(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.50")
    start_transaction(c)
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    assert c.cmd("RCPT TO:<X@CORP.EXAMPLE>") == R_RCPT_OK
    assert c.cmd("RCPT TO:<x@other.example>") == R_UNABLE_TO_RELAY
    assert c.cmd("RCPT TO:<x@sub.corp.example>") == R_UNABLE_TO_RELAY
    assert c.cmd("RCPT TO:<x@corp.example.other>") == R_UNABLE_TO_RELAY
    assert c.cmd("QUIT") == R_QUIT


@pytest.mark.parametrize("rcpt", TRICKS)
def test_relay_tricks_refused_for_anonymous(postern, smtp_raw, rcpt):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.50")
    start_transaction(c)
    assert c.cmd("RCPT TO:%s" % rcpt) == R_UNABLE_TO_RELAY
    # The transaction is intact: a legitimate recipient still works.
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    assert c.cmd("QUIT") == R_QUIT


@pytest.mark.parametrize("source", ["127.0.0.10", "127.0.0.20", "127.0.0.25",
                                    "127.0.0.29"])
def test_anonymous_relay_range_may_relay(postern, smtp_raw, source):
    p = postern()
    c = smtp_raw(p.port, source)
    start_transaction(c)
    assert c.cmd("RCPT TO:<x@other.example>") == R_RCPT_OK
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    assert c.cmd("QUIT") == R_QUIT


@pytest.mark.parametrize("source", ["127.0.0.30", "127.0.0.19", "127.0.0.11",
                                    "127.0.0.1"])
def test_outside_relay_range_refused(postern, smtp_raw, source):
    p = postern()
    c = smtp_raw(p.port, source)
    ehlo = c.cmd("EHLO client.example")
    # Default Frontend: default size limit, not the relay connector's 64KB.
    assert ehlo[0] == "250-%s Hello [%s]" % (HOSTNAME, source)
    assert "250-SIZE 37748736" in ehlo
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@other.example>") == R_UNABLE_TO_RELAY
    assert c.cmd("QUIT") == R_QUIT


def test_empty_permission_groups_accepts_nothing(postern, smtp_raw):
    p = postern("""receive_connectors = (
  { name = "Closed"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ ]; }
);
""")
    c = smtp_raw(p.port, "127.0.0.50")
    assert c.cmd("EHLO client.example")[0] == "250-%s Hello [127.0.0.50]" % HOSTNAME
    assert c.cmd("MAIL FROM:<a@b.example>") == R_NOT_AUTHENTICATED
    assert c.cmd("RCPT TO:<x@corp.example>") == R_BAD_SEQUENCE
    assert c.cmd("QUIT") == R_QUIT
    assert p.messages() == []


def test_client_matching_no_connector_is_refused(postern, smtp_raw):
    p = postern(TWO_AND_ONLY_TEN, nports=2)
    only_ten = p.ports[1]
    c = smtp_raw(only_ten, "127.0.0.11", greet=False)
    line = c.line()
    assert line is not None and line.startswith("554 5.7.1 "), line
    c.expect_closed()
    # The matching client is served on that binding...
    c = smtp_raw(only_ten, "127.0.0.10")
    assert c.cmd("EHLO client.example")[0] == "250-%s Hello [127.0.0.10]" % HOSTNAME
    assert c.cmd("QUIT") == R_QUIT
    # ... and 127.0.0.11 is still served on the other binding.
    c = smtp_raw(p.ports[0], "127.0.0.11")
    assert c.cmd("EHLO client.example")[0] == "250-%s Hello [127.0.0.11]" % HOSTNAME
    assert c.cmd("QUIT") == R_QUIT


TWO_AND_ONLY_TEN = """receive_connectors = (
  { name = "Default Frontend"; bindings = [ "127.0.0.1:{port0}" ];
    remote_ip_ranges = [ "0.0.0.0-255.255.255.255" ];
    permission_groups = [ "anonymous" ]; },
  { name = "Only Ten"; bindings = [ "127.0.0.1:{port1}" ];
    remote_ip_ranges = [ "127.0.0.10" ];
    permission_groups = [ "anonymous_relay" ]; }
);
"""


def test_connector_without_ranges_takes_every_address(postern, smtp_raw):
    """remote_ip_ranges omitted: Exchange's default, every IPv4 and IPv6
    address (0.0.0.0/0 and ::/0)."""
    p = postern("""receive_connectors = (
  { name = "Everyone"; bindings = [ "127.0.0.1:{port}" ];
    permission_groups = [ "anonymous" ]; }
);
""")
    for source in ("127.0.0.50", "127.0.0.10"):
        c = smtp_raw(p.port, source)
        assert c.cmd("EHLO client.example")[0] == "250-%s Hello [%s]" % (HOSTNAME, source)
        assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
        assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
        assert c.cmd("RCPT TO:<x@other.example>") == R_UNABLE_TO_RELAY
        assert c.cmd("QUIT") == R_QUIT


@pytest.mark.parametrize("rcpt", ["<user@other.example@corp.example>",
                                  "<x@corp.example.>",
                                  "<x@other.example.>"])
def test_malformed_relay_tricks_are_syntax_errors(postern, smtp_raw, rcpt):
    # A second "@" or a trailing dot is not a path at all: refused as such,
    # from a relay host too, so no downstream ever sees it.
    p = postern()
    for source in ("127.0.0.50", "127.0.0.10"):
        c = smtp_raw(p.port, source)
        start_transaction(c)
        assert c.cmd("RCPT TO:%s" % rcpt) == "501 5.1.3 Invalid address"
        assert c.cmd("QUIT") == R_QUIT
