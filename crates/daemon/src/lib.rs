//! `paddockd`: the Paddock daemon. It serves the REST API (`paddock-api`) on a Unix socket,
//! keeps VMs and an audit log in SQLite under its state directory, runs each VM as its own
//! VMM process through a [`driver::Driver`], and re-attaches to running VMMs when it
//! restarts. See `docs/DAEMON.md`.

pub mod auth;
pub mod driver;
pub mod error;
pub mod lifecycle;
pub mod metrics;
pub mod metrics_proc;
pub mod network;
pub mod peer;
pub mod routes;
pub mod storage;
pub mod store;
pub mod supervisor;
pub mod tasks;
pub mod tls;
pub mod token_store;
pub mod tokens;
pub mod ws;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::UnixListener;

use crate::driver::qemu::Qemu;
use crate::driver::vmm::{find_vmm, PaddockVmm};
use crate::driver::Driver;
use crate::peer::Peer;
use crate::store::Store;
use crate::supervisor::Supervisor;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The API socket.
    pub socket: PathBuf,
    /// Persistent state: the database and per-VM files.
    pub state_dir: PathBuf,
    /// Runtime files: VMM control sockets.
    pub run_dir: PathBuf,
    /// The `paddock-vmm` binary, if given.
    pub vmm: Option<PathBuf>,
    /// Give every VMM the debug-exit port (test guests end themselves through it).
    pub vmm_debug_exit: bool,
    /// Also serve the API over TCP + TLS, with bearer tokens (`--listen`).
    pub listen: Option<tls::Listen>,
}

/// Binds the API socket at `path` with mode 0660, replacing a stale socket file but never a
/// live daemon's.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{}: another paddockd answers on this socket; stop it or give --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Runs the daemon until SIGTERM or SIGINT. Running VMs are left running.
pub async fn run(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(config.state_dir.join("vms"))
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    std::fs::create_dir_all(config.run_dir.join("vms"))
        .with_context(|| format!("creating {}", config.run_dir.display()))?;
    let db = config.state_dir.join("paddockd.db");
    let store = Store::open(&db).with_context(|| db.display().to_string())?;
    let vmm = find_vmm(config.vmm.as_deref());
    match &vmm {
        Some(p) => eprintln!("paddockd: VMM {}", p.display()),
        None => eprintln!("paddockd: paddock-vmm not found (--vmm, PADDOCK_VMM, next to paddockd, PATH); VMs cannot start"),
    }
    let drivers: Vec<Arc<dyn Driver>> = vec![
        Arc::new(PaddockVmm::new(vmm, config.vmm_debug_exit)),
        Arc::new(Qemu::new(
            std::env::var_os("PADDOCK_QEMU")
                .filter(|p| !p.is_empty())
                .map_or_else(|| "qemu-system-x86_64".into(), PathBuf::from),
        )),
    ];
    let sup = Arc::new(Supervisor::new(
        store,
        drivers,
        config.state_dir.clone(),
        config.run_dir.clone(),
    ));
    sup.recover().await.context("re-attaching to running VMs")?;
    tasks::recover(&sup).context("recording tasks a previous paddockd left running")?;
    let s = sup.clone();
    let _ = tokio::task::spawn_blocking(move || network::reconcile(&s)).await;
    let listener = bind(&config.socket)?;
    eprintln!("paddockd: listening on {}", config.socket.display());
    let remote = match &config.listen {
        Some(l) => Some(tls::bind(l, &config.state_dir).await?),
        None => None,
    };
    let remote = tls::serve(remote, sup.clone());
    let app = routes::router(sup).into_make_service_with_connect_info::<Peer>();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = axum::serve(listener, app) => r.context("serving the API"),
        r = remote => r.context("serving the API over TLS"),
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let _ = std::fs::remove_file(&config.socket);
    eprintln!("paddockd: stopped; VMs keep running");
    result
}
