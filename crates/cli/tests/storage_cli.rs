//! `paddock pool`, `paddock volume` and `paddock task` against a real paddockd: tables,
//! `--json`, following an import's task, `--detach` with `task wait`, and errors that say
//! what to do.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn pools_volumes_and_tasks_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, s) = start_daemon(dir.path());
    let pool_dir = dir.path().join("images");
    let pd = pool_dir.to_str().unwrap();

    let p = json(&s, &["pool", "define", "img", pd]);
    assert_eq!(p["name"], "img");
    assert!(pool_dir.is_dir());
    let o = paddock(&s, &["pool", "list"]);
    let table = text(&o.stdout);
    assert!(table.starts_with("NAME") && table.contains(pd), "{table}");

    let v = json(&s, &["volume", "create", "img", "root", "--size", "16M"]);
    assert_eq!(
        (v["format"].as_str(), v["capacity"].as_u64()),
        (Some("qcow2"), Some(16 << 20))
    );
    let src = dir.path().join("src.raw");
    std::fs::write(&src, vec![0x5au8; 2 << 20]).unwrap();

    // Import, followed to the end (JSON: the volume at the end).
    let v = json(
        &s,
        &[
            "volume",
            "import",
            "img",
            "data",
            src.to_str().unwrap(),
            "-f",
            "raw",
            "-O",
            "vdi",
        ],
    );
    assert_eq!(
        (v["format"].as_str(), v["capacity"].as_u64()),
        (Some("vdi"), Some(2 << 20))
    );
    assert!(v.get("task").is_none(), "the task has ended: {v}");

    // Detached: the task at once, then `task wait`.
    let a = json(
        &s,
        &[
            "volume",
            "import",
            "img",
            "copy",
            src.to_str().unwrap(),
            "--detach",
        ],
    );
    let id = a["task"]["id"].as_str().unwrap().to_string();
    let t = json(&s, &["task", "wait", &id]);
    assert_eq!(t["state"], "succeeded");
    assert_eq!(t["progress"], 100);
    let tasks = json(&s, &["task", "list"]);
    assert_eq!(tasks.as_array().unwrap().len(), 2);
    assert!(text(&paddock(&s, &["task", "show", &id]).stdout).contains("state: succeeded"));

    let c = json(&s, &["volume", "clone", "img", "root", "root2"]);
    assert_eq!(c["backing"], "root");
    let r = json(&s, &["volume", "resize", "img", "root2", "32M"]);
    assert_eq!(r["capacity"].as_u64(), Some(32 << 20));
    let o = paddock(&s, &["volume", "list", "img"]);
    let table = text(&o.stdout);
    assert!(table.contains("root2") && table.contains("vdi"), "{table}");
    assert!(text(&paddock(&s, &["volume", "show", "img", "data"]).stdout).contains("format: vdi"));

    // Errors say what to do, as text and as JSON.
    let o = paddock(&s, &["volume", "delete", "img", "root"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("delete the clone first"),
        "{}",
        text(&o.stderr)
    );
    let o = paddock(
        &s,
        &["volume", "create", "img", "../x", "--size", "1M", "--json"],
    );
    assert_eq!(o.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (e["status"].as_u64(), e["field"].as_str()),
        (Some(422), Some("name"))
    );
    let o = paddock(&s, &["pool", "delete", "img"]);
    assert!(
        text(&o.stderr).contains("delete them first"),
        "{}",
        text(&o.stderr)
    );
    let o = paddock(&s, &["task", "cancel", &id]);
    assert!(
        text(&o.stderr).contains("already ended"),
        "{}",
        text(&o.stderr)
    );

    for v in ["root2", "root", "data", "copy"] {
        assert_eq!(
            json(&s, &["volume", "delete", "img", v])["deleted"],
            format!("img/{v}")
        );
    }
    json(&s, &["pool", "delete", "img"]);
    assert_eq!(json(&s, &["pool", "list"]), serde_json::json!([]));
}
