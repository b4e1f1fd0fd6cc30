//! Volume files through the disk engine (`paddock-disk`): create, measure, clone, resize,
//! and the file-system space of a pool. Every function blocks; callers run them on tokio's
//! blocking pool.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use paddock_disk::{BlockImage, CreateOptions, Format, OpenOptions};

use crate::error::OpError;

/// A format name as the API accepts it (`vhd` is `vpc`), for field `field`.
pub fn format(name: &str, field: &str) -> Result<Format, OpError> {
    name.parse::<Format>().map_err(|e| OpError::Invalid {
        field: field.into(),
        message: format!("{e}; use raw, qcow2, vmdk, vpc, vhdx or vdi"),
    })
}

/// The engine's error as a 422 on `field`.
fn invalid(field: &str, e: impl std::fmt::Display) -> OpError {
    OpError::Invalid {
        field: field.into(),
        message: e.to_string(),
    }
}

/// Creates an empty image of `size` bytes.
pub fn create(path: &Path, fmt: Format, size: u64) -> Result<(), OpError> {
    if size == 0 {
        return Err(invalid("capacity", "must be at least 1 byte"));
    }
    let img = paddock_disk::create(path, fmt, &CreateOptions::sized(size))
        .map_err(|e| invalid("capacity", e))?;
    let r = img.finish();
    drop(img);
    if let Err(e) = r {
        remove_image(path);
        return Err(OpError::Internal(format!("{}: {e}", path.display())));
    }
    Ok(())
}

/// Creates a qcow2 linked clone at `path` whose backing file is `base` (a file name in the
/// same directory, so the reference is relative and the pool can move).
pub fn linked_clone(path: &Path, base: &str, base_format: Format) -> Result<(), OpError> {
    let opts = CreateOptions {
        size: 0,
        backing_file: Some(base.to_string()),
        backing_format: Some(base_format),
        options: Default::default(),
    };
    let img = paddock_disk::create(path, Format::Qcow2, &opts)
        .map_err(|e| OpError::Internal(format!("creating {}: {e}", path.display())))?;
    let r = img.finish();
    drop(img);
    r.map_err(|e| {
        remove_image(path);
        OpError::Internal(format!("{}: {e}", path.display()))
    })
}

/// Opens a volume read-only in its format, without its backing chain.
pub fn open_lone(path: &Path, fmt: Format) -> paddock_disk::Result<Box<dyn BlockImage>> {
    let opts = OpenOptions {
        format: Some(fmt),
        open_backing: false,
        ..OpenOptions::read(Some(fmt))
    };
    paddock_disk::open(path, &opts)
}

/// Opens a volume to read its guest data, through its backing chain confined to `dir`.
pub fn open_chain(
    path: &Path,
    fmt: Format,
    dir: &Path,
) -> paddock_disk::Result<Box<dyn BlockImage>> {
    let opts = OpenOptions {
        allowed_dirs: vec![dir.to_path_buf()],
        ..OpenOptions::read(Some(fmt))
    };
    paddock_disk::open(path, &opts)
}

/// A volume's virtual size and the bytes its files occupy (0, 0 when it cannot be read,
/// e.g. while a task is still writing it).
pub fn measure(path: &Path, fmt: Format) -> (u64, u64) {
    match open_lone(path, fmt) {
        Ok(img) => {
            let info = img.info();
            let files: Vec<PathBuf> = if info.files.is_empty() {
                vec![path.to_path_buf()]
            } else {
                info.files
            };
            (img.virtual_size(), files.iter().map(|f| allocated(f)).sum())
        }
        Err(_) => (0, allocated(path)),
    }
}

/// Bytes a file occupies on disk (st_blocks × 512).
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Changes a volume's virtual size; a smaller size needs `shrink`.
pub fn resize(path: &Path, fmt: Format, size: u64, shrink: bool) -> Result<u64, OpError> {
    if size == 0 {
        return Err(invalid("capacity", "must be at least 1 byte"));
    }
    let opts = OpenOptions {
        open_backing: false,
        ..OpenOptions::write(Some(fmt))
    };
    let img = paddock_disk::open(path, &opts)
        .map_err(|e| OpError::Internal(format!("opening {}: {e}", path.display())))?;
    let old = img.virtual_size();
    if size < old && !shrink {
        return Err(invalid(
            "shrink",
            format!(
                "{size} bytes is smaller than the volume ({old} bytes): data past the new end is lost; send \"shrink\": true to confirm"
            ),
        ));
    }
    img.resize(size).map_err(|e| invalid("capacity", e))?;
    img.flush()
        .map_err(|e| OpError::Internal(format!("{}: {e}", path.display())))?;
    Ok(old)
}

/// Removes an image file and, for formats with side files, nothing else: volumes are
/// single files (every format the daemon creates keeps its data in one file).
pub fn remove_image(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// The space of the file system holding `dir`: (capacity, available) in bytes.
pub fn space(dir: &Path) -> (u64, u64) {
    match rustix::fs::statvfs(dir) {
        Ok(s) => (
            s.f_blocks.saturating_mul(s.f_frsize),
            s.f_bavail.saturating_mul(s.f_frsize),
        ),
        Err(_) => (0, 0),
    }
}
