"""A full disk: new messages get 452 4.3.1, acknowledged ones stay, and
accepting resumes by itself when space returns. The spool lives on a small
tmpfs this test mounts (skipped where mounting is not allowed)."""
import os
import re
import subprocess

import pytest

from conftest import RawClient

RELAY = """receive_connectors = (
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ]; }
);
"""


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.decode().strip())
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def send(c, n):
    body = b"Subject: %d\r\n\r\n" % n + (b"x" * 78 + b"\r\n") * 1200   # ~96 KiB
    c.send("MAIL FROM:<a@app.example>\r\nRCPT TO:<x@other.example>\r\nDATA\r\n")
    assert c.replies(3)[2].startswith("354 ")
    c.send(body + b".\r\n")
    return c.reply()


def test_disk_full_then_space_returns(postern, small_fs):
    spool = small_fs / "spool"
    p = postern(RELAY, server_extra='  spool_segment_size = "1MB";\n')
    # Point the spool at the tmpfs: restart with spool_dir there.
    p.stop()
    text = p.config.read_text().replace('spool_dir = "%s"' % p.spool, 'spool_dir = "%s"' % spool)
    p.config.write_text(text)
    p.spool = spool
    p.stopped = False
    p.start()
    c = RawClient(p.port, "127.0.0.10")
    c.cmd("EHLO client.example")
    acked = []
    r = send(c, 0)
    acked.append(re.match(r"250 2\.6\.0 <([0-9A-F]+)> ", r).group(1))
    # Take the rest of the filesystem.
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            pass
    refused = None
    for n in range(1, 40):
        r = send(c, n)
        if r.startswith("250 "):
            acked.append(re.match(r"250 2\.6\.0 <([0-9A-F]+)> ", r).group(1))
            continue
        refused = r
        break
    assert refused == "452 4.3.1 Insufficient system storage"
    # Still refused while the disk is full; the session goes on.
    assert send(c, 100) == "452 4.3.1 Insufficient system storage"
    assert c.cmd("NOOP") == "250 2.0.0 OK"
    filler.unlink()
    r = send(c, 101)
    assert r.startswith("250 2.6.0 "), r
    acked.append(re.match(r"250 2\.6\.0 <([0-9A-F]+)> ", r).group(1))
    c.cmd("QUIT")
    c.close()
    p.stop()
    assert set(acked) <= set(p.messages())
    assert len(p.messages()) == len(acked)
