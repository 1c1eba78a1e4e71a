"""Load: postfix's smtp-source and swaks against a real postern."""
import os
import re
import subprocess

import pytest

from conftest import SLOW

SMTP_SOURCE = "/usr/sbin/smtp-source"
SWAKS = "/usr/bin/swaks"

# Default Frontend for 127.0.0.1 (corp.example is accepted); the connection
# limits are raised so 50 parallel sessions from one address are in policy.
LOAD_CONNECTORS = """receive_connectors = (
  { name = "Default Frontend";
    bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "0.0.0.0-255.255.255.255" ];
    permission_groups = [ "anonymous" ];
    max_inbound_connection_per_source = 200;
    max_inbound_connection_percentage_per_source = 100;
  },
  { name = "Anonymous Relay";
    bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.10", "127.0.0.20-127.0.0.29" ];
    permission_groups = [ "anonymous_relay" ];
    max_recipients_per_message = 5;
    max_message_size = "64KB";
  }
);
"""


def need(path, package):
    if not os.access(path, os.X_OK):
        pytest.skip("%s not installed (Debian package %s)" % (path, package))


def test_smtp_source_10000_messages(postern):
    need(SMTP_SOURCE, "postfix")
    p = postern(LOAD_CONNECTORS)
    n = 10000
    r = subprocess.run([SMTP_SOURCE, "-s", "50", "-m", str(n), "-l", "1024",
                        "-f", "a@b.example", "-t", "x@corp.example",
                        "127.0.0.1:%d" % p.port],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=150 * SLOW)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stderr == b"", r.stderr
    msgs = p.messages()
    assert len(msgs) == n
    p.assert_spool_clean()
    # Every file holds an envelope, our Received: and the 1024-octet body.
    sizes = list(p.message_sizes().values())
    assert min(sizes) > 1024 + 300, min(sizes)
    sample = p.read_message(msgs[0])
    assert sample.startswith(b"POSTERN/1\r\n")
    env, _, message = sample.partition(b"\r\n\r\n")
    assert b"\r\nconnector: Default Frontend\r\nclient: 127.0.0.1\r\n" in env + b"\r\n"
    assert env.endswith(b"\r\nfrom: <a@b.example>\r\nrcpt: <x@corp.example>")
    assert message.startswith(b"Received: from ")
    p.stop()
    assert len(p.messages()) == n


def test_swaks_one_message(postern):
    need(SWAKS, "swaks")
    p = postern(LOAD_CONNECTORS)
    r = subprocess.run([SWAKS, "--server", "127.0.0.1:%d" % p.port,
                        "--from", "a@b.example", "--to", "x@corp.example",
                        "--helo", "swaks.example", "--timeout", "20"],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=60 * SLOW)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    m = re.search(r"<-  250 2\.6\.0 <(\w+)> Queued mail for delivery", out)
    assert m, out
    assert "<-  221 2.0.0 Service closing transmission channel" in out
    assert p.messages() == [m.group(1)]
    data = p.read_message(m.group(1))
    # an anonymous-only connector's message (its bounces carry headers
    # only), with no line starting with "." (BDAT may send it as stored)
    assert (b"\r\nhelo: swaks.example\r\norigin: anonymous\r\ndot-lines: none\r\n"
            b"from: <a@b.example>\r\nrcpt: <x@corp.example>\r\n\r\n") in data, data[:400]
