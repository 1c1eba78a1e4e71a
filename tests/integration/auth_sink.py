"""A next hop that requires SMTP AUTH (RFC 4954), for the outbound AUTH
tests: tls_sink.TlsSink (STARTTLS, recording) with AUTH PLAIN, LOGIN and
XOAUTH2 on top, through the sink hooks (EHLO extensions, an extra command,
a MAIL refusal, transaction fields).

  AuthSink(users={"relay@corp.example": "password"},   accepted PLAIN/LOGIN credentials
           token="ya29.current",        the one bearer token XOAUTH2 accepts (None: none);
                                        .token may be changed while running (rotation)
           mechanisms=("PLAIN", "LOGIN", "XOAUTH2"),  what EHLO offers
           auth_before_tls=True,        offer (and accept) AUTH in plaintext too, so a
                                        client that would send credentials before TLS can
           require_auth=True,           MAIL before AUTH: 530 5.7.0 Authentication required
           auth_reply=None,             a fixed answer to every complete AUTH exchange instead
                                        of checking (e.g. R_THREAD_LIMIT_432); a 421 closes
           fail_reply=R_SINK_AUTH_FAILED,  what bad credentials get
           cert=..., key=..., starttls=..., **TlsSink/Sink options)

Recorded (self.auths, one dict per complete AUTH exchange, under the lock):
  conn, mechanism, user (authorization identity for PLAIN: the
  authentication identity; for XOAUTH2 the user= field), initial (an
  initial response was given), tls (inside TLS), ok (credentials accepted),
  reply (what the sink answered). Secrets are compared here and never
  recorded or printed; self.lines gets "AUTH <MECH> ****" for AUTH lines
  and "****" for the lines of the exchange.
Each transaction in self.messages also gets auth_user (None without AUTH).
After STARTTLS an earlier AUTH is forgotten (RFC 3207)."""
import base64
import binascii
import json

from tls_sink import TlsSink

R_SINK_AUTH_OK = "235 2.7.0 Authentication successful"
R_SINK_AUTH_FAILED = "535 5.7.8 Error: authentication failed: bad credentials"
R_SINK_AUTH_REQUIRED = "530 5.7.0 Authentication required"
R_SINK_AUTH_MECH = "504 5.5.4 Unrecognized authentication type"
R_SINK_AUTH_TWICE = "503 5.5.1 Error: already authenticated"
R_SINK_AUTH_CANCELLED = "501 5.7.0 Authentication cancelled"
R_SINK_AUTH_DECODE = "501 5.5.2 Cannot decode response"
# Microsoft 365's answers when a mailbox has too many concurrent SMTP AUTH
# sessions: temporary, the relay should back off that destination.
R_THREAD_LIMIT_432 = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
R_THREAD_LIMIT_421 = "421 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"

# What Gmail sends as the XOAUTH2 failure challenge (RFC 7628 style): the
# client answers it with an empty line, then gets the 535.
XOAUTH2_ERROR = base64.b64encode(json.dumps(
    {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}).encode()).decode()


def b64(text):
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def unb64(text):
    """Strict base64 decoding; None when it is not base64."""
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


class AuthSink(TlsSink):
    greeting = "220 sink.test ESMTP Auth Sink"

    def __init__(self, users=None, token=None, mechanisms=("PLAIN", "LOGIN", "XOAUTH2"),
                 auth_before_tls=True, require_auth=True, auth_reply=None,
                 fail_reply=R_SINK_AUTH_FAILED, **kw):
        self.users = dict(users or {})
        self.token = token
        self.mechanisms = [m.upper() for m in mechanisms]
        self.auth_before_tls = auth_before_tls
        self.require_auth = require_auth
        self.auth_reply = auth_reply
        self.fail_reply = fail_reply
        self.auths = []
        kw.setdefault("starttls", "cert" in kw)
        super().__init__(**kw)

    class Conn(TlsSink.Conn):
        auth_user = None   # who this session authenticated as

    # -- hooks -------------------------------------------------------------

    def ehlo_extensions(self, c):
        ext = super().ehlo_extensions(c)
        if self.mechanisms and c.auth_user is None and (c.tls is not None or
                                                        self.auth_before_tls):
            ext.append("AUTH " + " ".join(self.mechanisms))
        return ext

    def extra_command(self, c, line):
        if line.upper() == "STARTTLS":
            done = super().extra_command(c, line)
            c.auth_user = None   # RFC 3207: forget everything
            return done
        if line[:5].upper() not in ("AUTH ", "AUTH"):
            return super().extra_command(c, line)
        self._mask_last(c, line)
        self._auth(c, line)
        return True

    def mail_refusal(self, c):
        refusal = super().mail_refusal(c)
        if refusal:
            return refusal
        if self.require_auth and c.auth_user is None:
            return R_SINK_AUTH_REQUIRED
        return None

    def new_transaction(self, c, line):
        txn = super().new_transaction(c, line)
        txn["auth_user"] = c.auth_user
        return txn

    # -- AUTH --------------------------------------------------------------

    def _mask_last(self, c, line):
        """The AUTH line as recorded: the mechanism kept, the rest masked."""
        parts = line.split(" ", 2)
        masked = " ".join(parts[:2]) + (" ****" if len(parts) > 2 else "")
        with self.lock:
            for i in range(len(self.lines) - 1, -1, -1):
                if self.lines[i] == (c.n, line):
                    self.lines[i] = (c.n, masked)
                    break

    def _read(self, c):
        """One line of the exchange (CR LF stripped); None at EOF."""
        raw = c.f.readline(16384)
        if not raw:
            return None
        with self.lock:
            self.lines.append((c.n, "****"))
        return raw.decode("latin-1").rstrip("\r\n")

    def _challenge(self, c, text):
        """334 text, then the client's line: bytes decoded, or a reply
        string to end with ("*" cancels, bad base64), or None at EOF."""
        c.say("334 " + text)
        line = self._read(c)
        if line is None:
            return None
        if line == "*":
            return R_SINK_AUTH_CANCELLED
        data = unb64(line)
        return R_SINK_AUTH_DECODE if data is None else data

    def _auth(self, c, line):
        parts = line.split()
        if len(parts) < 2 or len(parts) > 3:
            c.say("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        if c.auth_user is not None:
            c.say(R_SINK_AUTH_TWICE)
            return
        mech = parts[1].upper()
        if mech not in self.mechanisms:
            c.say(R_SINK_AUTH_MECH)
            return
        if c.tls is None and not self.auth_before_tls:
            c.say("530 5.7.0 Must issue a STARTTLS command first")
            return
        initial = parts[2] if len(parts) == 3 else None
        rec = {"conn": c.n, "mechanism": mech, "user": None, "initial": initial is not None,
               "tls": c.tls is not None, "ok": False, "reply": None}

        def first():
            if initial is None:
                return self._challenge(c, "")
            if initial == "=":
                return b""
            data = unb64(initial)
            return R_SINK_AUTH_DECODE if data is None else data

        secret_ok = False
        if mech == "PLAIN":
            data = first()
            if not isinstance(data, bytes):
                return self._end(c, rec, data)
            fields = data.split(b"\0")
            if len(fields) != 3:
                return self._end(c, rec, R_SINK_AUTH_DECODE)
            authz, user, password = (f.decode("utf-8", "replace") for f in fields)
            rec["user"] = user
            rec["authzid"] = authz
            secret_ok = user in self.users and self.users[user] == password and \
                authz in ("", user)
        elif mech == "LOGIN":
            user = b64("Username:")
            data = first() if initial is not None else self._challenge(c, user)
            if not isinstance(data, bytes):
                return self._end(c, rec, data)
            rec["user"] = data.decode("utf-8", "replace")
            data = self._challenge(c, b64("Password:"))
            if not isinstance(data, bytes):
                return self._end(c, rec, data)
            secret_ok = self.users.get(rec["user"]) == data.decode("utf-8", "replace")
        else:  # XOAUTH2: base64("user=" U ^A "auth=Bearer " T ^A ^A)
            data = first()
            if not isinstance(data, bytes):
                return self._end(c, rec, data)
            fields = {}
            for f in data.decode("utf-8", "replace").split("\x01"):
                if "=" in f:
                    k, v = f.split("=", 1)
                    fields[k] = v
            rec["user"] = fields.get("user")
            bad_form = not data.endswith(b"\x01\x01") or not fields.get(
                "auth", "").startswith("Bearer ")
            rec["well_formed"] = not bad_form
            token = fields.get("auth", "")[len("Bearer "):]
            secret_ok = (not bad_form and self.token is not None and token == self.token)
            if not secret_ok and self.auth_reply is None:
                # The error challenge; the client answers with an empty line.
                c.say("334 " + XOAUTH2_ERROR)
                if self._read(c) is None:
                    return self._end(c, rec, None)
        rec["ok"] = secret_ok
        if self.auth_reply is not None:
            rec["ok"] = False
            return self._end(c, rec, self.auth_reply)
        if secret_ok:
            c.auth_user = rec["user"]
            return self._end(c, rec, R_SINK_AUTH_OK)
        return self._end(c, rec, self.fail_reply)

    def _end(self, c, rec, reply):
        rec["reply"] = reply
        if reply is not None and not reply.startswith("235"):
            rec["ok"] = False
        with self.lock:
            self.auths.append(rec)
        if reply is None:
            return   # EOF: the session loop sees it next
        c.say(reply)
        if reply.startswith("421"):
            c.s = None   # the session ends

    def auth_log(self):
        with self.lock:
            return [dict(a) for a in self.auths]
