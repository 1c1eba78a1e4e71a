"""A TLS-capable next hop for outbound TLS tests: sink.Sink's threaded SMTP
server and recording (self.lines, self.messages, self.connections, ...)
with STARTTLS on top.

  TlsSink(cert=..., key=...)   offers STARTTLS with that certificate
  starttls=False               does not offer it (STARTTLS gets 502)
  require_tls=True             MAIL before STARTTLS: 530 5.7.0
  client_ca=path               requests (does not demand) a client
                               certificate chaining to that CA
  min_version/max_version      ssl.TLSVersion bounds of the server side
  handshake="garbage"          answers STARTTLS with 220, then sends bytes
                               that are not TLS and closes: a failed handshake

Recorded beyond Sink's fields:
  self.tls      one dict per completed handshake: conn, version, cipher,
                resumed, client_cn (subject CN of a verified client
                certificate, else None), sni (server name sent, else None)
  self.tls_failures  (conn, error text) per failed handshake
  each transaction in self.messages gets tls (bool), tls_version, cipher,
  resumed, client_cn, sni (None for plaintext transactions)."""
import re
import ssl
import time

from sink import Sink

R_NEED_TLS = "530 5.7.0 Must issue a STARTTLS command first"


def cert_cn(peercert):
    for rdn in (peercert or {}).get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return None


class TlsSink(Sink):
    def __init__(self, cert=None, key=None, starttls=True, require_tls=False,
                 client_ca=None, min_version=None, max_version=None,
                 handshake="ok", handshake_timeout=10, **kw):
        assert handshake in ("ok", "garbage"), handshake
        self.starttls = starttls
        self.require_tls = require_tls
        self.handshake = handshake
        self.handshake_timeout = handshake_timeout
        self.tls = []
        self.tls_failures = []
        self._sni = {}
        self._tls_sock = {}   # conn number -> its TLS socket, closed at the end
        self.ctx = None
        if starttls and handshake == "ok":
            assert cert and key, "a STARTTLS sink needs cert and key"
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            if min_version:
                ctx.minimum_version = min_version
            if max_version:
                ctx.maximum_version = max_version
            if client_ca:
                ctx.load_verify_locations(client_ca)
                ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.sni_callback = self._on_sni
            self.ctx = ctx
        # Sink starts its accept thread: everything above is set first.
        super().__init__(**kw)

    def _on_sni(self, sslobj, name, ctx):
        self._sni[id(sslobj)] = name
        return None

    def _ehlo_lines(self, in_tls):
        ext = list(self.ehlo)
        if self.starttls and not in_tls:
            ext.append("STARTTLS")
        if not ext:
            return "250 sink.test"
        return "\r\n".join(["250-sink.test"] + ["250-" + e for e in ext[:-1]]
                           + ["250 " + ext[-1]])

    def _starttls(self, s, n):
        """The server side of the handshake on s; returns the TLS socket and
        its record, or (None, None) after a failure (recorded)."""
        if self.handshake == "garbage":
            with self.lock:
                self.tls_failures.append((n, "sent garbage instead of a ServerHello"))
            s.sendall(b"this is not a TLS record, it is plain text\r\n" * 4)
            time.sleep(0.2)
            return None, None
        s.settimeout(self.handshake_timeout)
        try:
            ts = self.ctx.wrap_socket(s, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self.lock:
                self.tls_failures.append((n, repr(e)))
            return None, None
        ts.settimeout(None)
        info = {"conn": n, "version": ts.version(), "cipher": ts.cipher()[0],
                "resumed": ts.session_reused, "client_cn": cert_cn(ts.getpeercert()),
                "sni": self._sni.pop(id(ts), None)}
        with self.lock:
            self.tls.append(info)
        return ts, info

    def _session(self, s, f, n):
        try:
            self._tls_session(s, f, n)
        finally:
            ts = self._tls_sock.pop(n, None)
            if ts is not None:
                try:
                    ts.close()
                except OSError:
                    pass

    def _tls_session(self, s, f, n):
        tls = None      # this connection's record once in TLS
        ts = None

        def say(text):
            (ts or s).sendall(text.encode() + b"\r\n")
        say("220 sink.test ESMTP TLS Sink")
        txn = None
        while True:
            raw = f.readline(4096)
            if not raw:
                return
            line = raw.decode("latin-1").rstrip("\r\n")
            with self.lock:
                self.lines.append((n, line))
            verb = line[:4].upper()
            if line.upper() == "STARTTLS":
                if not self.starttls or tls is not None:
                    say("502 5.5.2 Error: command not recognized" if tls is None
                        else "503 5.5.1 Error: TLS already active")
                    continue
                say("220 2.0.0 Ready to start TLS")
                ts, tls = self._starttls(s, n)
                if ts is None:
                    return
                # RFC 3207: forget everything, a new EHLO is expected.
                f = ts.makefile("rb")
                txn = None
                with self.lock:
                    self.conns.append(ts)
                    self._tls_sock[n] = ts
            elif verb == "EHLO" and not self.esmtp:
                say("502 5.5.2 Error: command not recognized")
            elif verb == "EHLO":
                say(self._ehlo_lines(tls is not None))
                txn = None
            elif verb == "HELO":
                say("250 sink.test")
                txn = None
            elif verb == "MAIL":
                if self.require_tls and tls is None:
                    say(R_NEED_TLS)
                    continue
                txn = {"conn": n, "mail": line, "rcpt_lines": [], "rcpts": [],
                       "tls": tls is not None}
                for k_out, k_in in (("tls_version", "version"), ("cipher", "cipher"),
                                    ("resumed", "resumed"), ("client_cn", "client_cn"),
                                    ("sni", "sni")):
                    txn[k_out] = tls[k_in] if tls else None
                say("250 2.1.0 Ok")
            elif verb == "RCPT":
                if txn is None:
                    say("503 5.5.1 Error: need MAIL command")
                    continue
                m = re.match(r"RCPT TO:<([^>]*)>(.*)$", line, re.I)
                addr = m.group(1) if m else ""
                reply = self.rcpt_reply(addr, line) if self.rcpt_reply else None
                reply = reply or "250 2.1.5 Ok"
                txn["rcpt_lines"].append((line, reply))
                if reply.startswith("2"):
                    txn["rcpts"].append(addr)
                say(reply)
            elif verb == "DATA":
                if txn is None or not txn["rcpts"]:
                    say("554 5.5.1 Error: no valid recipients")
                    continue
                say("354 End data with <CR><LF>.<CR><LF>")
                data = []
                while True:
                    l = f.readline(1 << 20)
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    data.append(l)
                txn["data"] = b"".join(data)
                txn["t"] = time.monotonic()
                reply = (self.data_reply(txn) if self.data_reply else None) or \
                    "250 2.0.0 Ok: queued"
                txn["reply"] = reply
                with self.lock:
                    self.messages.append(txn)
                txn = None
                say(reply)
            elif verb == "RSET":
                txn = None
                say("250 2.0.0 Ok")
            elif verb == "NOOP":
                say("250 2.0.0 Ok")
            elif verb == "QUIT":
                with self.lock:
                    say("221 2.0.0 Bye")
                    self.active -= 1
                    self.quit_counted.add(n)
                return
            else:
                say("502 5.5.2 Error: command not recognized")

    def commands(self, verb):
        """The command lines whose verb (first word) is verb: Sink's
        version compares four characters, which would never match
        STARTTLS."""
        with self.lock:
            return [l for _, l in self.lines if l.split(" ", 1)[0].upper() == verb]

    def handshakes(self):
        with self.lock:
            return list(self.tls)

    def failures(self):
        with self.lock:
            return list(self.tls_failures)
