"""Basic SMTP dialogue: EHLO, a stored message (byte-exact spool file), the
simple commands and the sequencing / syntax errors, with exact reply texts."""
import email.utils
import re
import smtplib
import time

from conftest import (HOSTNAME, R_BAD_DOMAIN, R_BAD_SENDER, R_BAD_SEQUENCE,
                      R_DATA_LINE_TOO_LONG, R_GREETING, R_HELP, R_MAIL_OK,
                      R_NOOP_OK, R_QUIT, R_RCPT_OK, R_RESET, R_START_DATA,
                      R_TOO_BIG, R_TOO_MANY_RCPTS, R_UNKNOWN_PARAM,
                      R_UNRECOGNIZED, R_VRFY, SLOW)


def split(reply):
    """"250 2.1.0 Sender OK" -> (250, b"2.1.0 Sender OK"), as smtplib gives."""
    return int(reply[:3]), reply[4:].encode()


def client(port, source):
    s = smtplib.SMTP(timeout=10 * SLOW, source_address=(source, 0))
    code, msg = s.connect("127.0.0.1", port)
    assert (code, msg) == split(R_GREETING)
    return s


def ehlo_text(ip, size):
    return ("%s Hello [%s]\nPIPELINING\nSIZE %d\n8BITMIME\nENHANCEDSTATUSCODES\n"
            "DSN\nCHUNKING\nSMTPUTF8" % (HOSTNAME, ip, size)).encode()


def test_ehlo_lines_per_connector(postern):
    p = postern()
    s = client(p.port, "127.0.0.10")
    assert s.ehlo("client.example") == (250, ehlo_text("127.0.0.10", 65536))
    assert s.esmtp_features["size"] == "65536"
    assert s.quit() == split(R_QUIT)
    # Default Frontend: the default max_message_size is 36MB.
    s = client(p.port, "127.0.0.50")
    assert s.ehlo("client.example") == (250, ehlo_text("127.0.0.50", 36 * 1024 * 1024))
    assert s.quit() == split(R_QUIT)


def test_message_stored_byte_exact(postern):
    p = postern()
    s = client(p.port, "127.0.0.10")
    assert s.ehlo("client.example")[0] == 250
    assert s.docmd("MAIL", "FROM:<sender@b.example> BODY=8BITMIME") == split(R_MAIL_OK)
    assert s.docmd("RCPT", "TO:<x@corp.example>") == split(R_RCPT_OK)
    assert s.docmd("RCPT", "TO:<y@other.example>") == split(R_RCPT_OK)
    # The arrival is taken when DATA is accepted (the message begins).
    t0 = int(time.time())
    assert s.docmd("DATA") == split(R_START_DATA)
    # The exact wire form: dot-stuffed lines, 8-bit bytes, a 998-octet line.
    wire = (b"From: <sender@b.example>\r\n"
            b"To: <x@corp.example>\r\n"
            b"Subject: byte exact\r\n"
            b"\r\n"
            b"..a line that starts with a dot (stuffed on the wire)\r\n"
            b"...two dots\r\n"
            b"8-bit: caf\xc3\xa9 \xff\xfe\x80\r\n"
            + b"L" * 998 + b"\r\n"
            b"tab\there, trailing space \r\n"
            b".\r\n")
    s.send(wire)
    code, msg = s.getreply()
    t1 = int(time.time()) + 1
    m = re.fullmatch(rb"2\.6\.0 <([0-9A-Za-z]+)> Queued mail for delivery", msg)
    assert code == 250 and m, (code, msg)
    msgid = m.group(1).decode()
    assert s.quit() == split(R_QUIT)

    # The 250 promises durability: the file is there, complete, right now.
    assert p.messages() == [msgid]
    data = p.read_message(msgid)
    env, sep, message = data.partition(b"\r\n\r\n")
    assert sep
    env_lines = env.split(b"\r\n")
    arrival = env_lines[2]
    assert re.fullmatch(rb"arrival: \d+", arrival), arrival
    assert t0 <= int(arrival.split(b" ")[1]) <= t1
    assert env_lines == [
        b"POSTERN/1",
        b"id: " + msgid.encode(),
        arrival,
        b"connector: Anonymous Relay",
        b"client: 127.0.0.10",
        b"helo: client.example",
        b"from: <sender@b.example> BODY=8BITMIME",
        b"rcpt: <x@corp.example>",
        b"rcpt: <y@other.example>",
    ]
    # Our Received: header (two recipients, so no "for" clause), then the
    # body exactly as sent, still dot-stuffed, up to the CR LF before ".".
    m = re.match(rb"Received: from client\.example \(\[127\.0\.0\.10\]\)\r\n"
                 rb"\tby relay\.test\.example \(Postern\) with ESMTP id ([0-9A-Za-z]+)\r\n"
                 rb"\t\(connector \"Anonymous Relay\"\); ([^\r\n]+)\r\n", message)
    assert m, message[:400]
    assert m.group(1).decode() == msgid
    when = email.utils.parsedate_to_datetime(m.group(2).decode()).timestamp()
    assert t0 - 1 <= when <= t1 + 1
    assert message[m.end():] == wire[:-3]
    p.stop()
    # Still exactly one message after a clean stop.
    assert p.messages() == [msgid]


def test_received_for_clause_single_recipient(postern):
    p = postern()
    s = client(p.port, "127.0.0.50")
    assert s.helo("h.example") == (250, ("%s Hello [127.0.0.50]" % HOSTNAME).encode())
    assert s.docmd("MAIL", "FROM:<>") == split(R_MAIL_OK)
    assert s.docmd("RCPT", "TO:<x@corp.example>") == split(R_RCPT_OK)
    assert s.docmd("DATA") == split(R_START_DATA)
    s.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
    code, msg = s.getreply()
    assert code == 250
    msgid = re.fullmatch(rb"2\.6\.0 <(\w+)> Queued mail for delivery", msg).group(1).decode()
    assert s.quit() == split(R_QUIT)
    data = p.read_message(msgid)
    env, _, message = data.partition(b"\r\n\r\n")
    assert env.split(b"\r\n")[3:] == [b"connector: Default Frontend",
                                      b"client: 127.0.0.50", b"helo: h.example",
                                      # an anonymous-only connector's message; no
                                      # stored line begins with "." (BDAT may carry it)
                                      b"origin: anonymous", b"dot-lines: none",
                                      b"from: <>", b"rcpt: <x@corp.example>"]
    m = re.match(rb"Received: from h\.example \(\[127\.0\.0\.50\]\)\r\n"
                 rb"\tby relay\.test\.example \(Postern\) with SMTP id (\w+)\r\n"
                 rb"\t\(connector \"Default Frontend\"\)\r\n"
                 rb"\tfor <x@corp\.example>; [^\r\n]+\r\n", message)
    assert m, message[:400]
    assert m.group(1).decode() == msgid
    assert message[m.end():] == b"Subject: s\r\n\r\nbody\r\n"


def test_simple_commands(postern):
    p = postern()
    s = client(p.port, "127.0.0.10")
    assert s.helo("client.example") == (250, ("%s Hello [127.0.0.10]" % HOSTNAME).encode())
    assert s.noop() == split(R_NOOP_OK)
    assert s.docmd("MAIL", "FROM:<a@b.example>") == split(R_MAIL_OK)
    assert s.rset() == split(R_RESET)
    # RSET ended the transaction.
    assert s.docmd("RCPT", "TO:<x@corp.example>") == split(R_BAD_SEQUENCE)
    assert s.verify("someone") == split(R_VRFY)
    assert s.docmd("HELP") == split(R_HELP)
    assert s.quit() == split(R_QUIT)
    assert p.messages() == []


def test_sequence_errors(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.50")
    assert c.greeting == R_GREETING
    assert c.cmd("MAIL FROM:<a@b.example>") == R_BAD_SEQUENCE  # before EHLO
    assert c.cmd("RCPT TO:<x@corp.example>") == R_BAD_SEQUENCE  # before EHLO
    assert c.cmd("DATA") == R_BAD_SEQUENCE
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    assert c.cmd("RCPT TO:<x@corp.example>") == R_BAD_SEQUENCE  # before MAIL
    assert c.cmd("DATA") == R_BAD_SEQUENCE  # before MAIL
    c.close()
    c = smtp_raw(p.port, "127.0.0.50")
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    assert c.cmd("DATA") == R_BAD_SEQUENCE  # before RCPT
    assert c.cmd("MAIL FROM:<a@b.example>") == R_BAD_SEQUENCE  # nested MAIL
    assert c.cmd("QUIT") == R_QUIT
    c.expect_closed()


def test_argument_errors(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.10")
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    assert c.cmd("MAIL FROM:<not an address>") == R_BAD_SENDER
    assert c.cmd("MAIL FROM:<a@>") == R_BAD_SENDER
    assert c.cmd("MAIL FROM:<a@b.example> FOO=BAR") == R_UNKNOWN_PARAM
    assert c.cmd("MAIL FROM:<a@b.example> SIZE=65537") == R_TOO_BIG
    c.close()
    c = smtp_raw(p.port, "127.0.0.10")
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    assert c.cmd("MAIL FROM:<a@b.example> SIZE=65536") == R_MAIL_OK
    for i in range(5):
        assert c.cmd("RCPT TO:<r%d@other.example>" % i) == R_RCPT_OK
    assert c.cmd("RCPT TO:<r5@other.example>") == R_TOO_MANY_RCPTS
    assert c.cmd("RCPT TO:<r6@corp.example>") == R_TOO_MANY_RCPTS
    assert c.cmd("FOOBAR") == R_UNRECOGNIZED
    assert c.cmd("QUIT") == R_QUIT
    c.expect_closed()


def test_bad_hello_argument(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.50")
    assert c.cmd("EHLO -bad-") == R_BAD_DOMAIN
    assert c.cmd("EHLO bad..name") == R_BAD_DOMAIN
    assert c.cmd("HELO") == R_BAD_DOMAIN
    # Still not greeted: MAIL is out of sequence.
    assert c.cmd("MAIL FROM:<a@b.example>") == R_BAD_SEQUENCE
    assert c.cmd("EHLO good.example")[0] == "250-%s Hello [127.0.0.50]" % HOSTNAME
    assert c.cmd("QUIT") == R_QUIT


def test_data_line_over_1000_octets(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.50")
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    c.send(b"Subject: long\r\n\r\n" + b"x" * 999 + b"\r\n.\r\n")
    assert c.reply() == R_DATA_LINE_TOO_LONG
    assert c.cmd("NOOP") == R_NOOP_OK
    assert c.cmd("QUIT") == R_QUIT
    assert p.messages() == []
