//! One integration-test binary; each module covers one area.

mod foundation;
mod helpers;
