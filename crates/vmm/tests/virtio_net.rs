//! virtio-net under real KVM, inside a network namespace the test creates: a TAP device in the
//! namespace, the VMM run there on it, and a raw AF_PACKET socket on the TAP (opened by a
//! thread that joined the namespace) that sees the guest's frame and answers it. No traffic
//! leaves the namespace; the namespace is deleted even when the test fails.

mod common;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::*;

const TAP: &str = "pdktap0";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const ETHERTYPE: u16 = 0x88b5;

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Option<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Netns(name.to_string()))
    }

    fn exec(&self, args: &[&str]) {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("run ip netns exec");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A raw packet socket for our EtherType on the TAP, opened inside the namespace.
struct PacketSocket(i32);

impl PacketSocket {
    /// Joins namespace `ns` (this thread only) and binds to `ifname` there.
    fn open_in(ns: &str, ifname: &str) -> std::io::Result<PacketSocket> {
        let nsf = File::open(format!("/run/netns/{ns}"))?;
        // SAFETY: setns on this thread with an open namespace descriptor; only this (test)
        // thread changes namespace.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let proto = (ETHERTYPE).to_be() as i32;
        // SAFETY: creates a socket; no pointers involved.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = PacketSocket(fd);
        let name = CString::new(ifname).unwrap();
        // SAFETY: reads a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = ETHERTYPE.to_be();
        sa.sll_ifindex = index as i32;
        // SAFETY: binds our socket to a sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd,
                &sa as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A safety net only: the guest's frame normally arrives at once.
        let tv = libc::timeval {
            tv_sec: 50,
            tv_usec: 0,
        };
        // SAFETY: sets a receive timeout from a timeval that lives across the call.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(s)
    }

    fn recv(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: receives into a buffer of the length given.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: sends from a buffer of the length given on the bound socket.
        let n = unsafe { libc::send(self.0, frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this struct owns.
        unsafe { libc::close(self.0) };
    }
}

fn can_make_namespaces(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if !root || !ip || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP {test}: needs root, iproute2 and /dev/net/tun");
        return false;
    }
    true
}

#[test]
fn net_guest_exchanges_frames_with_the_host_through_a_tap() {
    let test = "net_guest_exchanges_frames_with_the_host_through_a_tap";
    if !kvm_available(test) || !can_make_namespaces(test) {
        return;
    }
    let ns = Netns::create(&format!("pdk-net-{}", std::process::id())).expect("ip netns add");
    ns.exec(&["ip", "tuntap", "add", "dev", TAP, "mode", "tap"]);
    ns.exec(&["ip", "link", "set", TAP, "up"]);

    // The host side: bound before the guest runs, so its frame cannot be missed.
    let (ready_tx, ready_rx) = mpsc::channel();
    let name = ns.0.clone();
    let host = std::thread::spawn(move || -> Result<(Vec<u8>, Vec<u8>), String> {
        let s = PacketSocket::open_in(&name, TAP).map_err(|e| format!("packet socket: {e}"))?;
        ready_tx.send(()).unwrap();
        let ping = s
            .recv()
            .map_err(|e| format!("no frame from the guest: {e}"))?;
        let mut pong = Vec::new();
        pong.extend_from_slice(&ping[6..12]);
        pong.extend_from_slice(&HOST_MAC);
        pong.extend_from_slice(&ETHERTYPE.to_be_bytes());
        pong.extend_from_slice(b"PADDOCK-PONG from the host");
        pong.resize(60, 0);
        s.send(&pong).map_err(|e| format!("send: {e}"))?;
        Ok((ping, pong))
    });
    ready_rx.recv().expect("host socket ready");

    let mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
    let o = Command::new("ip")
        .args(["netns", "exec", &ns.0, "timeout", "60"])
        .arg(env!("CARGO_BIN_EXE_paddock-vmm"))
        .args(["--kernel", guest("net").to_str().unwrap()])
        .args(["--memory", "64M", "--debug-exit"])
        .args(["--net", &format!("tap={TAP},mac={mac}")])
        .stdin(Stdio::null())
        .output()
        .expect("run paddock-vmm in the namespace");
    let text = out(&o);
    let (ping, _) = host
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{text}{}", err(&o)));
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert_eq!(&ping[0..6], &[0xff; 6], "broadcast");
    assert_eq!(&ping[6..12], &GUEST_MAC, "from the guest's MAC");
    assert_eq!(&ping[14..32], b"PADDOCK-PING seq=1");
    assert!(text.contains(&format!("mac={mac} link=1")), "{text}");
    assert!(
        text.contains("net: got reply 'PADDOCK-PONG from the host' num_buffers=1"),
        "{text}"
    );
    assert!(text.contains("net ok"), "{text}");
}

#[test]
fn bad_net_options_exit_2_and_name_the_option() {
    for bad in [
        "tap=bad/name",
        "mac=52:54:00:00:00:01",
        "tap=t,mac=01:00:00:00:00:01",
    ] {
        let o = vmm(&["--kernel", "/nonexistent", "--net", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(err(&o).contains("--net"), "{bad}: {}", err(&o));
    }
}
