//! Server tests over in-memory streams, driven by a raw client built from
//! the nbdx-proto client machine, so that requests can be sent exactly as
//! a test needs (including wrongly).

mod errors;
mod harness;
mod lifecycle;
mod limits;
mod transmission;

pub(crate) use harness::*;
