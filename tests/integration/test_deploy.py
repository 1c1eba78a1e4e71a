"""The deployment files under deploy/ (deploy/README.md), each checked by
the tool that will read it, and against the real postern where that can be
done on one machine:

- deploy/systemd: `systemd-analyze verify` and `security --offline`, the
  directives the tier relies on, sysusers/tmpfiles into a scratch root, the
  sd_notify messages Type=notify needs (READY=1, RELOADING=1 then READY=1,
  STOPPING=1), and a postern run as root under the unit's capability
  bounding set, system call filter, address families and
  MemoryDenyWriteExecute, dropping to server.user, twice on the same spool;
- deploy/haproxy: `haproxy -c -dW`, then HAProxy with that file in front of
  a postern with PROXY protocol: client addresses arrive, /readyz drives
  the health check;
- deploy/prometheus: promtool check config/rules and the rule unit tests;
- deploy/kubernetes: every manifest parses, the StatefulSet, Services,
  ConfigMap and PodDisruptionBudget agree with each other and with the
  ConfigMap's postern.conf, which passes --check;
- deploy/seccomp: postern on io_uring under the Localhost profile;
- deploy/grafana and alerts.yml: every metric name, label and label value
  exists in a running postern's /metrics;
- deploy/postern-node.conf passes --check and agrees with the unit,
  HAProxy and the sysusers file; deploy/sysctl names existing keys.
"""
import ctypes
import errno
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

import conftest
from conftest import BINARY, BUILD, SLOW, RawClient, free_port, wait_until

try:
    import yaml
except ImportError:
    yaml = None
try:
    import seccomp
except ImportError:
    seccomp = None

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEPLOY = os.path.join(REPO, "deploy")
CTL = os.path.join(BUILD, "posternctl")
UNIT = os.path.join(DEPLOY, "systemd", "postern.service")
SYSUSERS = os.path.join(DEPLOY, "systemd", "postern.sysusers")
TMPFILES = os.path.join(DEPLOY, "systemd", "postern.tmpfiles")
NODE_CONF = os.path.join(DEPLOY, "postern-node.conf")
HAPROXY_CFG = os.path.join(DEPLOY, "haproxy", "haproxy.cfg")
PROM_DIR = os.path.join(DEPLOY, "prometheus")
K8S_DIR = os.path.join(DEPLOY, "kubernetes")
DASHBOARD = os.path.join(DEPLOY, "grafana", "postern-dashboard.json")
SECCOMP_PROFILE = os.path.join(DEPLOY, "seccomp", "postern-io-uring.json")
SYSCTL = os.path.join(DEPLOY, "sysctl", "90-postern.conf")

# The keys of the relay tier (DESIGN B.6, B.10) the files use.
TIER_KEYS = ("server.user", "server.proxy_protocol", "server.drain_timeout")


def read(path):
    with open(path) as f:
        return f.read()


def need_tool(name, hint):
    path = shutil.which(name)
    if not path:
        pytest.skip("%s is not installed (%s)" % (name, hint))
    return path


def need_yaml():
    if yaml is None:
        msg = "python3-yaml is not importable by %s: run scripts/install-deps.sh" % sys.executable
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def need_seccomp():
    if seccomp is None:
        msg = ("python3-seccomp is not importable by %s: run scripts/install-deps.sh"
               % sys.executable)
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def under_filter_env(env):
    """The environment for a sanitizer build that runs under a seccomp
    filter: LeakSanitizer stops the world with ptrace, which no service
    filter allows, so leak checking is left to the rest of the suite."""
    env = dict(env)
    if conftest.SANITIZE:
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    return env


def io_uring_works():
    """True when this process may set up an io_uring (kernel and seccomp)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    fd = libc.syscall(ctypes.c_long(425), ctypes.c_uint(4), params)
    if fd < 0:
        return False
    os.close(fd)
    return True


# --- libconfig text ---------------------------------------------------------

def strip_comments(text):
    """The text with # and // comments blanked (line numbers kept)."""
    out = []
    for line in text.split("\n"):
        quoted, cut = False, len(line)
        for i, ch in enumerate(line):
            if ch == '"' and (i == 0 or line[i - 1] != "\\"):
                quoted = not quoted
            elif not quoted and (ch == "#" or line.startswith("//", i)):
                cut = i
                break
        out.append(line[:cut])
    return "\n".join(out)


def conf_string(text, key):
    """The string value of `key = "..."` (first occurrence), or None."""
    m = re.search(r'\b%s\s*[=:]\s*"([^"]*)"' % re.escape(key), strip_comments(text))
    return m.group(1) if m else None


def duration_s(text):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)?\s*", text)
    assert m, "not a duration: %r" % text
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600,
                              "d": 86400}[m.group(2)]


def conf_duration_s(text, key, default):
    v = conf_string(text, key)
    return duration_s(v) if v is not None else default


def bindings_of(text):
    """Every ip:port in the bindings lists of the receive connectors."""
    body = strip_comments(text)
    m = re.search(r"\breceive_connectors\s*=\s*\(", body)
    assert m, "no receive_connectors"
    out = []
    for lst in re.findall(r"\bbindings\s*=\s*\[([^\]]*)\]", body[m.end():]):
        out += re.findall(r'"([^"]*)"', lst)
    return out


def port_of(hostport):
    return int(hostport.rsplit(":", 1)[1])


PATH_KEYS = ("spool_dir", "stats_socket", "log_file", "pickup_directory", "drop_directory")


def for_check(text, root):
    """The configuration with its absolute paths moved under root (same
    lines, so FILE:LINE: still points at the original) and, where the
    machine running the test has no such user, server.user replaced by the
    user running it (--check resolves the name)."""
    def move(m):
        return '%s = "%s%s"' % (m.group(1), root, m.group(2))
    text = re.sub(r'\b(%s)\s*=\s*"(/[^"]*)"' % "|".join(PATH_KEYS), move, text)
    m = re.search(r'^\s*user\s*=\s*"([^"]+)"', text, re.M)
    if m:
        try:
            pwd.getpwnam(m.group(1))
        except KeyError:
            me = pwd.getpwuid(os.getuid()).pw_name
            text = text[:m.start(1)] + me + text[m.end(1):]
    return text


def assert_check_passes(text, path, origin, tmp_path):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    with open(path, "w") as f:
        f.write(for_check(text, str(root)))
    os.chmod(path, 0o640)
    r = subprocess.run([BINARY, "-c", str(path), "--check"], capture_output=True,
                       timeout=20 * SLOW)
    err = r.stderr.decode()
    hint = ""
    if re.search(r'unknown setting "(user|proxy_protocol|drain_timeout)"', err):
        hint = ("\n(this postern does not know the relay-tier keys %s yet: DESIGN B.6/B.10)"
                % ", ".join(TIER_KEYS))
    assert r.returncode == 0, "postern --check refuses %s (lines as in the original):\n%s%s" % (
        origin, err, hint)
    return r.stdout.decode()


# --- systemd unit -----------------------------------------------------------

def parse_unit(text):
    """{section: {key: [values...]}}; comments and blank lines skipped."""
    sections, cur = {}, None
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            cur = sections.setdefault(s[1:-1], {})
            continue
        assert cur is not None and "=" in s, "odd unit line %r" % line
        k, v = s.split("=", 1)
        cur.setdefault(k.strip(), []).append(v.strip())
    return sections


def unit_service():
    return parse_unit(read(UNIT))["Service"]


def last(svc, key, default=None):
    return svc[key][-1] if key in svc else default


def systemd_timespan_s(v):
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", v):
        total += float(num) * {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600,
                               "ms": 0.001, "us": 1e-6}[unit]
    return total


_GROUPS = {}


def expand_syscalls(items):
    """Names of the system calls in a SystemCallFilter= list (groups
    expanded by this machine's systemd-analyze)."""
    out = set()
    for it in items:
        if not it.startswith("@"):
            out.add(it)
            continue
        if it not in _GROUPS:
            r = subprocess.run(["systemd-analyze", "syscall-filter", it], capture_output=True,
                               timeout=30)
            assert r.returncode == 0, "systemd-analyze syscall-filter %s: %s" % (
                it, r.stderr.decode())
            sub = [ln.strip() for ln in r.stdout.decode().splitlines()[1:]]
            _GROUPS[it] = expand_syscalls([s for s in sub if s and not s.startswith("#")])
        out |= _GROUPS[it]
    return out


def unit_allowed_syscalls(svc):
    """The allow list the unit's SystemCallFilter= lines add up to, in
    systemd's order: the first line decides allow-list mode, later ones add
    ("name") or remove ("~name")."""
    allowed = None
    for v in svc.get("SystemCallFilter", []):
        deny = v.startswith("~")
        names = expand_syscalls(v.lstrip("~").split())
        if allowed is None:
            assert not deny, "the unit's SystemCallFilter= must start with an allow list"
            allowed = set()
        allowed = allowed - names if deny else allowed | names
    return allowed


CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
        "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
        "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
        "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]


# The capabilities the root start needs before the drop (DESIGN B.6):
# binding :25, the uid/gid change and handing files over. The spool that
# already belongs to server.user is opened after the drop
# (test_unit_sandbox_privilege_drop starts twice on it).
UNIT_CAPS = {"CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN"}
# What postern keeps after the drop: binding below 1024 on a reload.
KEPT_CAPS = {"CAP_NET_BIND_SERVICE"}


def test_systemd_unit_verifies(tmp_path):
    """systemd-analyze verify finds nothing to say about the unit (its
    ExecStart= pointed at the built binary so the executable check runs),
    the directives the tier relies on are there, the system call filter
    lets io_uring through, and the offline security score stays low."""
    sa = need_tool("systemd-analyze", "scripts/install-deps.sh installs systemd")
    text = read(UNIT)
    svc = parse_unit(text)["Service"]
    assert svc.get("ExecStart") == ["/usr/sbin/postern -c /etc/postern/postern.conf"], svc.get("ExecStart")
    d = tmp_path / "units"
    d.mkdir()
    unit = d / "postern.service"
    unit.write_text(text.replace("/usr/sbin/postern", BINARY).replace("/usr/bin/posternctl", CTL))
    r = subprocess.run([sa, "verify", str(unit)], capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode()
    about = [ln for ln in out.splitlines() if "postern" in ln]
    assert r.returncode == 0 and not about, "systemd-analyze verify (exit %d):\n%s" % (
        r.returncode, out)

    # What the rest of the tier takes for granted.
    assert svc["Type"] == ["notify"]
    assert last(svc, "KillSignal") == "SIGTERM"
    assert last(svc, "Restart") == "on-failure"
    assert last(svc, "LimitNOFILE") == "65536"
    assert any(re.fullmatch(r"\+?/bin/kill -HUP \$MAINPID", v) for v in svc["ExecReload"]), \
        svc["ExecReload"]
    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                      ("PrivateTmp", "yes"), ("ProtectHome", "yes"),
                      ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
                      ("ProtectControlGroups", "yes"), ("RestrictNamespaces", "yes"),
                      ("LockPersonality", "yes"), ("MemoryDenyWriteExecute", "yes"),
                      ("SystemCallArchitectures", "native")):
        assert last(svc, key) == want, "%s=%r, expected %s" % (key, last(svc, key), want)
    assert "User" not in svc, "postern drops to server.user itself (DESIGN B.6)"
    # What the root start needs (the unit says why, one by one), nothing else.
    assert set(" ".join(svc["CapabilityBoundingSet"]).split()) == UNIT_CAPS
    assert svc.get("AmbientCapabilities", [""]) == [""]
    assert set(" ".join(svc["RestrictAddressFamilies"]).split()) == {
        "AF_INET", "AF_INET6", "AF_UNIX"}
    # A stop (SIGTERM) takes at most shutdown_grace; a drain in progress
    # (postern says STOPPING=1) up to drain_timeout more.
    node = read(NODE_CONF)
    need = conf_duration_s(node, "drain_timeout", 600) + conf_duration_s(node, "shutdown_grace", 30)
    assert systemd_timespan_s(last(svc, "TimeoutStopSec")) >= need, \
        "TimeoutStopSec=%s is shorter than drain_timeout + shutdown_grace (%ds)" % (
            last(svc, "TimeoutStopSec"), need)

    allowed = unit_allowed_syscalls(svc)
    for call in ("io_uring_setup", "io_uring_enter", "io_uring_register", "epoll_pwait",
                 "sendfile", "fdatasync", "setresuid", "setgroups", "chown", "setrlimit",
                 "sched_setaffinity"):
        assert call in allowed, "SystemCallFilter= refuses %s" % call
    for call in ("mount", "kexec_load", "init_module", "reboot", "swapon"):
        assert call not in allowed, "SystemCallFilter= allows %s" % call

    r = subprocess.run([sa, "security", "--offline=yes", str(unit)], capture_output=True,
                       timeout=60)
    out = (r.stdout + r.stderr).decode()
    m = re.search(r"Overall exposure level for postern\.service: (\d+(?:\.\d+)?)", out)
    assert m, out[-2000:]
    assert float(m.group(1)) <= 3.0, "exposure %s (> 3.0):\n%s" % (m.group(1), out)


def test_sysusers_and_tmpfiles(tmp_path):
    """The sysusers snippet creates the user the node configuration drops
    to; the tmpfiles snippet creates every directory the unit makes
    writable, owned by that user (into a scratch root, not this machine)."""
    su = need_tool("systemd-sysusers", "scripts/install-deps.sh installs systemd")
    tf = need_tool("systemd-tmpfiles", "scripts/install-deps.sh installs systemd")
    root = tmp_path / "root"
    for d in ("etc", "var/spool", "var/log", "run"):
        (root / d).mkdir(parents=True)
    r = subprocess.run([su, "--root=%s" % root, SYSUSERS], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    user = conf_string(read(NODE_CONF), "user")
    entry = [ln.split(":") for ln in (root / "etc" / "passwd").read_text().splitlines()
             if ln.startswith(user + ":")]
    assert entry, "sysusers did not create %r (server.user of postern-node.conf)" % user
    uid, gid = int(entry[0][2]), int(entry[0][3])
    assert entry[0][6] in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false"), entry
    r = subprocess.run([tf, "--create", "--root=%s" % root, TMPFILES], capture_output=True,
                       timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    svc = unit_service()
    for p in " ".join(svc["ReadWritePaths"]).split():
        path = root / p.lstrip("-").lstrip("/")
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (uid, gid), "%s is not owned by %s" % (p, user)
        assert st.st_mode & 0o007 == 0, "%s is open to others: %o" % (p, st.st_mode)


# --- sd_notify ----------------------------------------------------------------

class Notify:
    """The service manager's end of $NOTIFY_SOCKET: datagrams with their
    sender's pid (SO_PASSCRED), as systemd checks NotifyAccess=main."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o777)  # like /run/systemd/notify: any uid may send
        self.got = []  # (pid, {key: value})

    def wait_for(self, key, value="1", timeout=10):
        deadline = time.monotonic() + timeout * SLOW
        for pid, kv in self.got:
            if kv.get(key) == value:
                self.got.remove((pid, kv))
                return pid, kv
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s=%s on $NOTIFY_SOCKET within %.0fs; got %r"
                                     % (key, value, timeout * SLOW, self.got))
            self.sock.settimeout(left)
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            pid = None
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", cdata[:12])[0]
            kv = dict(ln.split("=", 1) for ln in data.decode().splitlines() if "=" in ln)
            if kv.get(key) == value:
                return pid, kv
            self.got.append((pid, kv))

    def close(self):
        self.sock.close()


class Daemon:
    """One postern started directly (for what the conftest fixture cannot
    set: environment, a wrapper that runs as root, paths outside tmp_path)."""

    def __init__(self, argv, log_path, env=None):
        self.log_path = str(log_path)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, env=env)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_log(self, pattern, timeout=15):
        def seen():
            if self.proc.poll() is not None:
                raise AssertionError("postern exited %s:\n%s" % (self.proc.returncode, self.log()))
            return re.search(pattern, self.log())
        return wait_until(seen, timeout, what="log line %r" % pattern)

    def stop(self, sig=signal.SIGTERM, timeout=40):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("postern did not exit within %ds:\n%s" % (timeout, self.log()))
        self._log.close()
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._log.closed:
            self._log.close()


def http_status(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def ctl(sock, *args, wrapper=()):
    r = subprocess.run(list(wrapper) + [CTL, "-s", str(sock)] + list(args),
                       capture_output=True, timeout=30)
    return r.returncode, r.stdout.decode() + r.stderr.decode()


def simple_config(spool, port, mport, sock, extra="", send=None, host="127.0.0.1"):
    send = send or ('{ name = "Hold"; address_spaces = [ "*" ]; smart_hosts = [ "127.0.0.1:%d" ]; }'
                    % free_port())
    return """server = {
  hostname = "%s";
  workers = 2;
  spool_dir = "%s";
  stats_socket = "%s";
  metrics_listen = "127.0.0.1:%d";
  shutdown_grace = "5s";
%s};
accepted_domains = ( { domain = "corp.example"; type = "authoritative"; } );
receive_connectors = (
  { name = "Default Frontend"; bindings = [ "%s:%d" ]; remote_ip_ranges = [ "0.0.0.0/0" ];
    permission_groups = [ "anonymous" ]; tarpit_interval = "0s"; },
  { name = "Anonymous Relay"; bindings = [ "%s:%d" ]; remote_ip_ranges = [ "127.0.0.10" ];
    permission_groups = [ "anonymous_relay" ]; tarpit_interval = "0s"; }
);
send_connectors = ( %s );
queue = { retry_interval = "1h"; };
""" % (conftest.HOSTNAME, spool, sock, mport, extra, host, port, host, port, send)


def test_sd_notify(tmp_path):
    """Type=notify: READY=1 from the main pid once the listeners accept
    and /readyz says 200; on SIGHUP RELOADING=1 and then READY=1 again
    (systemd 252 keeps the unit "reloading" until it comes); STOPPING=1 on
    SIGTERM, and on `posternctl drain`; then exit 0 (an empty queue ends
    the drain at once)."""
    for how in ("sigterm", "drain"):
        d = tmp_path / how
        d.mkdir()
        port, mport = free_port(), free_port()
        conf = d / "postern.conf"
        conf.write_text(simple_config(d / "spool", port, mport, d / "stats.sock"))
        n = Notify(d / "notify")
        env = dict(os.environ, NOTIFY_SOCKET=n.path)
        p = Daemon([BINARY, "-c", str(conf)], d / "log", env=env)
        try:
            pid, _ = n.wait_for("READY")
            assert pid == p.proc.pid, "READY=1 came from pid %s, not the main pid %d" % (
                pid, p.proc.pid)
            # Ready means ready: the listener and /readyz answer at once.
            c = RawClient(port, "127.0.0.50")
            assert c.greeting.startswith("220 "), c.greeting
            c.cmd("QUIT")
            c.close()
            assert http_status(mport, "/readyz") == 200
            if how == "sigterm":
                p.proc.send_signal(signal.SIGHUP)
                n.wait_for("RELOADING")
                pid, _ = n.wait_for("READY")
                assert pid == p.proc.pid
                p.proc.send_signal(signal.SIGTERM)
            else:
                rc, out = ctl(d / "stats.sock", "drain")
                assert rc == 0, out
            pid, _ = n.wait_for("STOPPING")
            assert pid == p.proc.pid
            rc = p.stop(timeout=30)
            assert rc == 0, "postern exited %s after %s:\n%s" % (rc, how, p.log())
        finally:
            p.kill()
            n.close()


# --- the unit's sandbox, approximated without systemd as PID 1 ---------------

SANDBOX_WRAPPER = r"""
import ctypes, errno, json, os, socket, sys, seccomp
spec = json.load(open(sys.argv[1]))
libc = ctypes.CDLL(None, use_errno=True)
def prctl(*a):
    if libc.prctl(*[ctypes.c_ulong(x) for x in a]) != 0:
        raise OSError(ctypes.get_errno(), "prctl%r" % (a,))
# CapabilityBoundingSet=: root keeps, across execve, only these.
last = int(open("/proc/sys/kernel/cap_last_cap").read())
for cap in range(last + 1):
    if cap not in spec["caps"]:
        prctl(24, cap, 0, 0, 0)                       # PR_CAPBSET_DROP
prctl(47, 4, 0, 0, 0)                                 # AmbientCapabilities= (none)
f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(spec["errno"]))
special = {"socket", "mmap", "mprotect", "pkey_mprotect", "shmat", "clone", "clone3",
           "unshare", "setns"}
for name in spec["allow"]:
    if name in special:
        continue
    try:
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) < 0:
            continue                                  # not a call of this architecture
        f.add_rule(seccomp.ALLOW, name)
    except (ValueError, RuntimeError):
        continue
allow = set(spec["allow"])
# RestrictAddressFamilies=
if "socket" in allow:
    for fam in spec["families"]:
        f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, fam))
# MemoryDenyWriteExecute=: no W+X mapping, no mapping made executable later.
W, X = 0x2, 0x4
if "mmap" in allow:
    if spec["mdwe"]:
        for ok in (0, W, X):
            f.add_rule(seccomp.ALLOW, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, W | X, ok))
    else:
        f.add_rule(seccomp.ALLOW, "mmap")
for name in ("mprotect", "pkey_mprotect"):
    if name in allow:
        if spec["mdwe"]:
            f.add_rule(seccomp.ALLOW, name, seccomp.Arg(2, seccomp.MASKED_EQ, X, 0))
        else:
            f.add_rule(seccomp.ALLOW, name)
if "shmat" in allow:
    f.add_rule(seccomp.ALLOW, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, 0o100000, 0))
# RestrictNamespaces=yes: no namespace flags; clone3 (flags out of reach
# in a struct) answers ENOSYS so that libc falls back to clone, as systemd does.
NS = 0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x02000000
if "clone" in allow:
    f.add_rule(seccomp.ALLOW, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, NS, 0))
if "clone3" in allow:
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
if "unshare" in allow:
    f.add_rule(seccomp.ALLOW, "unshare", seccomp.Arg(0, seccomp.MASKED_EQ, NS, 0))
f.load()                                              # and NoNewPrivileges=yes
os.execv(sys.argv[2], sys.argv[2:])
"""


def sandbox_spec(svc):
    caps = " ".join(svc["CapabilityBoundingSet"]).split()
    fams = " ".join(svc["RestrictAddressFamilies"]).split()
    return {
        "caps": [CAPS.index(c) for c in caps],
        "allow": sorted(unit_allowed_syscalls(svc)),
        "errno": getattr(errno, last(svc, "SystemCallErrorNumber", "EPERM")),
        "families": [getattr(socket, f) for f in fams],
        "mdwe": last(svc, "MemoryDenyWriteExecute") == "yes",
    }


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def low_port_binding():
    """127.0.0.77:25 when it is free and binding it needs a capability
    (so the run shows CAP_NET_BIND_SERVICE is enough), else a high port."""
    try:
        start = int(read("/proc/sys/net/ipv4/ip_unprivileged_port_start"))
    except (OSError, ValueError):
        start = 1024
    if start > 25:
        try:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.77", 25))
            return "127.0.0.77", 25
        except OSError:
            pass
    return "127.0.0.1", free_port()


class HostClient(RawClient):
    """RawClient towards another loopback address than 127.0.0.1."""

    def __init__(self, host, port, source="127.0.0.50", timeout=10, greet=True):
        self.timeout = timeout * SLOW
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((source, 0))
        self.sock.settimeout(self.timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.eof = False
        self.greeting = self.reply() if greet else None


def relay_one(host, port, source, rcpt):
    c = HostClient(host, port, source)
    try:
        assert c.greeting.startswith("220 "), c.greeting
        c.cmd("EHLO client.example")
        assert c.cmd("MAIL FROM:<app@host.example>").startswith("250 ")
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        assert r.startswith("250 "), r
        assert c.cmd("DATA").startswith("354 ")
        c.send("Subject: deploy\r\n\r\nbody\r\n.\r\n")
        r = c.reply()
        assert r.startswith("250 2.6.0 "), r
        c.cmd("QUIT")
    finally:
        c.close()


def test_unit_sandbox_privilege_drop():
    """postern started as root under the unit's CapabilityBoundingSet=,
    SystemCallFilter= (groups expanded by systemd-analyze),
    RestrictAddressFamilies=, MemoryDenyWriteExecute= and NoNewPrivileges=
    (no systemd PID 1 here: a wrapper applies them as systemd would) binds
    a port below 1024, runs on io_uring, drops to server.user keeping only
    CAP_NET_BIND_SERVICE, relays, reloads, stops with 0, and starts again
    on the spool it now owns, finding the message it left there."""
    if os.geteuid() != 0:
        pytest.skip("needs root: postern starts as root to drop to server.user, as under the unit")
    need_seccomp()
    need_tool("systemd-analyze", "scripts/install-deps.sh installs systemd")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody to drop to")
    svc = unit_service()
    base = tempfile.mkdtemp(prefix="postern-sandbox-", dir="/tmp")
    try:
        os.chmod(base, 0o755)  # server.user must reach its spool and drop directory
        spec = os.path.join(base, "sandbox.json")
        with open(spec, "w") as f:
            json.dump(sandbox_spec(svc), f)
        drop = os.path.join(base, "drop")
        os.mkdir(drop, 0o750)
        os.chown(drop, nobody.pw_uid, nobody.pw_gid)
        run = os.path.join(base, "run")  # RuntimeDirectory=: root's, 0755
        os.mkdir(run, 0o755)
        sock = os.path.join(run, "stats.sock")
        spool = os.path.join(base, "spool")
        host, port = low_port_binding()
        mport = free_port()
        send = ('{ name = "Drop"; address_spaces = [ "*" ]; drop_directory = "%s"; },\n'
                '  { name = "Hold"; address_spaces = [ "hold.example" ]; '
                'smart_hosts = [ "127.0.0.1:%d" ]; }' % (drop, free_port()))
        conf = os.path.join(base, "postern.conf")
        with open(conf, "w") as f:
            f.write(simple_config(spool, port, mport, sock, send=send, host=host,
                                  extra='  user = "nobody";\n  io_backend = "auto";\n'))
        os.chmod(conf, 0o640)
        os.chown(conf, 0, nobody.pw_gid)  # as installed: root:postern 0640
        uring = io_uring_works()
        argv = [sys.executable, "-c", SANDBOX_WRAPPER, spec, BINARY, "-c", conf]
        for round_ in (1, 2):
            n = Notify(os.path.join(base, "notify%d" % round_))
            env = under_filter_env(dict(os.environ, NOTIFY_SOCKET=n.path))
            p = Daemon(argv, os.path.join(base, "log%d" % round_), env=env)
            try:
                start = p.wait_log(r"event=start [^\n]*", 20).group(0)
                if uring:
                    assert " io_backend=io_uring " in start, (
                        "the unit's system call filter keeps postern off io_uring:\n" + p.log())
                pid, _ = n.wait_for("READY", timeout=15)
                assert pid == p.proc.pid
                st = proc_status(p.proc.pid)
                want = str(nobody.pw_uid)
                assert st["Uid"].split() == [want] * 4, st["Uid"]
                assert st["Gid"].split() == [str(nobody.pw_gid)] * 4, st["Gid"]
                assert st["Groups"] == "", "supplementary groups kept: %r" % st["Groups"]
                kept = sum(1 << CAPS.index(c) for c in KEPT_CAPS)
                for k in ("CapInh", "CapAmb"):
                    assert int(st[k], 16) == 0, "%s=%s after the drop" % (k, st[k])
                for k in ("CapPrm", "CapEff"):
                    assert int(st[k], 16) & ~kept == 0, "%s=%s after the drop (more than %s)" % (
                        k, st[k], sorted(KEPT_CAPS))
                assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
                assert os.stat(sock).st_uid == nobody.pw_uid, "the stats socket is not server.user's"
                assert os.stat(spool).st_uid == nobody.pw_uid, "the spool is not server.user's"
                assert http_status(mport, "/readyz") == 200
                rc, out = ctl(sock, "show info")
                assert rc == 0, out
                if round_ == 1:
                    relay_one(host, port, "127.0.0.10", "someone@other.example")
                    wait_until(lambda: [x for x in os.listdir(drop) if x.endswith(".eml")], 15,
                               what="the message in the drop directory")
                    relay_one(host, port, "127.0.0.10", "kept@hold.example")
                    # ExecReload=+/bin/kill -HUP $MAINPID: from outside the sandbox.
                    p.proc.send_signal(signal.SIGHUP)
                    p.wait_log(r"event=reload[^\n]*")
                    assert "level=error" not in p.log(), p.log()
                else:
                    assert re.search(r"event=recover [^\n]*messages=1\b", p.log()), (
                        "the message held in the spool was not recovered:\n" + p.log())
                rc = p.stop(timeout=systemd_timespan_s(last(svc, "TimeoutStopSec", "90s")))
                assert rc == 0, "exit %s:\n%s" % (rc, p.log())
            except AssertionError as e:
                raise AssertionError("round %d (%s): %s" % (
                    round_, "fresh spool" if round_ == 1 else "spool owned by server.user", e))
            finally:
                p.kill()
                n.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- HAProxy ----------------------------------------------------------------

def haproxy_bin():
    hp = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(hp, os.X_OK):
        pytest.skip("haproxy is not installed (scripts/install-deps.sh installs it)")
    return hp


def haproxy_lines():
    return [ln.split("#", 1)[0].rstrip() for ln in read(HAPROXY_CFG).splitlines()]


def test_haproxy_config_valid():
    """haproxy -c in zero-warning mode, and the pieces the tier needs."""
    hp = haproxy_bin()
    r = subprocess.run([hp, "-c", "-dW", "-f", HAPROXY_CFG], capture_output=True, timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    text = "\n".join(haproxy_lines())
    for needle in (r"^\s*mode tcp$", r"^\s*balance leastconn$",
                   r"^\s*option httpchk GET /readyz$", r"^\s*http-check expect status 200$",
                   r"\bsend-proxy-v2\b", r"^\s*bind [^\n]*:25\b", r"^\s*maxconn \d+"):
        assert re.search(needle, text, re.M), "haproxy.cfg has no %r" % needle
    servers = re.findall(r"^\s*server \S+ (\S+)", text, re.M)
    assert len(servers) >= 3 and all(port_of(s) == 25 for s in servers), servers
    timeouts = dict(re.findall(r"^\s*timeout (\S+) (\S+)$", text, re.M))
    node = read(NODE_CONF)
    idle = conf_duration_s(node, "connection_inactivity_timeout", 300)
    for side in ("client", "server"):
        t = systemd_timespan_s(timeouts[side])
        assert t >= 300 and t > idle, "timeout %s %s: SMTP needs 5m+, and more than postern's %ds" % (
            side, timeouts[side], idle)
    assert systemd_timespan_s(timeouts["connect"]) <= 5


def stats_csv(sock):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.settimeout(5)
        s.connect(sock)
        s.sendall(b"show stat\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    lines = data.decode().splitlines()
    head = lines[0].lstrip("# ").split(",")
    return [dict(zip(head, ln.split(","))) for ln in lines[1:] if ln]


def test_haproxy_in_front_of_postern(postern, tmp_path):
    """deploy/haproxy/haproxy.cfg (listen address, servers, limits and the
    global process settings rewritten for one machine; balance, health
    check, send-proxy-v2 and timeouts kept) in front of a postern with
    server.proxy_protocol: the client's address reaches postern through
    PROXY v2 (it selects the connector), a direct client gets no greeting,
    and a drain turns the node DOWN through /readyz (L7STS 503)."""
    hp = haproxy_bin()
    sock, mport = tmp_path / "stats.sock", free_port()
    port = free_port()
    p = postern(
        """receive_connectors = (
  { name = "Default Frontend"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "0.0.0.0/0" ]; permission_groups = [ "anonymous" ]; },
  { name = "Anonymous Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.10" ]; permission_groups = [ "anonymous_relay" ]; }
);
""",
        ports=[port],
        server_extra=('  stats_socket = "%s";\n  metrics_listen = "127.0.0.1:%d";\n'
                      '  drain_timeout = "2m";\n'
                      '  proxy_protocol = { bindings = [ "127.0.0.1:%d" ]; '
                      'trusted_proxies = [ "127.0.0.1" ]; };\n' % (sock, mport, port)))
    hport = free_port()
    hsock = str(tmp_path / "haproxy.sock")
    cfg = read(HAPROXY_CFG)
    node_mport = port_of(conf_string(read(NODE_CONF), "metrics_listen"))

    def sub(pattern, repl, text):
        new, n = re.subn(pattern, repl, text, flags=re.M)
        assert n >= 1, "haproxy.cfg: nothing matches %r" % pattern
        return new
    cfg = sub(r"^\s*(user|group|chroot|daemon|log /dev/log)\b.*$", "", cfg)
    cfg = sub(r"^(\s*)stats socket \S+", r"\1stats socket %s" % hsock, cfg)
    cfg = sub(r"^(\s*)maxconn \d+", r"\1maxconn 200", cfg)
    cfg = sub(r"^(\s*bind )\S*:25\b", r"\g<1>127.0.0.1:%d" % hport, cfg)
    cfg = sub(r"^(\s*bind )127\.0\.0\.1:8404\b", r"\g<1>127.0.0.1:%d" % free_port(), cfg)
    cfg = sub(r"\bcheck port %d\b" % node_mport, "check port %d" % mport, cfg)
    cfg = sub(r"\binter \S+", "inter 200ms", cfg)
    cfg = sub(r"\bmaxconn 5000\b", "maxconn 50", cfg)
    servers = re.findall(r"^\s*server .*$", cfg, re.M)
    assert servers, "no server lines"
    cfg = cfg.replace(servers[0], "    server relay1 127.0.0.1:%d" % port)
    for s in servers[1:]:
        cfg = cfg.replace(s, "")
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg)
    hlog = open(tmp_path / "haproxy.log", "wb")
    h = subprocess.Popen([hp, "-db", "-f", str(path)], stdin=subprocess.DEVNULL,
                         stdout=hlog, stderr=hlog)
    try:
        def node_status():
            if h.poll() is not None:
                raise AssertionError("haproxy exited %s:\n%s" % (
                    h.returncode, (tmp_path / "haproxy.log").read_text()))
            try:
                rows = [r for r in stats_csv(hsock) if r.get("svname") == "relay1"]
            except OSError:
                return None
            return rows[0] if rows else None
        wait_until(lambda: (node_status() or {}).get("status") == "UP", 10,
                   what="haproxy to see the node UP through /readyz")
        # The relay host's address arrives through PROXY v2: relay allowed.
        c = RawClient(hport, "127.0.0.10")
        assert c.greeting.startswith("220 "), c.greeting
        ehlo = c.cmd("EHLO client.example")
        assert "[127.0.0.10]" in ehlo[0], ehlo
        assert c.cmd("MAIL FROM:<app@host.example>").startswith("250 ")
        assert c.cmd("RCPT TO:<x@other.example>").startswith("250 ")
        c.cmd("QUIT")
        c.close()
        # Anyone else: the default connector, no relay.
        c = RawClient(hport, "127.0.0.50")
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<app@host.example>")
        assert c.cmd("RCPT TO:<x@other.example>") == conftest.R_UNABLE_TO_RELAY
        c.cmd("QUIT")
        c.close()
        # Straight to the node, from outside trusted_proxies: no greeting.
        c = RawClient(port, "127.0.0.50", greet=False)
        c.expect_closed(timeout=5)
        c.close()
        # A message that stays queued keeps the drain going (delivery fails).
        relay_one("127.0.0.1", hport, "127.0.0.10", "kept@other.example")
        rc, out = ctl(sock, "drain")
        assert rc == 0, out
        wait_until(lambda: (node_status() or {}).get("status") == "DOWN", 10,
                   what="haproxy to mark the draining node DOWN")
        st = node_status()
        assert (st["check_status"], st["check_code"]) == ("L7STS", "503"), st
    finally:
        h.terminate()
        h.wait(timeout=10)
        hlog.close()
    p.stop()


# --- Prometheus -------------------------------------------------------------

def promtool():
    path = shutil.which("promtool") or os.path.join(REPO, "build-tools", "promtool")
    if not os.access(path, os.X_OK):
        pytest.skip("no promtool (scripts/fetch-promtool.sh puts one in build-tools/)")
    return path


@pytest.mark.parametrize("args", [
    ("check", "config", "prometheus.yml"),
    ("check", "rules", "alerts.yml"),
    ("test", "rules", "alerts_test.yml"),
], ids=lambda a: " ".join(a))
def test_promtool(args):
    r = subprocess.run([promtool()] + list(args), cwd=PROM_DIR, capture_output=True,
                       timeout=60)
    out = (r.stdout + r.stderr).decode()
    assert r.returncode == 0 and "SUCCESS" in out, out


# --- Kubernetes -------------------------------------------------------------

def k8s_docs():
    need_yaml()
    files = sorted(glob.glob(os.path.join(K8S_DIR, "*.yaml")) +
                   glob.glob(os.path.join(K8S_DIR, "*.yml")))
    assert files, "no manifests in deploy/kubernetes"
    docs = []
    for f in files:
        try:
            with open(f) as fh:
                loaded = [d for d in yaml.safe_load_all(fh) if d is not None]
        except yaml.YAMLError as e:
            raise AssertionError("%s: %s" % (f, e))
        assert loaded, "%s holds no document" % f
        for d in loaded:
            assert isinstance(d, dict) and d.get("kind") and d.get("apiVersion"), (f, d)
            if d["kind"] != "Kustomization":
                assert d.get("metadata", {}).get("name"), "%s: a %s without a name" % (f, d["kind"])
            docs.append((os.path.basename(f), d))
    return docs


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_kubernetes_manifests(tmp_path):
    docs = k8s_docs()
    kinds = {}
    for f, d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    for need in ("StatefulSet", "ConfigMap", "Service", "PodDisruptionBudget"):
        assert need in kinds, "no %s in deploy/kubernetes" % need
    for k in kinds.get("Kustomization", []):
        listed = set(k.get("resources", []))
        present = {f for f, d in docs if d["kind"] != "Kustomization"}
        assert listed == present, "kustomization resources %r, manifests %r" % (listed, present)

    assert len(kinds["StatefulSet"]) == 1
    sts = kinds["StatefulSet"][0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert matches(spec["selector"]["matchLabels"], labels)
    assert len(pod["containers"]) == 1
    ctr = pod["containers"][0]

    # The configuration: a ConfigMap mounted where -c points, passing --check.
    cmd = ctr.get("command", []) + ctr.get("args", [])
    assert "-c" in cmd, cmd
    conf_path = cmd[cmd.index("-c") + 1]
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    cm_mount = mounts.get(os.path.dirname(conf_path))
    assert cm_mount, "nothing mounted at %s" % os.path.dirname(conf_path)
    cm_name = vols[cm_mount["name"]]["configMap"]["name"]
    cms = [c for c in kinds["ConfigMap"] if c["metadata"]["name"] == cm_name]
    assert cms, "the StatefulSet mounts ConfigMap %r, which is not here" % cm_name
    key = os.path.basename(conf_path)
    conf = cms[0]["data"][key]
    assert_check_passes(conf, tmp_path / "k8s.conf", "the ConfigMap's %s" % key, tmp_path)

    # Its paths on volumes (the root file system is read-only).
    assert ctr["securityContext"].get("readOnlyRootFilesystem") is True
    spool = conf_string(conf, "spool_dir")
    vct = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    assert vct, "no volumeClaimTemplates: each pod needs its own spool volume"
    on_claim = [m for m in ctr["volumeMounts"] if m["name"] in vct and
                (spool == m["mountPath"] or spool.startswith(m["mountPath"].rstrip("/") + "/"))]
    assert on_claim, "spool_dir %s is not on a volumeClaimTemplate volume" % spool
    stats = conf_string(conf, "stats_socket")
    assert stats, "no stats_socket: the preStop drain needs it"
    sdir = mounts.get(os.path.dirname(stats))
    assert sdir and "emptyDir" in vols[sdir["name"]], "the stats socket's directory is not an emptyDir"

    # Probes on the metrics port; the preStop drain on the stats socket.
    mlisten = conf_string(conf, "metrics_listen")
    assert mlisten, "no metrics_listen: the probes need it"
    ports = {p_.get("name"): p_["containerPort"] for p_ in ctr["ports"]}

    def port_num(p_):
        return ports[p_] if isinstance(p_, str) else p_
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        hg = ctr[probe]["httpGet"]
        assert hg["path"] == path, (probe, hg)
        assert port_num(hg["port"]) == port_of(mlisten), (probe, hg, mlisten)
    pre = " ".join(ctr["lifecycle"]["preStop"]["exec"]["command"])
    assert re.search(r"posternctl -s %s drain\b" % re.escape(stats), pre), pre
    drain = conf_duration_s(conf, "drain_timeout", 600)
    grace = conf_duration_s(conf, "shutdown_grace", 30)
    assert pod["terminationGracePeriodSeconds"] >= drain + grace, (
        "terminationGracePeriodSeconds %s < drain_timeout %ds + shutdown_grace %ds" % (
            pod["terminationGracePeriodSeconds"], drain, grace))

    # Security context.
    psc, csc = pod.get("securityContext", {}), ctr["securityContext"]
    assert psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True
    assert (csc.get("runAsUser") or psc.get("runAsUser") or 0) != 0
    assert csc.get("allowPrivilegeEscalation") is False
    assert "ALL" in csc["capabilities"]["drop"]
    added = set(csc["capabilities"].get("add", []))
    assert added <= {"NET_BIND_SERVICE"}, added
    seccomp_type = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    assert seccomp_type in ("RuntimeDefault", "Localhost"), seccomp_type
    binds = bindings_of(conf)
    for b in binds:
        # Non-root without ambient capabilities cannot bind below 1024.
        assert port_of(b) >= 1024, "a non-root pod cannot bind %s (use 2525 and map 25 in the Service)" % b
        assert port_of(b) in ports.values(), "binding %s is not a containerPort" % b

    # The image (deploy/Dockerfile, when there is one) has the programs
    # where the command and the preStop hook look, and runs as runAsUser.
    dockerfile = os.path.join(DEPLOY, "Dockerfile")
    if os.path.exists(dockerfile):
        df = read(dockerfile)
        installed = set()
        for m in re.finditer(r"^COPY\s+(?:--\S+\s+)*(.+)$", df, re.M):
            parts = m.group(1).split()
            dest = parts[-1]
            for src in parts[:-1]:
                installed.add(os.path.join(dest, os.path.basename(src)) if dest.endswith("/")
                              else dest)
        for prog in (cmd[0], re.search(r"(\S*posternctl)\b", pre).group(1)):
            assert prog in installed, "%s is not where deploy/Dockerfile puts it (%r)" % (
                prog, sorted(installed))
        m = re.search(r"^USER\s+(\d+)", df, re.M)
        if m:
            assert int(m.group(1)) == (csc.get("runAsUser") or psc.get("runAsUser")), (
                "runAsUser differs from the image's USER %s" % m.group(1))

    # Services: a headless one (the serviceName) and one taking SMTP on 25.
    svcs = {s["metadata"]["name"]: s for s in kinds["Service"]}
    head = svcs.get(spec["serviceName"])
    assert head and head["spec"].get("clusterIP") == "None", (
        "serviceName %r is not a headless Service" % spec["serviceName"])
    for s in svcs.values():
        assert matches(s["spec"]["selector"], labels), s["metadata"]["name"]
    smtp = [s for s in svcs.values() if s["spec"].get("clusterIP") != "None" and
            any(p_["port"] == 25 for p_ in s["spec"]["ports"])]
    assert smtp, "no Service takes SMTP on port 25"
    for p_ in smtp[0]["spec"]["ports"]:
        if p_["port"] == 25:
            assert port_num(p_["targetPort"]) in [port_of(b) for b in binds], p_
    for pdb in kinds["PodDisruptionBudget"]:
        assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
        assert pdb["spec"].get("maxUnavailable") == 1 or "minAvailable" in pdb["spec"]


# --- seccomp profile ----------------------------------------------------------

PROFILE_WRAPPER = r"""
import errno, json, os, sys, seccomp
prof = json.load(open(sys.argv[1]))
assert prof["defaultAction"] == "SCMP_ACT_ERRNO"
f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(prof.get("defaultErrnoRet", errno.EPERM)))
for group in prof["syscalls"]:
    assert group["action"] == "SCMP_ACT_ALLOW" and not group.get("args"), group
    for name in group["names"]:
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) >= 0:
            f.add_rule(seccomp.ALLOW, name)   # the runtime skips other architectures' names too
f.load()
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_seccomp_profile_keeps_io_uring(postern, tmp_path, monkeypatch):
    """Under deploy/seccomp/postern-io-uring.json (the Localhost profile for
    Kubernetes), loaded as the runtime would, postern starts on io_uring,
    relays a message into a drop directory, reloads and stops with 0, and
    posternctl and the preStop shell loop work too."""
    need_seccomp()
    monkeypatch.setattr(conftest, "IO_BACKEND", None)
    for k, v in under_filter_env(os.environ).items():
        if os.environ.get(k) != v:
            monkeypatch.setenv(k, v)
    prof = json.load(open(SECCOMP_PROFILE))
    names = {n for g in prof["syscalls"] for n in g["names"]}
    for call in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        assert call in names
    for call in ("mount", "kexec_load", "init_module", "bpf", "ptrace", "reboot"):
        assert call not in names, "the profile allows %s" % call
    wrapper = [sys.executable, "-c", PROFILE_WRAPPER, SECCOMP_PROFILE]
    sock, drop = tmp_path / "stats.sock", tmp_path / "drop"
    drop.mkdir()
    p = postern("""receive_connectors = (
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ]; remote_ip_ranges = [ "127.0.0.0/8" ];
    permission_groups = [ "anonymous_relay" ]; }
);
send_connectors = ( { name = "Drop"; address_spaces = [ "*" ]; drop_directory = "%s"; } );
""" % drop, wrapper=wrapper,
                server_extra='  io_backend = "auto";\n  stats_socket = "%s";\n' % sock)
    start = re.findall(r"[^\n]*event=start [^\n]*", p.stderr())[-1]
    if io_uring_works():
        assert " io_backend=io_uring " in start, "the profile keeps postern off io_uring:\n" + p.stderr()
    assert "level=error" not in p.stderr(), p.stderr()
    relay_one("127.0.0.1", p.port, "127.0.0.10", "someone@other.example")
    wait_until(lambda: [x for x in os.listdir(drop) if x.endswith(".eml")], 15,
               what="the message in the drop directory")
    rc, out = ctl(sock, "show info", wrapper=wrapper)
    assert rc == 0, out
    shell = shutil.which("sh")
    r = subprocess.run(wrapper + [shell, "-c", '%s -s %s show info >/dev/null && echo ok'
                                  % (CTL, sock)], capture_output=True, timeout=30)
    assert r.stdout.strip() == b"ok", r
    p.signal(signal.SIGHUP)
    wait_until(lambda: "event=reload" in p.stderr(), 10, what="event=reload")
    p.stop()


# --- metric names in the dashboard and the alerts ------------------------------

def metric_families(text):
    """{family: {"type": t, "labels": {label: {values}}}} from /metrics."""
    fam = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            fam[m.group(1)] = {"type": m.group(2), "labels": {}}
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        assert m, line
        name = m.group(1)
        for suf in ("_bucket", "_sum", "_count"):
            if name not in fam and name.endswith(suf) and name[:-len(suf)] in fam:
                name = name[:-len(suf)]
        assert name in fam, "sample %r before its # TYPE" % line
        for k, v in re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""):
            fam[name]["labels"].setdefault(k, set()).add(v)
    return fam


def dashboard_exprs(dash):
    out = []

    def walk(panels, where):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append(("panel %r" % p.get("title"), t["expr"], t.get("legendFormat", "")))
            walk(p.get("panels", []), where)
    walk(dash["panels"], "")
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            out.append(("variable %r" % v["name"], q, ""))
    return out


def alert_exprs():
    need_yaml()
    rules = yaml.safe_load(open(os.path.join(PROM_DIR, "alerts.yml")))
    out = []
    for g in rules["groups"]:
        for r in g["rules"]:
            text = " ".join(r.get("annotations", {}).values())
            out.append(("alert %s" % (r.get("alert") or r.get("record")), r["expr"], text))
    return out


# Label values that one running postern cannot show all of at once.
OTHER_VALUES = {("postern_io_backend_info", "backend"): {"io_uring", "epoll"}}


def check_expr(where, expr, families, jobs, text):
    """Every metric in expr exists with the labels and label values used."""
    problems = []
    names = set()
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\{([^}]*)\})?", expr):
        name = m.group(1)
        if not (name.startswith("postern") or name == "up"):
            continue
        fam, base = None, name
        if name in families:
            fam = families[name]
        else:
            for suf in ("_bucket", "_sum", "_count"):
                b = name[:-len(suf)]
                if name.endswith(suf) and families.get(b, {}).get("type") == "histogram":
                    fam, base = families[b], b
        if fam is None:
            problems.append("%s: no metric %r in postern's /metrics" % (where, name))
            continue
        names.add(base)
        for lab, op, val in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', m.group(3) or ""):
            if lab == "job":
                if op == "=" and val not in jobs:
                    problems.append("%s: job=%r is no job of prometheus.yml %r" % (where, val, jobs))
                continue
            if lab in ("instance",) or (lab == "le" and name.endswith("_bucket")):
                continue
            if lab not in fam["labels"]:
                problems.append("%s: %s has no label %r (it has %r)" % (
                    where, base, lab, sorted(fam["labels"])))
            elif (op == "=" and "$" not in val and val not in fam["labels"][lab] and
                  val not in OTHER_VALUES.get((base, lab), ())):
                problems.append("%s: %s{%s=%r}: no such value (postern has %r)" % (
                    where, base, lab, val, sorted(fam["labels"][lab])))
    known = {"job", "instance", "le"}
    for n in names:
        known |= set(families[n]["labels"])
    groupings = [set(x.replace(" ", "").split(",")) - {""} for x in
                 re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr)]
    for g in groupings:
        for lab in g - known:
            problems.append("%s: grouping by %r, which none of %r has" % (where, lab, sorted(names)))
    # What the legend or the annotations print must survive the aggregation.
    by = [set(x.replace(" ", "").split(",")) - {""} for x in re.findall(r"\bby\s*\(([^)]*)\)", expr)]
    out_labels = set.intersection(*by) if by else known
    for lab in re.findall(r"\{\{\s*\$?(?:labels\.)?(\w+)\s*\}\}", text):
        if lab in ("value",):
            continue
        if lab not in out_labels:
            problems.append("%s: prints {{%s}}, which the result has not (%r)" % (
                where, lab, sorted(out_labels)))
    return problems


def test_dashboard_and_alerts_use_real_metrics(postern, tmp_path):
    """The Grafana JSON parses and is well formed; every metric name,
    label name and label value used by a dashboard expression, a template
    variable or an alert rule is a family of a running postern's /metrics
    (receive connector, send connector, metrics_listen): a typo fails."""
    dash = json.load(open(DASHBOARD))
    assert 36 <= dash["schemaVersion"] <= 41, dash["schemaVersion"]
    assert dash.get("uid") and dash.get("title")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables.get("datasource", {}).get("type") == "datasource"
    assert variables["datasource"].get("query") == "prometheus"
    ids = []

    def walk(panels):
        for p in panels:
            ids.append(p["id"])
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (p["title"], g)
            if p["type"] != "row":
                assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
                assert p["targets"], "panel %r has no query" % p["title"]
                for t in p["targets"]:
                    for v in re.findall(r"\$(\w+)", t["expr"]):
                        assert v.startswith("__") or v in variables, (p["title"], v)
            walk(p.get("panels", []))
    walk(dash["panels"])
    assert len(ids) == len(set(ids)), "panel ids repeat"

    mport = free_port()
    p = postern("""receive_connectors = (
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ]; remote_ip_ranges = [ "127.0.0.0/8" ];
    permission_groups = [ "anonymous_relay" ]; }
);
send_connectors = ( { name = "Smart"; address_spaces = [ "*" ]; smart_hosts = [ "127.0.0.1:%d" ]; } );
queue = { retry_interval = "1h"; };
""" % free_port(), server_extra='  metrics_listen = "127.0.0.1:%d";\n' % mport)
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10) as r:
        families = metric_families(r.read().decode())
    families["up"] = {"type": "gauge", "labels": {}}  # Prometheus's own, per target
    prom = yaml.safe_load(open(os.path.join(PROM_DIR, "prometheus.yml"))) if yaml else {}
    jobs = set()
    for sc in prom.get("scrape_configs", []):
        jobs.add(sc["job_name"])
        for rl in sc.get("relabel_configs", []):
            if rl.get("target_label") == "job":
                jobs.add(rl.get("replacement"))
    problems = []
    exprs = dashboard_exprs(dash) + alert_exprs()
    for where, expr, text in exprs:
        problems += check_expr(where, expr, families, jobs, text)
    used = {n for _, e, _ in exprs for n in re.findall(r"\bpostern_\w+", e)}
    for want in ("postern_ready", "postern_spool_free_bytes", "postern_queue_messages",
                 "postern_accept_latency_seconds_bucket", "postern_messages_rejected_total"):
        assert want in used, "nothing shows %s" % want
    assert not problems, "\n".join(problems)
    p.stop()


# --- the node configuration and how the files fit together ---------------------

def test_node_config_checks(tmp_path):
    out = assert_check_passes(read(NODE_CONF), tmp_path / "node.conf",
                              "deploy/postern-node.conf", tmp_path)
    assert "PROXY protocol" in out or "proxy" in out.lower(), out


def test_files_agree():
    """The node configuration, the unit, HAProxy and sysusers say the same
    thing about users, paths and ports."""
    node = read(NODE_CONF)
    svc = unit_service()
    user = conf_string(node, "user")
    assert user == "postern", user
    sysusers = [ln.split() for ln in read(SYSUSERS).splitlines() if ln.startswith("u ")]
    assert [u[1] for u in sysusers] == [user], sysusers
    rw = [p.lstrip("-") for p in " ".join(svc["ReadWritePaths"]).split()]
    spool = conf_string(node, "spool_dir")
    assert any(spool == p or spool.startswith(p + "/") for p in rw), (spool, rw)
    stats = conf_string(node, "stats_socket")
    assert os.path.dirname(stats) == "/run/" + last(svc, "RuntimeDirectory"), stats
    exec_conf = last(svc, "ExecStart").split("-c", 1)[1].split()[0]
    assert exec_conf == "/etc/postern/postern.conf"
    assert conf_duration_s(node, "drain_timeout", None) is not None, "no server.drain_timeout"
    # HAProxy's servers are the PROXY bindings' port; its checks the metrics port.
    mlisten = conf_string(node, "metrics_listen")
    hap = "\n".join(haproxy_lines())
    assert re.search(r"\bcheck port %d\b" % port_of(mlisten), hap), mlisten
    m = re.search(r"proxy_protocol\s*=\s*\{([^}]*)\}", strip_comments(node))
    assert m, "no server.proxy_protocol"
    pp_bindings = re.findall(r'"([^"]*)"', re.search(r"bindings\s*=\s*\[([^\]]*)\]", m.group(1)).group(1))
    trusted = re.findall(r'"([^"]*)"', re.search(r"trusted_proxies\s*=\s*\[([^\]]*)\]", m.group(1)).group(1))
    assert pp_bindings and trusted
    assert set(pp_bindings) <= set(bindings_of(node)), (pp_bindings, bindings_of(node))
    for srv in re.findall(r"^\s*server \S+ (\S+)", hap, re.M):
        assert any(port_of(b) == port_of(srv) for b in pp_bindings), (srv, pp_bindings)
    assert int(last(svc, "LimitNOFILE")) >= int(re.search(
        r"\bmax_open_files\s*=\s*(\d+)", strip_comments(node)).group(1))


def test_sysctl_keys_exist():
    """Every key in deploy/sysctl/90-postern.conf is a kernel parameter of
    this machine (a typo is silently ignored by sysctl --system)."""
    keys = []
    for ln in read(SYSCTL).splitlines():
        s = ln.strip()
        if not s or s[0] in "#;":
            continue
        k, sep, v = s.partition("=")
        assert sep and v.strip(), "not key = value: %r" % ln
        keys.append(k.strip())
        path = "/proc/sys/" + k.strip().replace(".", "/")
        assert os.path.exists(path), "no kernel parameter %s" % k.strip()
    for want in ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
                 "net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse"):
        assert want in keys, want
    lo, hi = [int(x) for x in re.search(r"ip_local_port_range\s*=\s*(\d+)\s+(\d+)",
                                        read(SYSCTL)).groups()]
    node = read(NODE_CONF)
    for hp in bindings_of(node) + [conf_string(node, "metrics_listen")]:
        assert not lo <= port_of(hp) <= hi, "%s is inside ip_local_port_range" % hp
