//! The VM state machine (documented in `docs/DAEMON.md`): which requests each state
//! accepts, and what to tell a caller whose request does not fit.
//!
//! ```text
//! defined ─start─> starting ──> running ⇄ paused      (pause / resume)
//!    ^                │            │        │
//!    │              fails       stop / restart
//!    │                v            v        v
//!  (delete)        crashed <─── stopping ───┘
//!                     ^            │
//!                     │            v
//!  process exits ─────┴──────>  stopped ─start─> starting
//! ```

use paddock_api::VmState;

/// A request on one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Start the VMM.
    Start,
    /// Stop it.
    Stop,
    /// Stop then start.
    Restart,
    /// Park the vCPUs.
    Pause,
    /// Release them.
    Resume,
    /// Forget the VM.
    Delete,
}

impl Request {
    /// The request's name in the API and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Start => "start",
            Request::Stop => "stop",
            Request::Restart => "restart",
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Delete => "delete",
        }
    }
}

/// Whether `request` is allowed in `state`; if not, a message that says what to do.
pub fn allowed(name: &str, state: VmState, request: Request) -> Result<(), String> {
    use Request as R;
    use VmState as S;
    let ok = match request {
        R::Start => matches!(state, S::Defined | S::Stopped | S::Crashed),
        R::Stop | R::Restart => matches!(state, S::Running | S::Paused),
        R::Pause => state == S::Running,
        R::Resume => state == S::Paused,
        R::Delete => !state.has_process(),
    };
    if ok {
        return Ok(());
    }
    let hint = match (request, state) {
        (R::Start, S::Running | S::Paused) => {
            "it is already started; use restart to start it again"
        }
        (R::Start | R::Stop | R::Restart, S::Starting | S::Stopping) => {
            "another request is changing it; retry when it is running or stopped"
        }
        (R::Stop | R::Restart | R::Pause, S::Defined | S::Stopped | S::Crashed) => {
            "it is not running; start it first"
        }
        (R::Pause, S::Paused) => "it is already paused",
        (R::Resume, S::Running) => "it is not paused",
        (R::Resume, _) => "only a paused VM can be resumed",
        (R::Delete, _) => "it has a running process; stop it first",
        _ => "wait until it is running or stopped",
    };
    Err(format!(
        "cannot {} VM '{name}' while it is {state}: {hint}",
        request.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_documented_state_machine() {
        use Request::*;
        use VmState::*;
        let expect_ok = [
            (Defined, Start),
            (Stopped, Start),
            (Crashed, Start),
            (Running, Stop),
            (Paused, Stop),
            (Running, Restart),
            (Paused, Restart),
            (Running, Pause),
            (Paused, Resume),
            (Defined, Delete),
            (Stopped, Delete),
            (Crashed, Delete),
        ];
        for state in VmState::ALL {
            for req in [Start, Stop, Restart, Pause, Resume, Delete] {
                let r = allowed("v", state, req);
                assert_eq!(
                    r.is_ok(),
                    expect_ok.contains(&(state, req)),
                    "{state} {req:?}"
                );
                if let Err(msg) = r {
                    assert!(msg.contains("'v'") && msg.contains(state.as_str()), "{msg}");
                }
            }
        }
    }
}
