//! Emulated devices.

pub mod legacy;
