//! walcache's integration tests, against real Redis and PostgreSQL servers from the test kit.
#![allow(missing_docs)]

mod api;
mod bypass;
mod envelope;
mod fill_cleanup;
mod fuzz;
mod interleavings;
mod miss_path;
mod mtls;
mod races;
mod read_path;
mod resilience;
mod service;
mod signing;
mod subscriber;
mod support;
mod tag_stamps;
mod tags;
