//! `paddock events`: follows the daemon's event stream (WebSocket) and prints one line per
//! event, or with `--json` one JSON object per line, until the daemon closes it or the
//! process is interrupted.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use paddock_api::client_console::{Message, WsError};
use paddock_api::Event;

/// Options of `paddock events`.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// The daemon's socket.
    #[arg(long, env = "PADDOCK_SOCKET", default_value = paddock_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print each event as one line of JSON.
    #[arg(long)]
    json: bool,
}

/// One event as a line of text.
fn line(ev: &Event) -> String {
    match ev {
        Event::Lifecycle {
            time,
            vm,
            from,
            to,
            message,
        } => {
            let why = message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default();
            format!("{time}  {vm}  {from} -> {to}{why}")
        }
        Event::Audit(a) => {
            let who = match (&a.who, a.uid) {
                (Some(w), _) => format!(" {w}"),
                (None, Some(u)) => format!(" uid={u}"),
                (None, None) => String::new(),
            };
            format!(
                "{}  {}  audit {}: {}{who}",
                a.time, a.target, a.action, a.result
            )
        }
        Event::Task { task: t } => {
            let time = t.finished_at.as_deref().unwrap_or(&t.created_at);
            let why = t
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            format!(
                "{time}  {}  task {} {}: {} {}%{why}",
                t.target,
                t.id,
                t.kind.as_str(),
                t.state,
                t.progress
            )
        }
    }
}

/// Runs `paddock events`.
pub fn run(args: EventsArgs, remote: &crate::remote::RemoteArgs) -> ExitCode {
    let fail = |msg: String| {
        if args.json {
            // Not print_json: stdout may be a pipe the reader has closed.
            let _ = writeln!(std::io::stdout(), "{}", serde_json::json!({ "error": msg }));
        } else {
            eprintln!("paddock: {msg}");
        }
        ExitCode::from(1)
    };
    let client = match remote.client(&args.socket) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let mut ws = match client.events_ws() {
        Ok(ws) => ws,
        Err(e) => return fail(e.to_string()),
    };
    let mut out = std::io::stdout().lock();
    loop {
        let text = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(WsError::ConnectionClosed) => {
                return fail("paddockd closed the event stream".into())
            }
            Ok(_) => continue,
            Err(e) => return fail(format!("reading the event stream: {e}")),
        };
        let printed = if args.json {
            writeln!(out, "{}", text.as_str())
        } else {
            match serde_json::from_str::<Event>(&text) {
                Ok(ev) => writeln!(out, "{}", line(&ev)),
                Err(e) => return fail(format!("an event this paddock does not know: {e}")),
            }
        };
        // A closed pipe (`paddock events | head`) ends quietly.
        if printed.and_then(|()| out.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_api::VmState;

    #[test]
    fn lifecycle_lines_name_the_vm_and_both_states() {
        let ev = Event::Lifecycle {
            time: "T".into(),
            vm: "web".into(),
            from: VmState::Starting,
            to: VmState::Running,
            message: None,
        };
        assert_eq!(line(&ev), "T  web  starting -> running");
    }
}
