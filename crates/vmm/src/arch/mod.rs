//! Architecture-specific machine setup.

pub mod x86_64;
