#!/usr/bin/env python3
"""paddockd vs libvirt, side by side in one run (driven by bench/daemon.sh).

Every number is measured here, in this run; ratios are peer / paddock (above 1: paddock wins).
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--guest", required=True)
ap.add_argument("--vms", type=int, default=1000)
ap.add_argument("--runs", type=int, default=20)
ap.add_argument("--libvirt", type=int, default=1)
args = ap.parse_args()
BIN = os.path.abspath(args.bin)
GUEST = os.path.abspath(args.guest)
QEMU = shutil.which("qemu-system-x86_64")


class UnixHTTP(http.client.HTTPConnection):
    """HTTP/1.1 over the daemon's Unix socket, kept alive across requests."""

    def __init__(self, path):
        super().__init__("localhost", timeout=120)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(120)
        s.connect(self.path)
        self.sock = s


def call(conn, method, path, body=None, ok=(200, 201, 202, 204)):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    raw = r.read()
    if r.status not in ok:
        raise RuntimeError(f"{method} {path}: {r.status} {raw[:300]!r}")
    return json.loads(raw) if raw else None


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def ms(x):
    return f"{x * 1e3:.2f} ms" if x is not None else "-"


rows = []


def row(what, ours, peer, peer_name):
    ratio = f"{peer / ours:.1f}x" if (ours and peer) else "-"
    rows.append((what, ms(ours), ms(peer), peer_name if peer is not None else "-", ratio))


def timed(f, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return out


def start_stop(start, stop):
    """Seconds `start` takes; `stop` then undoes it, untimed."""
    t = time.perf_counter()
    start()
    dt = time.perf_counter() - t
    stop()
    return dt


def wait_for(cond, what, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.001)
    raise RuntimeError(f"timed out waiting for {what}")


def halt_elf(path):
    """A 4-byte 64-bit ELF kernel (cli; hlt; jmp back): a VM that starts and then sleeps in
    KVM without using the host's CPU, so 50 of them measure starts, not spinning guests."""
    import struct
    base = 0x100_0000
    code = bytes([0xFA, 0xF4, 0xEB, 0xFD])
    size = 64 + 56 + len(code)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, base + 64 + 56, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    with open(path, "wb") as f:
        f.write(header + phdr + code)
    return path


def spec(name, driver=None):
    # QEMU boots the test guest through its PVH note; paddock-vmm gets the halting ELF.
    s = {"name": name, "cpus": {"count": 1}, "memory": {"size_mib": 64},
         "boot": {"kind": "kernel", "kernel": GUEST if driver == "qemu" else HALT}}
    if driver:
        s["driver"] = driver
    return s


tmp = tempfile.mkdtemp(prefix="paddock-bench-")
HALT = halt_elf(os.path.join(tmp, "halt.elf"))
sock = os.path.join(tmp, "paddockd.sock")
env = dict(os.environ, PADDOCK_SOCKET=sock)
daemon = subprocess.Popen(
    [f"{BIN}/paddockd", "--socket", sock, "--state-dir", f"{tmp}/state", "--run-dir", f"{tmp}/run",
     "--vmm", f"{BIN}/paddock-vmm"], stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/paddockd.log", "w"))
wait_for(lambda: os.path.exists(sock), "paddockd's socket")
api = UnixHTTP(sock)

lv = None
if args.libvirt:
    import libvirt  # noqa: E402  (python3-libvirt, installed by bench/daemon.sh)
    lv = libvirt.open("qemu:///system")

LV_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>{kernel}</kernel></os><features><acpi/></features>
<devices><emulator>{qemu}</emulator><serial type='null'/></devices></domain>"""

try:
    names = [f"b{i:04}" for i in range(args.vms)]
    # --- define
    t = time.perf_counter()
    for n in names:
        call(api, "POST", "/api/v1/vms", spec(n))
    ours = (time.perf_counter() - t) / len(names)
    peer = None
    if lv:
        for d in lv.listAllDomains():
            if d.name().startswith("b") and len(d.name()) == 5:
                d.undefine()
        t = time.perf_counter()
        for n in names:
            lv.defineXML(LV_XML.format(name=n, kernel=GUEST, qemu=QEMU))
        peer = (time.perf_counter() - t) / len(names)
    row(f"define one VM (mean over {args.vms})", ours, peer, "libvirt defineXML")

    # --- list and show through the API (no process start-up)
    n_calls = max(args.runs * 10, 100)
    # Summaries (name, state, driver, pid, sizes) against libvirt's domain handles; full
    # records (every spec) against handles plus each domain's state, what `virsh list` shows.
    ours = timed(lambda: call(api, "GET", "/api/v1/vms?view=summary"), n_calls)
    assert len(call(api, "GET", "/api/v1/vms?view=summary")) >= args.vms
    peer = timed(lambda: lv.listAllDomains(), n_calls) if lv else None
    row(f"API list {args.vms} VMs (summaries), p50", statistics.median(ours), peer and statistics.median(peer), "listAllDomains")
    row(f"API list {args.vms} VMs (summaries), p99", pct(ours, 0.99), peer and pct(peer, 0.99), "listAllDomains")
    ours = timed(lambda: call(api, "GET", "/api/v1/vms"), n_calls)
    peer = timed(lambda: [d.state() for d in lv.listAllDomains()], max(args.runs, 10)) if lv else None
    row(f"API list {args.vms} VMs (full records), p50", statistics.median(ours), peer and statistics.median(peer), "listAllDomains + state()")
    pick = names[len(names) // 2]
    ours = timed(lambda: call(api, "GET", f"/api/v1/vms/{pick}"), n_calls)
    peer = timed(lambda: lv.lookupByName(pick).info(), n_calls) if lv else None
    row("API show one VM, p50", statistics.median(ours), peer and statistics.median(peer), "lookupByName+info")
    row("API show one VM, p99", pct(ours, 0.99), peer and pct(peer, 0.99), "lookupByName+info")

    # --- through the CLIs (process start-up included)
    def run(cmd):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    ours = timed(lambda: run([f"{BIN}/paddock", "vm", "list", "--json"]), args.runs)
    peer = timed(lambda: run(["virsh", "-c", "qemu:///system", "list", "--all"]), args.runs) if lv else None
    row(f"CLI list {args.vms} VMs, p50", statistics.median(ours), peer and statistics.median(peer), "virsh list --all")
    ours = timed(lambda: run([f"{BIN}/paddock", "vm", "show", pick]), args.runs)
    peer = timed(lambda: run(["virsh", "-c", "qemu:///system", "dominfo", pick]), args.runs) if lv else None
    row("CLI show one VM, p50", statistics.median(ours), peer and statistics.median(peer), "virsh dominfo")

    # --- start latency, paddock-vmm driver
    def vmm_by_hand():
        api_sock = os.path.join(tmp, "hand.sock")
        if os.path.exists(api_sock):
            os.unlink(api_sock)
        t = time.perf_counter()
        p = subprocess.Popen([f"{BIN}/paddock-vmm", "--kernel", HALT, "--memory", "64M",
                              "--serial", "off", "--api-socket", api_sock],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers():
            try:
                c = UnixHTTP(api_sock)
                call(c, "GET", "/api/v1/vm")
                return True
            except OSError:
                return False
        wait_for(answers, "paddock-vmm's control socket")
        dt = time.perf_counter() - t
        p.kill()
        p.wait()
        return dt

    def hard_stop(name):
        return lambda: call(api, "POST", f"/api/v1/vms/{name}/stop", {"timeout_secs": 0})

    def daemon_start(name):
        return start_stop(lambda: call(api, "POST", f"/api/v1/vms/{name}/start"), hard_stop(name))

    def cli_start(name):
        return start_stop(lambda: run([f"{BIN}/paddock", "vm", "start", name]), hard_stop(name))

    hand = [vmm_by_hand() for _ in range(args.runs)]
    via_api = [daemon_start(names[0]) for _ in range(args.runs)]
    via_cli = [cli_start(names[0]) for _ in range(args.runs)]
    rows.append(("start, paddock-vmm by hand (to control socket), p50", ms(statistics.median(hand)), "", "", ""))
    rows.append(("start, paddock-vmm via API, p50", ms(statistics.median(via_api)), "", "", ""))
    rows.append(("start, paddock-vmm via `paddock vm start`, p50", ms(statistics.median(via_cli)), "", "", ""))
    daemon_adds_vmm = statistics.median(via_api) - statistics.median(hand)

    # --- start latency, QEMU: by hand, paddockd's QEMU driver, libvirt
    daemon_adds_qemu = libvirt_adds = None
    if QEMU:
        call(api, "POST", "/api/v1/vms", spec("bq", "qemu"))
        call(api, "POST", "/api/v1/vms/bq/start")
        pid = call(api, "GET", "/api/v1/vms/bq")["pid"]
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1]
        call(api, "POST", "/api/v1/vms/bq/stop", {"timeout_secs": 0})
        qmp_at = next(i for i, a in enumerate(argv) if a == b"-qmp") + 1
        hand_qmp = os.path.join(tmp, "hand-qmp.sock")
        argv[qmp_at] = f"unix:{hand_qmp},server=on,wait=off".encode()
        argv = [a.decode() for a in argv]

        def qmp_ready(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            f = s.makefile("rwb")
            f.readline()  # greeting
            for cmd in ("qmp_capabilities", "query-status"):
                f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                f.flush()
                while b'"return"' not in f.readline():
                    pass
            s.close()

        def qemu_by_hand():
            if os.path.exists(hand_qmp):
                os.unlink(hand_qmp)
            t = time.perf_counter()
            p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            def up():
                try:
                    qmp_ready(hand_qmp)
                    return True
                except OSError:
                    return False
            wait_for(up, "QEMU's QMP socket")
            dt = time.perf_counter() - t
            p.kill()
            p.wait()
            return dt

        qhand = [qemu_by_hand() for _ in range(args.runs)]
        qapi = [daemon_start("bq") for _ in range(args.runs)]
        rows.append(("start, QEMU by hand (to QMP answering), p50", ms(statistics.median(qhand)), "", "", ""))
        rows.append(("start, QEMU via paddockd API, p50", ms(statistics.median(qapi)), "", "", ""))
        daemon_adds_qemu = statistics.median(qapi) - statistics.median(qhand)
        if lv:
            dom = lv.lookupByName(names[0])

            virsh = ["virsh", "-c", "qemu:///system", "start", names[0]]
            lapi = [start_stop(dom.create, dom.destroy) for _ in range(args.runs)]
            lcli = [start_stop(lambda: run(virsh), dom.destroy) for _ in range(args.runs)]
            rows.append(("start, QEMU via libvirt API (dom.create), p50", ms(statistics.median(lapi)), "", "", ""))
            rows.append(("start, QEMU via `virsh start`, p50", ms(statistics.median(lcli)), "", "", ""))
            libvirt_adds = statistics.median(lapi) - statistics.median(qhand)
    row("management layer adds to a paddock-vmm start (API - by hand)", daemon_adds_vmm, None, "")
    if daemon_adds_qemu is not None:
        row("management layer adds to a QEMU start (API - by hand)", daemon_adds_qemu, libvirt_adds, "libvirt (dom.create - by hand)")

    # --- 50 concurrent starts on paddock-vmm
    conc = [f"c{i:02}" for i in range(50)]
    for n in conc:
        call(api, "POST", "/api/v1/vms", spec(n))
    lat = {}
    barrier = threading.Barrier(len(conc))

    def start_one(n):
        c = UnixHTTP(sock)
        barrier.wait()
        t = time.perf_counter()
        call(c, "POST", f"/api/v1/vms/{n}/start")
        lat[n] = time.perf_counter() - t
    threads = [threading.Thread(target=start_one, args=(n,)) for n in conc]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    assert len(lat) == len(conc), "some concurrent starts failed"
    running = [v for v in call(api, "GET", "/api/v1/vms") if v["state"] == "running"]
    assert len(running) >= len(conc), f"only {len(running)} running"
    rows.append(("50 concurrent starts on paddock-vmm: all running after", ms(wall), "", "", ""))
    rows.append(("50 concurrent starts: per-start p50 / p99",
                 f"{ms(statistics.median(lat.values()))} / {ms(pct(list(lat.values()), 0.99))}", "", "", ""))
    for n in conc:
        call(api, "POST", f"/api/v1/vms/{n}/stop", {"timeout_secs": 0})
finally:
    if lv:
        for d in lv.listAllDomains():
            if (d.name().startswith("b") and len(d.name()) == 5):
                if d.isActive():
                    d.destroy()
                d.undefine()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait()
    subprocess.run(["pkill", "-f", f"{tmp}/"], check=False)
    shutil.rmtree(tmp, ignore_errors=True)

w = max(len(r[0]) for r in rows)
print(f"\npaddockd benchmark ({args.vms} VMs defined, {args.runs} runs per start line; host {os.uname().nodename})")
print(f"{'what':<{w}}  {'paddock':>22}  {'peer':>12}  {'peer is':<32}  peer/paddock")
for r in rows:
    print(f"{r[0]:<{w}}  {r[1]:>22}  {r[2]:>12}  {r[3]:<32}  {r[4]}")
