//! The warm agent pool: workers (one per pool container), their slots (one
//! long-lived agent process each), and the runtime that starts workers.

mod progress;
pub mod runtime;
mod settings;
pub mod slots;
mod status;
mod turn;
mod worker;

pub use settings::{PoolRuntime, PoolSettings};
pub use turn::format_batch;
pub use worker::{Worker, WorkerError, WorkerSettings};
