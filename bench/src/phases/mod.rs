//! The phases, in the order the issue lists them.

pub mod ack;
pub mod cpu;
pub mod e2e;
pub mod path;
