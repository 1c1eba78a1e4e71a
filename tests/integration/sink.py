"""A next hop for delivery tests: a threaded SMTP server on loopback that
records exactly what Postern sends and answers as the test says. Postfix's
smtp-sink cannot show the bytes; this can.

Records every command line (self.lines: (connection number, line)), every
transaction that got to the end of DATA (self.messages: dicts with conn,
mail, rcpt_lines, rcpts, data = exact bytes between 354 and CRLF.CRLF with
the dot-stuffing kept, t = arrival time, reply), the number of connections
and the most open at once. rcpt_reply(addr, line) and data_reply(txn) may
return a reply to use instead of the 2xx.

chunking=True offers CHUNKING (RFC 3030): a message that comes by BDAT has
data = its octets exactly as sent (not dot-stuffed), chunks = the size of
every chunk, and via = "BDAT" (DATA: via = "DATA")."""
import re
import socket
import threading
import time

from conftest import free_port


class Sink:
    def __init__(self, port=None, host="127.0.0.1", ehlo=None, dsn=False,
                 rcpt_reply=None, data_reply=None, esmtp=True, chunking=False):
        self.host, self.port = host, port or free_port()
        self.ehlo = list(ehlo if ehlo is not None else
                         ["PIPELINING", "SIZE 104857600", "8BITMIME",
                          "ENHANCEDSTATUSCODES"])
        if dsn:
            self.ehlo.append("DSN")
        if chunking:
            self.ehlo.append("CHUNKING")
        self.rcpt_reply, self.data_reply = rcpt_reply, data_reply
        self.esmtp = esmtp
        self.lock = threading.Lock()
        self.connections = 0
        self.active = 0          # connections open now, and the most at once
        self.max_active = 0
        self.quit_counted = set()  # sessions whose end was counted at QUIT
        self.lines = []
        self.messages = []
        self.errors = []
        self.conns = []
        self.stopping = False
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind((self.host, self.port))
        self.srv.listen(128)
        self.srv.settimeout(0.1)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                n = self.connections
                self.conns.append(s)
            threading.Thread(target=self._serve, args=(s, n), daemon=True).start()

    def _serve(self, s, n):
        f = s.makefile("rb")
        try:
            self._session(s, f, n)
        except (OSError, ValueError):
            pass
        except Exception as e:  # a bug in the sink: report it from the test
            self.errors.append(repr(e))
        finally:
            with self.lock:
                if n not in self.quit_counted:
                    self.active -= 1
            try:
                s.close()
            except OSError:
                pass

    class Conn:
        """One session's state: its socket and reader (a TLS sink swaps
        them after STARTTLS), number, open transaction."""

        def __init__(self, s, f, n):
            self.s, self.f, self.n, self.txn = s, f, n, None

        def say(self, text):
            self.s.sendall(text.encode() + b"\r\n")

    # Hooks a subclass (tls_sink.TlsSink) fills in.
    greeting = "220 sink.test ESMTP Sink"

    def ehlo_extensions(self, c):
        return list(self.ehlo)

    def extra_command(self, c, line):
        """A command this sink handles itself; True when it did."""
        return False

    def mail_refusal(self, c):
        return None

    def new_transaction(self, c, line):
        return {"conn": c.n, "mail": line, "rcpt_lines": [], "rcpts": []}

    def _session(self, s, f, n):
        c = self.Conn(s, f, n)
        c.say(self.greeting)
        while True:
            raw = c.f.readline(4096)
            if not raw:
                return
            line = raw.decode("latin-1").rstrip("\r\n")
            with self.lock:
                self.lines.append((n, line))
            verb = line[:4].upper()
            if self.extra_command(c, line):
                if c.s is None:
                    return
            elif verb == "EHLO" and not self.esmtp:
                c.say("502 5.5.2 Error: command not recognized")
            elif verb == "EHLO":
                ext = self.ehlo_extensions(c)
                c.say("\r\n".join(["250-sink.test"] + ["250-" + e for e in ext[:-1]]
                                  + ["250 " + ext[-1]]) if ext else "250 sink.test")
                c.txn = None
            elif verb == "HELO":
                c.say("250 sink.test")
                c.txn = None
            elif verb == "MAIL":
                refusal = self.mail_refusal(c)
                if refusal:
                    c.say(refusal)
                    continue
                c.txn = self.new_transaction(c, line)
                c.say("250 2.1.0 Ok")
            elif verb == "RCPT":
                txn = c.txn
                if txn is None:
                    c.say("503 5.5.1 Error: need MAIL command")
                    continue
                m = re.match(r"RCPT TO:<([^>]*)>(.*)$", line, re.I)
                addr = m.group(1) if m else ""
                reply = self.rcpt_reply(addr, line) if self.rcpt_reply else None
                reply = reply or "250 2.1.5 Ok"
                txn["rcpt_lines"].append((line, reply))
                if reply.startswith("2"):
                    txn["rcpts"].append(addr)
                c.say(reply)
            elif verb == "DATA":
                txn = c.txn
                if txn is None or not txn["rcpts"]:
                    c.say("554 5.5.1 Error: no valid recipients")
                    continue
                c.say("354 End data with <CR><LF>.<CR><LF>")
                data = []
                while True:
                    l = c.f.readline(1 << 20)
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    data.append(l)
                txn["data"] = b"".join(data)
                txn["via"] = "DATA"
                txn["t"] = time.monotonic()
                reply = (self.data_reply(txn) if self.data_reply else None) or \
                    "250 2.0.0 Ok: queued"
                txn["reply"] = reply
                with self.lock:
                    self.messages.append(txn)
                c.txn = None
                c.say(reply)
            elif verb == "BDAT":
                m = re.match(r"BDAT (\d+)( LAST)?$", line, re.I)
                if not m:
                    c.say("501 5.5.4 Syntax error")
                    return
                n, last = int(m.group(1)), bool(m.group(2))
                chunk = c.f.read(n) if n else b""
                if len(chunk) != n:
                    return
                txn = c.txn
                if txn is None or not txn["rcpts"]:
                    c.say("503 5.5.1 Error: no valid recipients")
                    continue
                txn.setdefault("chunks", []).append(n)
                txn["bdat"] = txn.get("bdat", b"") + chunk
                if not last:
                    c.say("250 2.0.0 %d octets received" % n)
                    continue
                txn["data"] = txn.pop("bdat")
                txn["via"] = "BDAT"
                txn["t"] = time.monotonic()
                reply = (self.data_reply(txn) if self.data_reply else None) or \
                    "250 2.0.0 Ok: queued"
                txn["reply"] = reply
                with self.lock:
                    self.messages.append(txn)
                c.txn = None
                c.say(reply)
            elif verb == "RSET":
                c.txn = None
                c.say("250 2.0.0 Ok")
            elif verb == "NOOP":
                c.say("250 2.0.0 Ok")
            elif verb == "QUIT":
                # The session ends with the 221: counted as closed in the
                # same step, so a client that opens its next connection
                # as soon as it has the 221 (and not before) is not seen
                # twice by a late decrement of this thread.
                with self.lock:
                    c.say("221 2.0.0 Bye")
                    self.active -= 1
                    self.quit_counted.add(n)
                return
            else:
                c.say("502 5.5.2 Error: command not recognized")

    def commands(self, verb):
        with self.lock:
            return [l for _, l in self.lines
                    if l.split(" ", 1)[0].split(":", 1)[0].upper() == verb]

    def count(self):
        with self.lock:
            return len(self.messages)

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def close(self):
        self.stopping = True
        try:
            self.srv.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(5)
        assert not self.errors, self.errors
