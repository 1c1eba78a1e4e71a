"""Test certificates for the TLS tests, made at run time with the openssl
command-line tool into a directory the test owns (a pytest tmp directory):
nothing here is ever committed, every private key is mode 0600.

make_pki(directory) returns a Pki whose attributes are Cert objects
(.cert, .key paths, .cn):
  ca            the test CA (its certificate is the trust anchor, ca.pem)
  server        RSA 2048, CN relay.test.example,
                SAN DNS:relay.test.example, DNS:mx.test.example
  server_ec     ECDSA P-256, same names
  other         RSA, CN/SAN other.test.example (a second name for SNI)
  client        client certificate (clientAuth), CN client.test.example
  rogue_ca      a CA nobody trusts
  rogue_client  client certificate signed by rogue_ca, CN rogue.test.example
  self_signed   RSA server certificate signed by itself, same names as server
  wrong_name    RSA server certificate from the test CA for wrong.test.example
"""
import os
import random
import subprocess

OPENSSL = "/usr/bin/openssl"

SERVER_NAMES = ("relay.test.example", "mx.test.example")

_REQ_CONFIG = """[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
"""

_EXTENSIONS = """[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[server_rsa]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @san

[server_ec]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @san

[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[san]
%s
"""


class Cert:
    def __init__(self, cert, key, cn):
        self.cert, self.key, self.cn = str(cert), str(key), cn

    def __repr__(self):
        return "Cert(%r, cn=%r)" % (self.cert, self.cn)


class Pki:
    pass


def openssl(*args, cwd=None):
    if not os.access(OPENSSL, os.X_OK):
        raise AssertionError("the openssl command-line tool is missing at %s "
                             "(apt-get install openssl)" % OPENSSL)
    r = subprocess.run([OPENSSL] + [str(a) for a in args], cwd=cwd,
                       capture_output=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("openssl %s failed:\n%s%s" % (
            " ".join(str(a) for a in args), r.stdout.decode(errors="replace"),
            r.stderr.decode(errors="replace")))
    return r.stdout.decode(errors="replace")


def _key(path, kind):
    if kind == "ec":
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", path)
    else:
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                "-out", path)
    os.chmod(path, 0o600)


def _cert(d, name, cn, kind, section, names=(), issuer=None):
    """Key, CSR and certificate for one subject; issuer None: self-signed."""
    key, csr, crt = d / (name + ".key"), d / (name + ".csr"), d / (name + ".pem")
    ext = d / (name + ".ext")
    ext.write_text(_EXTENSIONS % "\n".join("DNS.%d = %s" % (i + 1, n)
                                           for i, n in enumerate(names or ("x.invalid",))))
    reqcfg = d / "req.cnf"
    if not reqcfg.exists():
        reqcfg.write_text(_REQ_CONFIG)
    _key(key, kind)
    openssl("req", "-new", "-config", reqcfg, "-key", key, "-subj", "/CN=" + cn,
            "-out", csr)
    serial = str(random.SystemRandom().getrandbits(63) | 1)
    sign = (["-signkey", key] if issuer is None
            else ["-CA", issuer.cert, "-CAkey", issuer.key])
    openssl("x509", "-req", "-in", csr, *sign, "-set_serial", serial, "-days", "7",
            "-sha256", "-extfile", ext, "-extensions", section, "-out", crt)
    csr.unlink()
    ext.unlink()
    return Cert(crt, key, cn)


def make_pki(directory):
    """Every certificate the TLS tests use, under directory (a pathlib.Path
    that exists)."""
    d = directory
    os.chmod(d, 0o700)
    p = Pki()
    p.dir = d
    p.ca = _cert(d, "ca", "Postern Test CA", "rsa", "ca")
    p.server = _cert(d, "server", SERVER_NAMES[0], "rsa", "server_rsa", SERVER_NAMES, p.ca)
    p.server_ec = _cert(d, "server-ec", SERVER_NAMES[0], "ec", "server_ec", SERVER_NAMES,
                        p.ca)
    p.other = _cert(d, "other", "other.test.example", "rsa", "server_rsa",
                    ("other.test.example",), p.ca)
    p.client = _cert(d, "client", "client.test.example", "rsa", "client", (), p.ca)
    p.rogue_ca = _cert(d, "rogue-ca", "Rogue Test CA", "rsa", "ca")
    p.rogue_client = _cert(d, "rogue-client", "rogue.test.example", "rsa", "client", (),
                           p.rogue_ca)
    p.self_signed = _cert(d, "self-signed", SERVER_NAMES[0], "rsa", "server_rsa",
                          SERVER_NAMES)
    p.wrong_name = _cert(d, "wrong-name", "wrong.test.example", "rsa", "server_rsa",
                         ("wrong.test.example",), p.ca)
    (d / "req.cnf").unlink()
    for f in os.listdir(d):
        if f.endswith(".srl"):
            os.unlink(d / f)
    return p


def subject_cn(cert_path):
    """The subject CN of a PEM certificate file."""
    out = openssl("x509", "-in", cert_path, "-noout", "-subject", "-nameopt", "multiline")
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("commonName"):
            return line.split("=", 1)[1].strip()
    raise AssertionError("no CN in %s: %r" % (cert_path, out))


_STDNAMES = {}


def standard_cipher_name(openssl_name):
    """IANA name of a cipher suite given in OpenSSL's spelling (what Python's
    ssl reports): ECDHE-RSA-AES128-GCM-SHA256 ->
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256; TLS 1.3 names are the same."""
    if openssl_name.startswith("TLS_"):
        return openssl_name
    if not _STDNAMES:
        for line in openssl("ciphers", "-stdname", "ALL:@SECLEVEL=0").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "-":
                _STDNAMES[parts[2]] = parts[0]
    return _STDNAMES[openssl_name]
