"""Postern delivering to a second Postern: the first relays through a smart
host send connector, the second accepts for its domain and writes a drop
directory. The bytes a client sent come out of the second one unchanged but
for the two Received: headers, whatever the dot-stuffing, 8-bit content and
line lengths. DSN parameters pass from one to the other (both offer DSN), so
the first owes no success notice: the second, delivering finally, sends it,
and it travels back through the first to the sender."""
import email
import os
import smtplib

from conftest import SLOW, free_port, wait_until

FIRST = """receive_connectors = (
  { name = "Apps"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ]; }
);
send_connectors = (
  { name = "Next Postern"; address_spaces = [ "*" ]; smart_hosts = [ "127.0.0.1:%d" ]; },
  { name = "Notices"; address_spaces = [ "app.example" ]; drop_directory = "%s"; }
);
queue = { retry_interval = "1s"; };
"""

SECOND = """receive_connectors = (
  { name = "From relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.1" ]; permission_groups = [ "anonymous" ]; }
);
send_connectors = (
  { name = "Mailboxes"; address_spaces = [ "corp.example" ]; drop_directory = "%s"; },
  { name = "Back"; address_spaces = [ "app.example" ]; smart_hosts = [ "127.0.0.1:%d" ]; }
);
"""


def emls(d):
    return sorted(f for f in os.listdir(d) if f.endswith(".eml")) if os.path.isdir(d) else []


def test_relay_to_a_second_postern_keeps_the_bytes(postern, tmp_path):
    boxes, notices = tmp_path / "boxes", tmp_path / "notices"
    port1, port2 = free_port(), free_port()
    # Its own name: a next hop that greets with ours is a loop (B.6).
    second = postern(SECOND % (boxes, port1), ports=[port2], name="second",
                     hostname="second.test.example")
    first = postern(FIRST % (port2, notices), ports=[port1], name="first")
    body = (b"Subject: chain\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            b".starts with a dot\r\n..two dots\r\n.\r\n"
            b"caf\xc3\xa9 8-bit\r\n" + b"x" * 998 + b"\r\nlast line\r\n")
    s = smtplib.SMTP("127.0.0.1", first.port, source_address=("127.0.0.10", 0), timeout=10)
    s.ehlo("app.example")
    s.mail("sender@app.example", ["BODY=8BITMIME", "RET=HDRS", "ENVID=chain-1"])
    s.rcpt("alice@corp.example", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;alice@corp.example"])
    s.rcpt("bob@corp.example")
    code, _ = s.data(body)
    assert code == 250
    s.quit()

    wait_until(lambda: len(emls(boxes)) == 1, 15 * SLOW, what="the message in the drop dir")
    raw = (boxes / emls(boxes)[0]).read_bytes()
    head, _, rest = raw.partition(b"\r\nReceived: ")
    assert head == b"X-Sender: <sender@app.example>\r\nX-Receiver: <alice@corp.example>\r\n" \
                   b"X-Receiver: <bob@corp.example>"
    # Two trace headers (second, then first Postern), then the client's bytes.
    first_rcvd = rest.index(b"\r\nReceived: ")
    after = rest[first_rcvd + 2:]
    end_of_trace = after.index(b"\r\nSubject: chain") + 2
    assert after[end_of_trace:] == body
    msg = email.message_from_bytes(raw)
    assert len(msg.get_all("Received")) == 2
    assert "(connector \"From relay\")" in msg.get_all("Received")[0]
    assert "(connector \"Apps\")" in msg.get_all("Received")[1]

    # The first passed NOTIFY on (the second offers DSN): no notice of its
    # own. The second delivered finally and owes alice's success notice.
    wait_until(lambda: len(emls(notices)) == 1, 15 * SLOW, what="the success notice")
    assert "send_connector=\"Next Postern\" relay=[127.0.0.1]:%d" % port2 in first.stderr()
    assert "event=dsn" not in first.stderr()
    assert second.stderr().count("event=dsn kind=success ") == 1
    dsn = email.message_from_bytes((notices / emls(notices)[0]).read_bytes())
    assert dsn["X-Receiver"] == "<sender@app.example>"
    assert dsn.get_content_type() == "multipart/report"
    status = dsn.get_payload()[1].get_payload()
    fields = {k: v for b in status[1:] for k, v in b.items()}
    assert fields["Final-Recipient"] == "rfc822; alice@corp.example"
    assert fields["Action"] == "delivered"
    assert fields["Original-Recipient"] == "rfc822;alice@corp.example"
    assert status[0]["Original-Envelope-Id"] == "chain-1"
    wait_until(lambda: first.messages() == [] and second.messages() == [], 10 * SLOW,
               what="both queues to empty")
