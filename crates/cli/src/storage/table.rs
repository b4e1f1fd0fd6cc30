//! Human output for pools, volumes and tasks.

use paddock_api::storage::{Pool, Task, Volume};

use crate::output::human_size;

fn render(rows: Vec<Vec<String>>) -> String {
    crate::output::table(&rows)
}

fn header(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|s| s.to_string()).collect()
}

/// The pools.
pub fn pools(pools: &[Pool]) -> String {
    let mut rows = vec![header(&[
        "NAME",
        "PATH",
        "VOLUMES",
        "ALLOCATION",
        "AVAILABLE",
        "CAPACITY",
    ])];
    for p in pools {
        rows.push(vec![
            p.name.clone(),
            p.path.display().to_string(),
            p.volumes.to_string(),
            human_size(p.allocation),
            human_size(p.available),
            human_size(p.capacity),
        ]);
    }
    render(rows)
}

/// One pool.
pub fn pool_detail(p: &Pool) -> String {
    format!(
        "name: {}\npath: {}\nvolumes: {}\nallocation: {}\navailable: {}\ncapacity: {}\ncreated: {}\n",
        p.name,
        p.path.display(),
        p.volumes,
        human_size(p.allocation),
        human_size(p.available),
        human_size(p.capacity),
        p.created_at
    )
}

/// The volumes.
pub fn volumes(vols: &[Volume]) -> String {
    let mut rows = vec![header(&[
        "NAME",
        "FORMAT",
        "CAPACITY",
        "ALLOCATION",
        "BACKING",
        "TASK",
    ])];
    for v in vols {
        rows.push(vec![
            v.name.clone(),
            v.format.clone(),
            human_size(v.capacity),
            human_size(v.allocation),
            v.backing.clone().unwrap_or_else(|| "-".into()),
            v.task.map_or("-".into(), |t| t.to_string()),
        ]);
    }
    render(rows)
}

/// One volume.
pub fn volume_detail(v: &Volume) -> String {
    let mut out = format!(
        "name: {}\npool: {}\npath: {}\nformat: {}\ncapacity: {}\nallocation: {}\ncreated: {}\n",
        v.name,
        v.pool,
        v.path.display(),
        v.format,
        human_size(v.capacity),
        human_size(v.allocation),
        v.created_at
    );
    if let Some(b) = &v.backing {
        out += &format!("backing: {b}\n");
    }
    if let Some(t) = v.task {
        out += &format!("task: {t}\n");
    }
    out
}

/// The tasks.
pub fn tasks(tasks: &[Task]) -> String {
    let mut rows = vec![header(&[
        "ID", "KIND", "TARGET", "STATE", "PROGRESS", "CREATED",
    ])];
    for t in tasks {
        rows.push(vec![
            t.id.to_string(),
            t.kind.as_str().into(),
            t.target.clone(),
            t.state.to_string(),
            format!("{}%", t.progress),
            t.created_at.clone(),
        ]);
    }
    render(rows)
}

/// One task.
pub fn task_detail(t: &Task) -> String {
    let mut out = format!(
        "id: {}\nkind: {}\ntarget: {}\nstate: {}\nprogress: {}%\ncreated: {}\n",
        t.id,
        t.kind.as_str(),
        t.target,
        t.state,
        t.progress,
        t.created_at
    );
    if let Some(f) = &t.finished_at {
        out += &format!("finished: {f}\n");
    }
    if let Some(e) = &t.error {
        out += &format!("error: {e}\n");
    }
    out
}
