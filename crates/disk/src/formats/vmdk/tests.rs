//! Unit tests on memory storage.
