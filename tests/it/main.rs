//! One integration-test binary; each module covers one area.

mod agent;
mod foundation;
mod helpers;
