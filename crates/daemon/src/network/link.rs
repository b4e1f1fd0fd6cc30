//! Links over netlink (`rtnetlink`): bridges with an address, persistent TAPs (made through
//! `/dev/net/tun` by `tokio-tun`, since the kernel refuses to create TUN/TAP devices over
//! rtnetlink) enslaved to a bridge, listing and deleting.
//!
//! Every call blocks: it runs its netlink exchange on a scoped thread with its own
//! single-threaded tokio runtime, so it works alike from the supervisor's async tasks,
//! tokio's blocking pool and tests.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

/// Errno values the kernel answers.
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;

/// One link as netlink describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Kind (`bridge`, `tun`, `veth`), when it has one.
    pub kind: Option<String>,
    /// The index of the bridge it is enslaved to.
    pub controller: Option<u32>,
    /// Administratively up.
    pub up: bool,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn io_err(what: &str, e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let inner = m.to_io();
            io::Error::new(inner.kind(), format!("{what}: {inner}"))
        }
        other => io::Error::other(format!("{what}: {other}")),
    }
}

/// Runs `f` with a fresh netlink connection on a thread of its own.
fn with_netlink<T, F, Fut>(f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = io::Result<T>>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection()?;
                let task = tokio::spawn(conn);
                let r = f(handle).await;
                task.abort();
                r
            })
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the netlink thread panicked")))
    })
}

fn describe(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        controller: None,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(match k {
                            InfoKind::Bridge => "bridge".to_string(),
                            InfoKind::Tun => "tun".to_string(),
                            InfoKind::Veth => "veth".to_string(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    link
}

async fn get(handle: &Handle, name: &str) -> io::Result<Option<Link>> {
    let mut s = handle.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m.as_ref().map(describe)),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(io_err(&format!("looking up {name}"), e)),
    }
}

/// The link called `name`, if there is one.
pub fn find(name: &str) -> io::Result<Option<Link>> {
    with_netlink(|h| async move { get(&h, name).await })
}

/// Every link.
pub fn list() -> io::Result<Vec<Link>> {
    with_netlink(|h| async move {
        let mut s = h.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(|e| io_err("listing links", e))? {
            out.push(describe(&m));
        }
        Ok(out)
    })
}

/// Makes sure bridge `name` exists, holds `addr` (when given) and is up. An existing link of
/// that name that is not a bridge is an error.
pub fn ensure_bridge(name: &str, addr: Option<(Ipv4Addr, u8)>) -> io::Result<()> {
    with_netlink(|h| async move {
        let link = match get(&h, name).await? {
            Some(l) => l,
            None => {
                h.link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                    .map_err(|e| io_err(&format!("creating bridge {name}"), e))?;
                get(&h, name).await?.ok_or_else(|| {
                    io::Error::other(format!("bridge {name} vanished after its creation"))
                })?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} exists and is not a bridge"),
            ));
        }
        if let Some((a, prefix)) = addr {
            match h
                .address()
                .add(link.index, IpAddr::V4(a), prefix)
                .execute()
                .await
            {
                Err(e) if errno(&e) != Some(EEXIST) => {
                    return Err(io_err(&format!("adding {a}/{prefix} to {name}"), e))
                }
                _ => {}
            }
        }
        h.link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(|e| io_err(&format!("bringing {name} up"), e))
    })
}

/// Creates persistent TAP `tap` (or takes the one of that name), enslaves it to `bridge`
/// and brings it up.
pub fn create_tap(tap: &str, bridge: &str) -> io::Result<()> {
    with_netlink(|h| async move {
        let br = get(&h, bridge).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("bridge {bridge} is missing"),
            )
        })?;
        // The queue is closed at once; the device stays (persist) for the VMM to open.
        tokio_tun::TunBuilder::new()
            .name(tap)
            .tap()
            .persist()
            .build()
            .map_err(|e| io::Error::other(format!("creating TAP {tap}: {e}")))?;
        h.link()
            .set(
                LinkUnspec::new_with_name(tap)
                    .controller(br.index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| io_err(&format!("enslaving {tap} to {bridge}"), e))
    })
}

/// Deletes link `name`; an absent link is fine.
pub fn delete(name: &str) -> io::Result<()> {
    with_netlink(|h| async move {
        let Some(link) = get(&h, name).await? else {
            return Ok(());
        };
        match h.link().del(link.index).execute().await {
            Err(e) if errno(&e) != Some(ENODEV) => Err(io_err(&format!("deleting {name}"), e)),
            _ => Ok(()),
        }
    })
}
