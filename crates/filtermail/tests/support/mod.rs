//! Shared by the integration tests.

pub mod client;
pub mod listener;
pub mod logs;
pub mod pgp;
pub mod sink;
