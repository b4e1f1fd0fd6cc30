//! `paddockd`: the Paddock daemon binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The Paddock daemon: serves the REST API on a Unix socket and supervises VMs.
#[derive(Parser, Debug)]
#[command(name = "paddockd", version, about)]
struct Args {
    /// The API socket (mode 0660).
    #[arg(long, value_name = "PATH", default_value = paddock_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Persistent state: the database, VM configs and console logs.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/paddock")]
    state_dir: PathBuf,
    /// Runtime files: VMM control sockets.
    #[arg(long, value_name = "DIR", default_value = "/run/paddock")]
    run_dir: PathBuf,
    /// The paddock-vmm binary (else PADDOCK_VMM, next to paddockd, then PATH).
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// Give every VMM the debug-exit port so test guests can end themselves (tests only).
    #[arg(long, hide = true)]
    vmm_debug_exit: bool,
    /// Also serve the API over TCP + TLS on ADDR:PORT (port 0: any free port), with bearer
    /// tokens (`paddock token create`). Plain TCP is never served.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain for --listen (default: a self-signed one generated once in
    /// <state-dir>/tls/cert.pem).
    #[arg(long, value_name = "PEM", requires_all = ["listen", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires_all = ["listen", "tls_cert"])]
    tls_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = paddockd::Config {
        socket: args.socket,
        state_dir: args.state_dir,
        run_dir: args.run_dir,
        vmm: args.vmm,
        vmm_debug_exit: args.vmm_debug_exit,
        listen: args.listen.map(|addr| paddockd::tls::Listen {
            addr,
            cert: args.tls_cert.zip(args.tls_key),
        }),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paddockd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(paddockd::run(config));
    // Exit watchers sit in blocking threads until their VMM ends; VMMs outlive the daemon,
    // so do not wait for them.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paddockd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
