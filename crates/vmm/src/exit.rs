//! How a VM ends: the first request (guest power-off, reset, debug-exit, a fatal vCPU exit)
//! records its status and reason and wakes the main thread.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// Why and how the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// Process exit status.
    pub code: i32,
    /// Human-readable reason.
    pub reason: String,
}

/// A handle that any thread can use to end the VM; the first request wins.
#[derive(Clone)]
pub struct ExitSignal {
    status: Arc<Mutex<Option<ExitStatus>>>,
    event: Arc<EventFd>,
}

impl ExitSignal {
    /// A fresh signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            status: Arc::new(Mutex::new(None)),
            event: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    /// Asks the VM to end with `code`.
    pub fn request(&self, code: i32, reason: impl Into<String>) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_none() {
            *s = Some(ExitStatus {
                code,
                reason: reason.into(),
            });
            let _ = self.event.write(1);
        }
    }

    /// The recorded status, once requested.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable on the first request.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}
