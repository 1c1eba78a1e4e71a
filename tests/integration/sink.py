"""A next hop for delivery tests: a small threaded SMTP server on loopback
that records exactly what Postern sends (the MAIL and RCPT lines, the data
as it came over the wire, still dot-stuffed) and answers as the test says.
Postfix's smtp-sink cannot show the bytes; this can."""
import socket
import threading
import time


class Sink:
    def __init__(self, port, host="127.0.0.1", ehlo=("PIPELINING", "8BITMIME",
                                                     "ENHANCEDSTATUSCODES"),
                 rcpt_reply=None, dot_reply=None):
        self.host, self.port = host, port
        self.ehlo = list(ehlo)
        # Callables deciding replies; None: accept.
        self.rcpt_reply = rcpt_reply
        self.dot_reply = dot_reply
        self.messages = []      # dicts: mail, rcpts, data, conn
        self.connections = 0
        self.active = 0         # connections open now, and the most at once
        self.max_active = 0
        self.lock = threading.Lock()
        self.sock = None
        self.threads = []
        self.running = False

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.host, self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.running = True
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join(5)
        if self.sock:
            self.sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _accept(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                n = self.connections
            t = threading.Thread(target=self._serve, args=(c, n), daemon=True)
            t.start()

    def _serve(self, c, conn):
        c.settimeout(0.2)
        buf = b""

        def line():
            nonlocal buf
            while self.running:
                i = buf.find(b"\r\n")
                if i >= 0:
                    out, buf = buf[:i], buf[i + 2:]
                    return out.decode("utf-8", "replace")
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    continue
                if not d:
                    return None
                buf += d
            return None

        def data():
            nonlocal buf
            while self.running:
                i = buf.find(b"\r\n.\r\n")
                if buf.startswith(b".\r\n"):
                    buf = buf[3:]
                    return b""
                if i >= 0:
                    out, buf = buf[:i + 2], buf[i + 5:]
                    return out
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    continue
                if not d:
                    return None
                buf += d
            return None

        try:
            c.sendall(b"220 sink.test ESMTP\r\n")
            mail, rcpts, accepted = None, [], 0
            while True:
                cmd = line()
                if cmd is None:
                    return
                verb = cmd[:4].upper()
                if verb == "EHLO":
                    ext = ["250-sink.test"] + ["250-" + e for e in self.ehlo[:-1]]
                    ext.append("250 " + self.ehlo[-1] if self.ehlo else "250 sink.test")
                    if not self.ehlo:
                        ext = ["250 sink.test"]
                    c.sendall(("\r\n".join(ext) + "\r\n").encode())
                elif verb == "HELO":
                    c.sendall(b"250 sink.test\r\n")
                elif verb == "MAIL":
                    mail, rcpts, accepted = cmd, [], 0
                    c.sendall(b"250 2.1.0 Ok\r\n")
                elif verb == "RCPT":
                    r = self.rcpt_reply(cmd) if self.rcpt_reply else None
                    r = r or "250 2.1.5 Ok"
                    rcpts.append((cmd, r))
                    if r.startswith("2"):
                        accepted += 1
                    c.sendall((r + "\r\n").encode())
                elif verb == "DATA":
                    if not accepted:
                        c.sendall(b"554 5.5.1 No valid recipients\r\n")
                        continue
                    c.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    body = data()
                    if body is None:
                        return
                    msg = {"mail": mail, "rcpts": rcpts, "data": body, "conn": conn,
                           "t": time.monotonic()}
                    r = self.dot_reply(msg) if self.dot_reply else None
                    r = r or "250 2.0.0 Ok: queued"
                    msg["reply"] = r
                    with self.lock:
                        self.messages.append(msg)
                    c.sendall((r + "\r\n").encode())
                elif verb == "RSET":
                    mail, rcpts, accepted = None, [], 0
                    c.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == "QUIT":
                    c.sendall(b"221 2.0.0 Bye\r\n")
                    return
                elif verb == "NOOP":
                    c.sendall(b"250 2.0.0 Ok\r\n")
                else:
                    c.sendall(b"502 5.5.2 Error: command not recognized\r\n")
        except OSError:
            return
        finally:
            c.close()
            with self.lock:
                self.active -= 1

    def count(self):
        with self.lock:
            return len(self.messages)

    def snapshot(self):
        with self.lock:
            return list(self.messages)
