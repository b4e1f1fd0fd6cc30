//! Tasks: long volume operations (import, convert, full clone) that run on tokio's blocking
//! pool while the API answers at once. Each task is a row in the store (state, progress,
//! error, times, the file it writes); progress comes from the disk engine's [`Progress`]
//! counters and is published as `task` events; a cancel stops the conversion at its next
//! check and removes the partial volume. A task still `running` when the daemon starts was
//! interrupted: it is recorded failed and its partial output removed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_api::storage::{Task, TaskKind, TaskState};
use paddock_api::Event;
use paddock_disk::Progress;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::OpError;
use crate::storage::store::{StorageStore, VolumeRow};
use crate::supervisor::{now, Supervisor};

/// How often a running task's progress is published.
const TICK: Duration = Duration::from_millis(250);
/// How long a cancel waits for the task to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(60);

/// The work of a task: runs on a blocking thread, updating and honouring `progress`.
pub type Work = Box<dyn FnOnce(&Progress) -> Result<(), String> + Send>;

struct Running {
    progress: Arc<Progress>,
    /// Set by a cancel request (the engine also sets `progress`'s flag when it fails).
    cancel: AtomicBool,
    done: watch::Sender<bool>,
}

/// The task manager.
pub struct Tasks {
    sup: Arc<Supervisor>,
    running: Mutex<HashMap<Uuid, Arc<Running>>>,
}

fn percent(p: &Progress) -> u8 {
    match p.total() {
        0 => 0,
        t => ((p.done() as u128 * 100) / t as u128).min(99) as u8,
    }
}

/// Marks every task left `running` by an earlier daemon as failed and removes what it was
/// writing (the partial file and its volume record).
pub fn recover(sup: &Supervisor) -> Result<(), OpError> {
    let db = StorageStore(sup.store());
    for (mut task, output) in db.running_tasks()? {
        if let Some(out) = output {
            let _ = std::fs::remove_file(out);
        }
        db.delete_volumes_of(task.id)?;
        task.state = TaskState::Failed;
        task.error = Some("interrupted by a daemon restart".into());
        task.finished_at = Some(now());
        db.update_task(&task)?;
        let r: Result<(), OpError> =
            Err(OpError::Internal("interrupted by a daemon restart".into()));
        sup.audit(None, "task", &task.target, &r);
    }
    Ok(())
}

impl Tasks {
    /// A manager publishing through `sup`.
    pub fn new(sup: Arc<Supervisor>) -> Self {
        Tasks {
            sup,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn db(&self) -> StorageStore<'_> {
        StorageStore(self.sup.store())
    }

    fn publish(&self, task: &Task) {
        self.sup.emit(Event::Task { task: task.clone() });
    }

    /// The task with `id`, with live progress while it runs.
    pub fn get(&self, id: Uuid) -> Result<Task, OpError> {
        let mut t = self.db().task(id)?.ok_or_else(|| {
            OpError::NotFound(format!("no task {id}; `paddock task list` shows them"))
        })?;
        if let Some(r) = self.running_of(id) {
            if t.state == TaskState::Running {
                t.progress = percent(&r.progress);
            }
        }
        Ok(t)
    }

    /// Every task, newest first, with live progress.
    pub fn list(&self) -> Result<Vec<Task>, OpError> {
        let mut tasks = self.db().tasks()?;
        for t in &mut tasks {
            if let (TaskState::Running, Some(r)) = (t.state, self.running_of(t.id)) {
                t.progress = percent(&r.progress);
            }
        }
        Ok(tasks)
    }

    fn running_of(&self, id: Uuid) -> Option<Arc<Running>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Records a task of `kind` that writes `volume` (at `output`), then runs `work` on the
    /// blocking pool. The volume's name must be free (409 otherwise). On failure or cancel
    /// the output file and the volume record are removed.
    pub fn start(
        self: &Arc<Self>,
        kind: TaskKind,
        mut volume: VolumeRow,
        output: PathBuf,
        work: Work,
    ) -> Result<Task, OpError> {
        let id = Uuid::new_v4();
        let target = format!("{}/{}", volume.pool, volume.name);
        let task = Task {
            id,
            kind,
            target: target.clone(),
            state: TaskState::Running,
            progress: 0,
            error: None,
            created_at: now(),
            finished_at: None,
        };
        volume.task = Some(id);
        if !self.db().insert_task_with_volume(&task, &output, &volume)? {
            return Err(OpError::Conflict(format!(
                "a volume named '{}' exists in pool '{}'; pick another name, or delete it first",
                volume.name, volume.pool
            )));
        }
        let running = Arc::new(Running {
            progress: Arc::new(Progress::new()),
            cancel: AtomicBool::new(false),
            done: watch::channel(false).0,
        });
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, running.clone());
        self.publish(&task);
        self.spawn_ticker(task.clone(), running.clone());
        let me = self.clone();
        let t = task.clone();
        tokio::task::spawn_blocking(move || {
            let r = work(&running.progress);
            me.finish(t, &running, output, r);
        });
        Ok(task)
    }

    /// Publishes progress while the task runs.
    fn spawn_ticker(self: &Arc<Self>, mut task: Task, running: Arc<Running>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut done = running.done.subscribe();
            loop {
                if *done.borrow_and_update() {
                    return;
                }
                let _ = tokio::time::timeout(TICK, done.changed()).await;
                let p = percent(&running.progress);
                if p != task.progress && !*done.borrow() {
                    task.progress = p;
                    let _ = me.db().update_task(&task);
                    me.publish(&task);
                }
            }
        });
    }

    /// Records how the task ended; removes its output unless it succeeded.
    fn finish(&self, mut task: Task, running: &Running, output: PathBuf, r: Result<(), String>) {
        let cancelled = running.cancel.load(Ordering::SeqCst);
        let db = self.db();
        let outcome = match (r, cancelled) {
            (Ok(()), false) => db.release_volumes_of(task.id).map(|_| TaskState::Succeeded),
            (r, _) => {
                let _ = std::fs::remove_file(&output);
                task.error = match (r, cancelled) {
                    (_, true) => Some("cancelled".into()),
                    (Err(e), false) => Some(e),
                    (Ok(()), false) => None,
                };
                db.delete_volumes_of(task.id).map(|_| {
                    if cancelled {
                        TaskState::Cancelled
                    } else {
                        TaskState::Failed
                    }
                })
            }
        };
        task.state = outcome.unwrap_or_else(|e| {
            task.error = Some(e.to_string());
            TaskState::Failed
        });
        if task.state == TaskState::Succeeded {
            task.progress = 100;
            task.error = None;
        }
        task.finished_at = Some(now());
        if let Err(e) = db.update_task(&task) {
            eprintln!("paddockd: task {}: {e}", task.id);
        }
        let audit: Result<(), OpError> = match &task.error {
            None => Ok(()),
            Some(e) => Err(OpError::Internal(e.clone())),
        };
        self.sup.audit(None, "task", &task.target, &audit);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task.id);
        self.publish(&task);
        running.done.send_replace(true);
    }

    /// Cancels a running task and waits until it has stopped; answers the task then.
    pub async fn cancel(&self, id: Uuid) -> Result<Task, OpError> {
        let Some(running) = self.running_of(id) else {
            let t = self.get(id)?;
            return Err(OpError::Conflict(format!(
                "task {id} has already ended ({})",
                t.state
            )));
        };
        running.cancel.store(true, Ordering::SeqCst);
        running.progress.cancel();
        let mut done = running.done.subscribe();
        let waited = tokio::time::timeout(CANCEL_WAIT, done.wait_for(|d| *d)).await;
        if waited.is_err() {
            return Err(OpError::Internal(format!(
                "task {id} did not stop within {} s",
                CANCEL_WAIT.as_secs()
            )));
        }
        self.get(id)
    }
}
