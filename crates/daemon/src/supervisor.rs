//! The supervisor: runs the state machine for every VM on a [`Driver`], one request at a
//! time per VM (a per-VM async mutex) and VMs in parallel; records every change in the
//! store and the audit log; notices VMM processes that exit on their own; re-attaches to
//! running VMMs after a daemon restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use paddock_api::{Event, StopRequest, Vm, VmState};
use paddock_spec::VmSpec;
use tokio::sync::{broadcast, watch, Mutex as AsyncMutex};
use uuid::Uuid;

use crate::driver::{Driver, Process, RunState, Status, VmPaths};
use crate::error::OpError;
use crate::lifecycle::{self, Request};
use crate::store::{Store, StoreError};

/// How long a VMM gets to answer on its control socket after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default wait for the guest after the ACPI power button.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The current time as the API writes it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A VMM process and the exit status its watcher publishes (`Some(status)` once exited;
/// the status itself is `None` when unknowable).
pub struct Live {
    /// The process.
    pub process: Process,
    exit: watch::Sender<Option<Option<i32>>>,
}

impl Live {
    /// Waits up to `timeout` for the watcher to see the exit; the exit status if it did.
    async fn exited(&self, timeout: Duration) -> Option<Option<i32>> {
        let mut rx = self.exit.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|v| *v))
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, OpError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OpError::Internal(format!("driver task failed: {e}")))
}

/// The supervisor.
pub struct Supervisor {
    store: Store,
    drivers: Vec<Arc<dyn Driver>>,
    state_dir: PathBuf,
    run_dir: PathBuf,
    locks: Mutex<HashMap<Uuid, Arc<AsyncMutex<()>>>>,
    live: Mutex<HashMap<Uuid, Arc<Live>>>,
    events: broadcast::Sender<Event>,
}

impl Supervisor {
    /// A supervisor over `store`, running VMs with `drivers` (the first is the default),
    /// keeping files under `state_dir/vms/<id>` and sockets under `run_dir/vms/<id>`.
    pub fn new(
        store: Store,
        drivers: Vec<Arc<dyn Driver>>,
        state_dir: PathBuf,
        run_dir: PathBuf,
    ) -> Self {
        Supervisor {
            store,
            drivers,
            state_dir,
            run_dir,
            locks: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
        }
    }

    /// The state store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The files of VM `id`.
    pub fn paths(&self, id: Uuid) -> VmPaths {
        VmPaths {
            dir: self.state_dir.join("vms").join(id.to_string()),
            run: self.run_dir.join("vms").join(id.to_string()),
        }
    }

    /// The state directory.
    pub(crate) fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// The driver named `name`.
    fn driver_named(&self, name: &str) -> Result<Arc<dyn Driver>, OpError> {
        self.drivers
            .iter()
            .find(|d| d.name() == name)
            .cloned()
            .ok_or_else(|| OpError::Invalid {
                field: "driver".into(),
                message: format!(
                    "no driver '{name}'; this daemon has {}",
                    self.drivers
                        .iter()
                        .map(|d| d.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// The driver for a new VM: `requested`, else the default (the first); it must accept
    /// `spec`. No automatic fallback: a spec the default refuses is refused, naming the
    /// feature, so a VM never silently changes hypervisor.
    fn choose_driver(
        &self,
        requested: Option<&str>,
        spec: &VmSpec,
    ) -> Result<Arc<dyn Driver>, OpError> {
        let d = match requested {
            Some(name) => self.driver_named(name)?,
            None => self
                .drivers
                .first()
                .cloned()
                .ok_or_else(|| OpError::Internal("no driver is configured".into()))?,
        };
        d.check(spec)?;
        Ok(d)
    }

    /// The driver VM `vm` was defined with.
    fn driver_of(&self, vm: &Vm) -> Result<Arc<dyn Driver>, OpError> {
        self.driver_named(&vm.driver)
    }

    fn lock_of(&self, id: Uuid) -> Arc<AsyncMutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id).or_default().clone()
    }

    fn live_of(&self, id: Uuid) -> Option<Arc<Live>> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(&id).cloned()
    }

    fn forget_live(&self, id: Uuid) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&id);
        drop(live);
        // The process is gone: so go its TAPs.
        crate::network::unplug(id);
    }

    /// Every VM.
    pub fn list(&self) -> Result<Vec<Vm>, OpError> {
        Ok(self.store.list()?)
    }

    /// The VM called `name`.
    pub fn get(&self, name: &str) -> Result<Vm, OpError> {
        self.store
            .by_name(name)?
            .ok_or_else(|| OpError::no_vm(name))
    }

    /// The audit log.
    pub fn audit_log(&self) -> Result<Vec<paddock_api::AuditEntry>, OpError> {
        Ok(self.store.audit_log()?)
    }

    /// The VMM's view of VM `id` when it has a process.
    pub async fn runtime_status(&self, id: Uuid) -> Option<Status> {
        let live = self.live_of(id)?;
        let vm = self.store.by_id(id).ok()??;
        let driver = self.driver_of(&vm).ok()?;
        blocking(move || driver.status(&live.process).ok())
            .await
            .ok()
            .flatten()
    }

    pub(crate) fn emit(&self, event: Event) {
        // No subscribers is fine.
        let _ = self.events.send(event);
    }

    pub(crate) fn audit<T>(
        &self,
        uid: Option<u32>,
        action: &str,
        target: &str,
        r: &Result<T, OpError>,
    ) {
        let result = match r {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        match self.store.audit(&now(), uid, action, target, &result) {
            Ok(entry) => self.emit(Event::Audit(entry)),
            Err(e) => eprintln!("paddockd: audit log: {e}"),
        }
    }

    /// Moves `vm` to `to`, persists it and announces the change.
    fn set_state(
        &self,
        vm: &mut Vm,
        to: VmState,
        message: Option<String>,
    ) -> Result<(), StoreError> {
        let from = vm.state;
        vm.state = to;
        vm.updated_at = now();
        vm.message = message.clone();
        if !to.has_process() {
            vm.pid = None;
        }
        self.store.update(vm)?;
        if from != to {
            self.emit(Event::Lifecycle {
                time: vm.updated_at.clone(),
                vm: vm.name.clone(),
                from,
                to,
                message,
            });
        }
        Ok(())
    }

    /// Defines a VM from `spec` (already parsed; validated here).
    /// `driver` picks the driver by name (`paddock-vmm`, the default, or `qemu`).
    pub async fn define(
        &self,
        uid: Option<u32>,
        spec: VmSpec,
        driver: Option<String>,
    ) -> Result<Vm, OpError> {
        let name = spec.name.clone();
        let r = self.define_inner(spec, driver.as_deref());
        self.audit(uid, "define", &name, &r);
        r
    }

    fn define_inner(&self, spec: VmSpec, driver: Option<&str>) -> Result<Vm, OpError> {
        spec.validate().map_err(|e| OpError::Invalid {
            field: e.field,
            message: e.message,
        })?;
        let _volumes = crate::storage::usage_lock();
        let _networks = crate::network::lock();
        let spec = crate::storage::resolve_spec(&self.store, spec)?;
        let spec = crate::network::prepare(self, spec)?;
        let driver = self.choose_driver(driver, &spec.runnable())?;
        let time = now();
        let vm = Vm {
            id: Uuid::new_v4(),
            name: spec.name.clone(),
            spec,
            state: VmState::Defined,
            driver: driver.name().to_string(),
            created_at: time.clone(),
            updated_at: time,
            pid: None,
            exit_status: None,
            message: None,
        };
        std::fs::create_dir_all(self.paths(vm.id).dir)
            .map_err(|e| OpError::Internal(format!("creating the VM's directory: {e}")))?;
        match self.store.insert(&vm) {
            Ok(()) => Ok(vm),
            Err(StoreError::NameTaken(n)) => {
                let _ = std::fs::remove_dir_all(self.paths(vm.id).dir);
                Err(OpError::Conflict(format!(
                    "a VM named '{n}' exists; pick another name, or delete it first"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a VM that has no process, with its files, and with `volumes` the volumes its
    /// disks name (all checked deletable first, so a refusal deletes nothing).
    pub async fn delete(
        self: &Arc<Self>,
        uid: Option<u32>,
        name: &str,
        volumes: bool,
    ) -> Result<(), OpError> {
        let r = self.delete_inner(name, volumes).await;
        let action = if volumes { "delete+volumes" } else { "delete" };
        self.audit(uid, action, name, &r);
        r
    }

    async fn delete_inner(self: &Arc<Self>, name: &str, volumes: bool) -> Result<(), OpError> {
        let id = self.get(name)?.id;
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let vm = self.store.by_id(id)?.ok_or_else(|| OpError::no_vm(name))?;
        lifecycle::allowed(name, vm.state, Request::Delete).map_err(OpError::Conflict)?;
        let storage = crate::storage::Storage::new(self.clone());
        let doomed = if volumes {
            storage.volumes_to_delete_with(&vm)?
        } else {
            Vec::new()
        };
        self.store.delete(id)?;
        storage.delete_checked_volumes(&doomed)?;
        let paths = self.paths(id);
        let _ = std::fs::remove_dir_all(&paths.dir);
        let _ = std::fs::remove_dir_all(&paths.run);
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        Ok(())
    }

    /// Runs a lifecycle request on VM `name`; answers the VM afterwards.
    pub async fn act(
        self: &Arc<Self>,
        uid: Option<u32>,
        name: &str,
        request: Request,
        stop: StopRequest,
    ) -> Result<Vm, OpError> {
        let r = self.act_inner(name, request, stop).await;
        self.audit(uid, request.as_str(), name, &r);
        r
    }

    async fn act_inner(
        self: &Arc<Self>,
        name: &str,
        request: Request,
        stop: StopRequest,
    ) -> Result<Vm, OpError> {
        let id = self.get(name)?.id;
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let mut vm = self.store.by_id(id)?.ok_or_else(|| OpError::no_vm(name))?;
        lifecycle::allowed(name, vm.state, request).map_err(OpError::Conflict)?;
        let timeout = stop
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        match request {
            Request::Start => self.start_locked(&mut vm).await?,
            Request::Stop => self.stop_locked(&mut vm, timeout).await?,
            Request::Restart => {
                self.stop_locked(&mut vm, timeout).await?;
                self.start_locked(&mut vm).await?;
            }
            Request::Pause | Request::Resume => {
                let live = self.live_of(id).ok_or_else(|| {
                    OpError::Internal(format!("VM '{name}' has no process handle"))
                })?;
                let driver = self.driver_of(&vm)?;
                let pause = request == Request::Pause;
                blocking(move || {
                    if pause {
                        driver.pause(&live.process)
                    } else {
                        driver.resume(&live.process)
                    }
                })
                .await??;
                let to = if pause {
                    VmState::Paused
                } else {
                    VmState::Running
                };
                self.set_state(&mut vm, to, None)?;
            }
            Request::Delete => return Err(OpError::Internal("delete is not an action".into())),
        }
        Ok(vm)
    }

    /// Starts `vm` (its lock held) and waits until its control socket answers.
    async fn start_locked(self: &Arc<Self>, vm: &mut Vm) -> Result<(), OpError> {
        let driver = self.driver_of(vm)?;
        driver.check(&vm.spec.runnable())?;
        let spec = crate::network::plug(self, vm)?.runnable();
        let before = (vm.state, vm.exit_status, vm.message.clone());
        vm.exit_status = None;
        self.set_state(vm, VmState::Starting, None)?;
        let paths = self.paths(vm.id);
        let (d, p) = (driver.clone(), paths.clone());
        let process = match blocking(move || d.start(&p, &spec)).await? {
            Ok(process) => process,
            Err(e) => {
                // No process was made: the VM is as it was.
                crate::network::unplug(vm.id);
                vm.exit_status = before.1;
                self.set_state(vm, before.0, before.2)?;
                return Err(OpError::Driver(format!("start failed: {e}")));
            }
        };
        vm.pid = Some(process.pid);
        self.store.update(vm)?;
        let live = self.watch(vm.id, process);
        let deadline = Instant::now() + START_TIMEOUT;
        let mut exit_rx = live.exit.subscribe();
        let mut poll = Duration::from_millis(1);
        loop {
            let exited = *exit_rx.borrow_and_update();
            if let Some(code) = exited {
                return self.exited_during_start(vm, &paths, code);
            }
            let (d, l) = (driver.clone(), live.clone());
            match blocking(move || d.ready(&l.process)).await? {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    let d = driver.clone();
                    let l = live.clone();
                    let _ = blocking(move || d.kill(&l.process)).await;
                    live.exited(Duration::from_secs(10)).await;
                    self.forget_live(vm.id);
                    let msg = format!(
                        "the VMM did not answer on its control socket within {} s and was killed: {e}",
                        START_TIMEOUT.as_secs()
                    );
                    self.set_state(vm, VmState::Crashed, Some(msg.clone()))?;
                    return Err(OpError::Driver(msg));
                }
                Err(_) => {
                    // 1 ms, then 2 ms: a VMM answers within milliseconds of its start, a
                    // refused connect costs microseconds, and a longer step would be added to
                    // every start; the exit watcher ends the wait at once if it dies instead.
                    let _ = tokio::time::timeout(poll, exit_rx.changed()).await;
                    poll = Duration::from_millis(2);
                }
            }
        }
        self.set_state(vm, VmState::Running, None)?;
        Ok(())
    }

    fn exited_during_start(
        &self,
        vm: &mut Vm,
        paths: &VmPaths,
        code: Option<i32>,
    ) -> Result<(), OpError> {
        self.forget_live(vm.id);
        vm.exit_status = code;
        if code == Some(0) {
            self.set_state(
                vm,
                VmState::Stopped,
                Some("the guest ended during start (exit status 0)".into()),
            )?;
            return Ok(());
        }
        let log = std::fs::read_to_string(paths.vmm_log()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let msg = format!(
            "the VMM exited during start (status {}): {}",
            code.map_or("unknown".into(), |c| c.to_string()),
            tail.join(" / ")
        );
        self.set_state(vm, VmState::Crashed, Some(msg.clone()))?;
        Err(OpError::Driver(msg))
    }

    /// Stops `vm` (its lock held).
    async fn stop_locked(&self, vm: &mut Vm, timeout: Duration) -> Result<(), OpError> {
        let Some(live) = self.live_of(vm.id) else {
            self.set_state(
                vm,
                VmState::Stopped,
                Some("its process was already gone".into()),
            )?;
            return Ok(());
        };
        let before = vm.state;
        self.set_state(vm, VmState::Stopping, None)?;
        let (driver, l) = (self.driver_of(vm)?, live.clone());
        match blocking(move || driver.stop(&l.process, timeout)).await? {
            Ok(outcome) => {
                vm.exit_status = live.exited(Duration::from_secs(10)).await.flatten();
                self.forget_live(vm.id);
                self.set_state(vm, VmState::Stopped, Some(outcome.describe().into()))?;
                Ok(())
            }
            Err(e) => {
                let msg = format!("stop failed: {e}");
                self.set_state(vm, before, Some(msg.clone()))?;
                Err(OpError::Driver(msg))
            }
        }
    }

    /// Registers `process` as VM `id`'s and watches for its exit.
    fn watch(self: &Arc<Self>, id: Uuid, process: Process) -> Arc<Live> {
        let live = Arc::new(Live {
            process,
            exit: watch::channel(None).0,
        });
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, live.clone());
        let sup = self.clone();
        let l = live.clone();
        tokio::spawn(async move {
            wait_exit(l.clone()).await;
            let code = l.process.reap();
            l.exit.send_replace(Some(code));
            sup.on_exit(id, &l, code).await;
        });
        live
    }

    /// Records a process that ended on its own (not through a stop by this daemon).
    async fn on_exit(&self, id: Uuid, live: &Live, code: Option<i32>) {
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let Ok(Some(mut vm)) = self.store.by_id(id) else {
            return;
        };
        if vm.pid != Some(live.process.pid) || !vm.state.has_process() {
            return; // A request holding the lock already recorded it.
        }
        self.forget_live(id);
        vm.exit_status = code;
        let (to, msg) = match code {
            Some(0) => (VmState::Stopped, "the VM ended by itself (exit status 0)".to_string()),
            None => (VmState::Stopped, "the VMM exited; its exit status is unknown (it was started by an earlier paddockd)".to_string()),
            Some(c) => (VmState::Crashed, format!("the VMM exited with status {c}; see {}", self.paths(id).vmm_log().display())),
        };
        let r = self
            .set_state(&mut vm, to, Some(msg))
            .map_err(OpError::from);
        self.audit(None, "exit", &vm.name, &r);
    }

    /// After a daemon start: re-attaches to every VMM that still runs and records the VMs
    /// whose process ended meanwhile.
    pub async fn recover(self: &Arc<Self>) -> Result<(), OpError> {
        for mut vm in self.store.list()? {
            if !vm.state.has_process() {
                continue;
            }
            let paths = self.paths(vm.id);
            let driver = self.driver_of(&vm)?;
            let pid = vm.pid;
            let attached = blocking(move || {
                let pid = pid.ok_or_else(|| "no pid was recorded".to_string())?;
                let p = driver.attach(pid, &paths).map_err(|e| e.to_string())?;
                let st = driver.status(&p).map_err(|e| e.to_string())?;
                Ok::<_, String>((p, st.state))
            })
            .await?;
            let r = match attached {
                Ok((process, state)) => {
                    let to = if state == RunState::Paused {
                        VmState::Paused
                    } else {
                        VmState::Running
                    };
                    self.watch(vm.id, process);
                    self.set_state(
                        &mut vm,
                        to,
                        Some("re-attached after a paddockd restart".into()),
                    )
                    .map_err(OpError::from)
                }
                Err(why) => {
                    vm.exit_status = None;
                    let msg = format!(
                        "its VMM ended while paddockd was not running ({why}); exit status unknown"
                    );
                    self.set_state(&mut vm, VmState::Stopped, Some(msg))
                        .map_err(OpError::from)
                }
            };
            self.audit(None, "attach", &vm.name, &r);
        }
        Ok(())
    }
}

impl Supervisor {
    /// Records `action` on `target` by `uid` with `result` (`ok` or the error answered) in
    /// the audit log and announces it, for requests outside the VM state machine.
    pub fn record(&self, uid: Option<u32>, action: &str, target: &str, result: &str) {
        match self.store.audit(&now(), uid, action, target, result) {
            Ok(entry) => self.emit(Event::Audit(entry)),
            Err(e) => eprintln!("paddockd: audit log: {e}"),
        }
    }
}

/// Waits until the process has exited (its pidfd turns readable), on a blocking thread.
async fn wait_exit(live: Arc<Live>) {
    let waited = tokio::task::spawn_blocking(move || loop {
        match live.process.wait_exit(Duration::from_secs(3600)) {
            Ok(true) => return,
            Ok(false) => continue,
            // poll(2) on a pidfd does not fail in practice; fall back to a slow check.
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    });
    let _ = waited.await;
}
