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

    greeting = "220 sink.test ESMTP TLS Sink"

    class Conn(Sink.Conn):
        tls = None   # this connection's record once in TLS

    def ehlo_extensions(self, c):
        ext = list(self.ehlo)
        if self.starttls and c.tls is None:
            ext.append("STARTTLS")
        return ext

    def extra_command(self, c, line):
        if line.upper() != "STARTTLS":
            return False
        if not self.starttls or c.tls is not None:
            c.say("502 5.5.2 Error: command not recognized" if c.tls is None
                  else "503 5.5.1 Error: TLS already active")
            return True
        c.say("220 2.0.0 Ready to start TLS")
        ts, c.tls = self._starttls(c.s, c.n)
        if ts is None:
            c.s = None  # the session ends
            return True
        # RFC 3207: forget everything, a new EHLO is expected.
        c.s, c.f, c.txn = ts, ts.makefile("rb"), None
        with self.lock:
            self.conns.append(ts)
            self._tls_sock[c.n] = ts
        return True

    def mail_refusal(self, c):
        return R_NEED_TLS if self.require_tls and c.tls is None else None

    def new_transaction(self, c, line):
        txn = super().new_transaction(c, line)
        txn["tls"] = c.tls is not None
        for k_out, k_in in (("tls_version", "version"), ("cipher", "cipher"),
                            ("resumed", "resumed"), ("client_cn", "client_cn"),
                            ("sni", "sni")):
            txn[k_out] = c.tls[k_in] if c.tls else None
        return txn

    def _session(self, s, f, n):
        try:
            super()._session(s, f, n)
        finally:
            ts = self._tls_sock.pop(n, None)
            if ts is not None:
                try:
                    ts.close()
                except OSError:
                    pass

    def handshakes(self):
        with self.lock:
            return list(self.tls)

    def failures(self):
        with self.lock:
            return list(self.tls_failures)
