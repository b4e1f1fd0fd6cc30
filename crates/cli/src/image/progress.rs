//! Progress reporting for long image operations: a bar on a terminal, JSON lines for scripts.

use std::io::Write;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use paddock_disk::Progress;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing.
    Quiet,
    /// An indicatif bar on stderr.
    Bar,
    /// One JSON object per line on stdout: `{"event":"progress","done":N,"total":N}`.
    JsonLines,
}

impl Mode {
    /// Picks the mode from the flags: `--json` wins; `-p` shows a bar (on a terminal, or
    /// always when asked explicitly).
    pub fn choose(json: bool, progress: bool) -> Mode {
        if json {
            Mode::JsonLines
        } else if progress {
            Mode::Bar
        } else {
            Mode::Quiet
        }
    }
}

/// A running progress reporter; stops and draws the final state when dropped or finished.
pub struct Reporter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts reporting `progress` in `mode`, labelled `what`.
    pub fn start(progress: Arc<Progress>, mode: Mode, what: &'static str) -> Reporter {
        if mode == Mode::Quiet {
            return Reporter {
                stop: None,
                thread: None,
            };
        }
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let bar = (mode == Mode::Bar).then(|| {
                let b = indicatif::ProgressBar::new(progress.total().max(1));
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:40}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b.set_message(what);
                b
            });
            let emit = |final_tick: bool| {
                let (done, total) = (progress.done(), progress.total());
                match &bar {
                    Some(b) => {
                        b.set_length(total.max(1));
                        b.set_position(done);
                        if final_tick {
                            b.finish();
                        }
                    }
                    None => {
                        let line = serde_json::json!({
                            "event": "progress", "operation": what, "done": done, "total": total,
                            "written": progress.written(),
                        });
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                }
            };
            // Tick until told to stop (the channel closes or a message arrives).
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(Duration::from_millis(if bar.is_some() { 100 } else { 500 }))
            {
                emit(false);
            }
            emit(true);
        });
        Reporter {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops the reporter and waits for its last line.
    pub fn finish(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.shutdown();
    }
}
