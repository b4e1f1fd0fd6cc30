//! Pool metrics for `GET /metrics`: each pool's file-system capacity, the bytes its volumes
//! occupy, and the bytes still available.

use std::fmt::Write;

use super::pool_view;
use super::store::StorageStore;
use crate::metrics::label;
use crate::store::Store;

/// The pool families in the Prometheus text format (empty families when there are no
/// pools, so the names are always present).
pub fn render(store: &Store) -> String {
    let db = StorageStore(store);
    let pools: Vec<_> = db
        .pools()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| pool_view(&db, p).ok())
        .collect();
    let mut out = String::new();
    type Pick = fn(&paddock_api::storage::Pool) -> u64;
    let families: [(&str, &str, Pick); 3] = [
        (
            "paddock_pool_capacity_bytes",
            "Size of the file system that holds the pool's directory.",
            |p| p.capacity,
        ),
        (
            "paddock_pool_allocation_bytes",
            "Bytes the pool's volumes occupy on disk.",
            |p| p.allocation,
        ),
        (
            "paddock_pool_available_bytes",
            "Bytes still free on the pool's file system.",
            |p| p.available,
        ),
    ];
    for (name, help, pick) in families {
        crate::metrics::family(&mut out, name, "gauge", help);
        for p in &pools {
            let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", label(&p.name), pick(p));
        }
    }
    out
}
