//! The binary's subcommands that are more than a call into the library:
//! their arguments, narration and printed reports. `anyhow` lives here and in
//! `main.rs` only; the library returns typed errors.

pub mod demo;
pub mod dial;
pub mod sim;
