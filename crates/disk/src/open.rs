//! Opening and creating images: options, path confinement for backing files and extents,
//! and the backing-chain depth limit.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::Format;
use crate::formats;
use crate::formats::raw::ProbedRaw;
use crate::image::BlockImage;
use crate::probe::probe_storage;
use crate::storage::{FileStorage, Storage};

/// The deepest backing chain the engine follows.
pub const MAX_BACKING_DEPTH: u32 = 64;

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The declared format; `None` probes by magic. A file declared raw is never probed.
    pub format: Option<Format>,
    /// Open for writing.
    pub writable: bool,
    /// Directories that backing files and extents may live in. Empty means the directory of
    /// the image itself (and, for backing chains, of each image in turn).
    pub allowed_dirs: Vec<PathBuf>,
    /// Open the backing chain (off for `info` of a lone file, `rebase -u`, and import gates).
    pub open_backing: bool,
    /// Permit images that name a backing file at all (an import gate sets this to false).
    pub allow_backing: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            format: None,
            writable: false,
            allowed_dirs: Vec::new(),
            open_backing: true,
            allow_backing: true,
        }
    }
}

impl OpenOptions {
    /// Read-only options with the given declared format.
    pub fn read(format: Option<Format>) -> Self {
        OpenOptions {
            format,
            ..Default::default()
        }
    }

    /// Read-write options with the given declared format.
    pub fn write(format: Option<Format>) -> Self {
        OpenOptions {
            format,
            writable: true,
            ..Default::default()
        }
    }
}

/// What a format needs to open the files an image refers to: the image's own directory, the
/// directories it may reach, whether it is writable, and how deep in a chain it sits.
#[derive(Debug, Clone)]
pub struct OpenContext {
    /// The image file itself, when it is a file.
    pub path: Option<PathBuf>,
    /// Open for writing.
    pub writable: bool,
    /// Canonical directories other files may come from.
    pub allowed_dirs: Vec<PathBuf>,
    /// Whether to open the backing chain.
    pub open_backing: bool,
    /// Whether a backing file reference is permitted at all.
    pub allow_backing: bool,
    /// Depth of this image in a backing chain (0 = top).
    pub depth: u32,
}

impl OpenContext {
    /// A context for an image that may refer to no other file (fuzzing, memory images).
    pub fn isolated(writable: bool) -> Self {
        OpenContext {
            path: None,
            writable,
            allowed_dirs: Vec::new(),
            open_backing: false,
            allow_backing: false,
            depth: 0,
        }
    }

    fn for_file(path: &Path, opts: &OpenOptions) -> Result<Self> {
        let mut allowed = Vec::new();
        for d in &opts.allowed_dirs {
            allowed.push(
                d.canonicalize()
                    .ctx(|| format!("allowed directory {}", d.display()))?,
            );
        }
        if allowed.is_empty() {
            let canon = path
                .canonicalize()
                .ctx(|| format!("cannot open {}", path.display()))?;
            if let Some(parent) = canon.parent() {
                allowed.push(parent.to_path_buf());
            }
        }
        Ok(OpenContext {
            path: Some(path.to_path_buf()),
            writable: opts.writable,
            allowed_dirs: allowed,
            open_backing: opts.open_backing,
            allow_backing: opts.allow_backing,
            depth: 0,
        })
    }

    /// The directory relative names are resolved against.
    pub fn base_dir(&self) -> Option<&Path> {
        self.path.as_deref().and_then(Path::parent)
    }

    /// Resolves `name` (as written in an image) to a path inside the allowed directories.
    /// Refuses absolute paths and `..` that lead outside, protocol prefixes (`nbd:`,
    /// `json:`), and symlinks that point outside.
    pub fn resolve(&self, name: &str, what: &str) -> Result<PathBuf> {
        let refuse = |why: &str| {
            Error::new(
                ErrorKind::PathNotAllowed,
                format!(
                    "{what} '{name}' {why}; allowed directories: {}",
                    self.allowed_list()
                ),
            )
        };
        if name.is_empty() || name.contains('\0') {
            return Err(refuse("is empty or contains NUL"));
        }
        if name.starts_with("json:") || (name.contains("://") || has_protocol_prefix(name)) {
            return Err(refuse("is a protocol reference, not a file"));
        }
        let base = self
            .base_dir()
            .ok_or_else(|| refuse("cannot be opened from a memory image"))?;
        let candidate = if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else {
            base.join(name)
        };
        let canon = candidate.canonicalize().map_err(|e| {
            Error::io(
                format!("{what} '{name}' (resolved to {})", candidate.display()),
                e,
            )
        })?;
        if !self.allowed_dirs.iter().any(|d| canon.starts_with(d)) {
            return Err(refuse("is outside the allowed directories"));
        }
        Ok(canon)
    }

    fn allowed_list(&self) -> String {
        self.allowed_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Opens a side file (an extent) named by the image, confined like [`Self::resolve`].
    pub fn open_side_file(&self, name: &str, what: &str) -> Result<FileStorage> {
        let path = self.resolve(name, what)?;
        FileStorage::open(&path, self.writable).ctx(|| format!("{what} {}", path.display()))
    }

    /// Opens a backing image named by this image, read-only, one level deeper.
    pub fn open_backing_file(
        &self,
        name: &str,
        format: Option<Format>,
    ) -> Result<Box<dyn BlockImage>> {
        if !self.allow_backing {
            return Err(Error::new(
                ErrorKind::PathNotAllowed,
                format!(
                    "image names backing file '{name}', and backing files are not allowed here"
                ),
            ));
        }
        if self.depth + 1 >= MAX_BACKING_DEPTH {
            return Err(Error::limit(format!(
                "backing chain deeper than {MAX_BACKING_DEPTH} images (a loop?) at '{name}'"
            )));
        }
        let path = self.resolve(name, "backing file")?;
        if let Some(me) = &self.path {
            if me.canonicalize().ok().as_deref() == Some(path.as_path()) {
                return Err(Error::corrupt(format!(
                    "image is its own backing file '{name}'"
                )));
            }
        }
        let mut ctx = self.clone();
        ctx.path = Some(path.clone());
        ctx.writable = false;
        ctx.depth += 1;
        // Backing images may live beside their own files too.
        if let Some(parent) = path.parent() {
            if !ctx.allowed_dirs.iter().any(|d| parent.starts_with(d)) {
                ctx.allowed_dirs.push(parent.to_path_buf());
            }
        }
        open_file_with(&path, format, &ctx).map_err(|e| e.context(format!("backing file {name}")))
    }
}

fn has_protocol_prefix(name: &str) -> bool {
    // "nbd:host:port", "file:...", "http:..." — a colon before any slash.
    match name.find(':') {
        Some(i) => {
            let head = &name[..i];
            !head.is_empty()
                && !head.contains('/')
                && head
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
        }
        None => false,
    }
}

/// Opens the image at `path`.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Box<dyn BlockImage>> {
    let ctx = OpenContext::for_file(path, opts)?;
    open_file_with(path, opts.format, &ctx).map_err(|e| {
        if e.message().contains(&path.display().to_string()) {
            e
        } else {
            e.context(path.display())
        }
    })
}

fn open_file_with(
    path: &Path,
    format: Option<Format>,
    ctx: &OpenContext,
) -> Result<Box<dyn BlockImage>> {
    let storage = FileStorage::open(path, ctx.writable).ctx(|| {
        let mode = if ctx.writable { " for writing" } else { "" };
        format!("cannot open {}{mode}", path.display())
    })?;
    open_storage(Box::new(storage), format, ctx)
}

/// Opens an image over any storage (memory images, fuzzing).
pub fn open_storage(
    storage: Box<dyn Storage>,
    format: Option<Format>,
    ctx: &OpenContext,
) -> Result<Box<dyn BlockImage>> {
    match format {
        Some(f) => formats::driver(f).open(storage, ctx),
        None => match probe_storage(storage.as_ref())? {
            Format::Raw => Ok(ProbedRaw::guard(
                formats::driver(Format::Raw).open(storage, ctx)?,
            )),
            f => formats::driver(f).open(storage, ctx),
        },
    }
}

/// Preallocation modes, as `qemu-img create -o preallocation=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Allocate nothing up front.
    #[default]
    Off,
    /// Allocate metadata only.
    Metadata,
    /// Reserve space with fallocate.
    Falloc,
    /// Write zeroes over the whole image.
    Full,
}

impl std::str::FromStr for Preallocation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Preallocation::Off),
            "metadata" => Ok(Preallocation::Metadata),
            "falloc" => Ok(Preallocation::Falloc),
            "full" => Ok(Preallocation::Full),
            _ => Err(Error::invalid(format!(
                "preallocation '{s}' is not one of off, metadata, falloc, full"
            ))),
        }
    }
}

/// How to create an image.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Virtual size in bytes (taken from the backing file when 0 and a backing file is set).
    pub size: u64,
    /// Backing file name to record (relative names resolve against the new image's directory).
    pub backing_file: Option<String>,
    /// Backing file format to record.
    pub backing_format: Option<Format>,
    /// Format options, as `qemu-img create -o key=value` (cluster_size, compat, subformat...).
    /// A driver rejects keys it does not know.
    pub options: BTreeMap<String, String>,
}

impl CreateOptions {
    /// Options for a plain image of `size` bytes.
    pub fn sized(size: u64) -> Self {
        CreateOptions {
            size,
            ..Default::default()
        }
    }

    /// Takes option `key` out of the map, parsed with `parse`.
    pub fn take<T>(
        opts: &mut BTreeMap<String, String>,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T>,
    ) -> Result<Option<T>> {
        match opts.remove(key) {
            Some(v) => parse(&v)
                .map(Some)
                .map_err(|e| e.context(format!("option {key}={v}"))),
            None => Ok(None),
        }
    }

    /// Fails if any option is left unconsumed (a driver calls this after taking its keys).
    pub fn reject_unknown(opts: &BTreeMap<String, String>, format: Format) -> Result<()> {
        match opts.keys().next() {
            Some(k) => Err(Error::invalid(format!(
                "{format} does not support option '{k}'"
            ))),
            None => Ok(()),
        }
    }
}

/// Parses a size with an optional K/M/G/T/P/E suffix (powers of 1024), like qemu-img.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                'E' => 60,
                _ => return Err(Error::invalid(format!("size '{s}' has an unknown suffix"))),
            };
            (&s[..i], 1u64 << shift)
        }
        _ => (s, 1),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| Error::invalid(format!("'{s}' is not a size")))?;
    if !(0.0..1.8e19).contains(&value) {
        return Err(Error::invalid(format!("size '{s}' is out of range")));
    }
    let bytes = value * mult as f64;
    if bytes >= 1.8e19 || bytes.fract() != 0.0 {
        return Err(Error::invalid(format!(
            "size '{s}' is not a whole number of bytes"
        )));
    }
    Ok(bytes as u64)
}

/// Creates an image of `format` at `path` and returns it open for writing.
pub fn create(path: &Path, format: Format, opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
    if path
        .components()
        .any(|c| matches!(c, Component::Normal(n) if n.is_empty()))
    {
        return Err(Error::invalid("empty path"));
    }
    let mut opts = opts.clone();
    if opts.size == 0 {
        if let Some(b) = &opts.backing_file {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let bpath = if Path::new(b).is_absolute() {
                PathBuf::from(b)
            } else {
                dir.join(b)
            };
            let backing = open(&bpath, &OpenOptions::read(opts.backing_format))?;
            opts.size = backing.virtual_size();
        }
    }
    formats::driver(format)
        .create(path, &opts)
        .map_err(|e| e.context(path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_qemu_img() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1K").unwrap(), 1024);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999E").is_err());
    }

    #[test]
    fn resolve_confines_paths() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("pool");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("base.img"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), inner.join("link")).unwrap();
        let top = inner.join("top.img");
        std::fs::write(&top, b"x").unwrap();
        let ctx = OpenContext::for_file(&top, &OpenOptions::read(None)).unwrap();
        assert!(ctx.resolve("base.img", "backing file").is_ok());
        for bad in [
            "../secret",
            "/etc/passwd",
            "link",
            "nbd:localhost:10809",
            "json:{}",
        ] {
            let err = ctx.resolve(bad, "backing file").unwrap_err();
            assert!(
                matches!(err.kind(), ErrorKind::PathNotAllowed | ErrorKind::Io),
                "{bad}: {err}"
            );
            assert!(ctx.resolve(bad, "backing file").is_err());
        }
    }
}
