//! Whole-image operations built on [`crate::BlockImage`]: chain-aware mapping, conversion,
//! comparison, and backing-chain maintenance (rebase, commit).

pub mod chain;
pub mod compare;
pub mod convert;
pub mod map;
pub mod progress;
