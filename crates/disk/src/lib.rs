//! Paddock's disk-image engine: raw, qcow2, VMDK, VHD (`vpc`), VHDX and VDI images behind one
//! trait, [`BlockImage`], with probing, conversion, checking, comparison and mapping on top.
//!
//! Every image is untrusted input: sizes, offsets and counts are checked before use, backing
//! files and extents are confined to allowed directories, and source images are opened
//! read-only so no operation can write to them.
#![forbid(unsafe_code)]

pub mod error;
pub mod format;
pub mod formats;
pub mod fuzzing;
pub mod image;
pub mod open;
pub mod probe;
pub mod storage;

pub use error::{Error, ErrorKind, Result};
pub use format::Format;
pub use image::{
    BlockImage, CheckReport, CompressedWrite, CompressionLevel, Extent, ExtentKind, ImageInfo,
};
pub use open::{create, open, open_storage, parse_size, CreateOptions, OpenContext, OpenOptions};
pub use storage::{FileStorage, MemStorage, Storage};
pub mod ops;
pub use ops::compare::{compare, Comparison};
pub use ops::convert::{convert, ConvertOptions, ConvertStats};
pub use ops::progress::Progress;
