//! Output helpers shared by commands: human sizes, JSON printing, error reporting.

use std::process::ExitCode;

/// Formats a byte count the way qemu-img does ("1 GiB", "192 KiB", "1.5 MiB").
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {}", UNITS[unit])
}

/// Rows as an aligned table, two spaces between columns (the first row is the header).
pub fn table<R: AsRef<[String]>>(rows: &[R]) -> String {
    let n = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let mut widths = vec![0usize; n];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r.as_ref()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("paddock: cannot encode JSON: {e}"),
    }
}

/// Reports `err` on stderr (or as JSON on stdout) and returns exit status `code`.
pub fn fail(err: &anyhow::Error, json: bool, code: u8) -> ExitCode {
    if json {
        let kind = err
            .downcast_ref::<paddock_disk::Error>()
            .map(|e| serde_json::to_value(e.kind()).unwrap_or_default());
        print_json(&serde_json::json!({ "error": format!("{err:#}"), "kind": kind }));
    } else {
        eprintln!("paddock: {err:#}");
    }
    ExitCode::from(code)
}

/// Reports a failed daemon call the way every daemon command does (stderr, or a JSON object
/// with the error, the field at fault and the HTTP status on stdout) and returns exit status 1.
pub fn client_failure(e: &paddock_api::ClientError, json: bool) -> ExitCode {
    if json {
        let (status, field) = match e {
            paddock_api::ClientError::Api { status, body } => (Some(*status), body.field.clone()),
            _ => (None, None),
        };
        print_json(&serde_json::json!({
            "error": e.to_string(), "field": field, "status": status
        }));
    } else {
        eprintln!("paddock: {e}");
    }
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_match_qemu_img_style() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(196 << 10), "196 KiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
    }
}
