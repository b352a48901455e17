//! walcached's integration tests, against real PostgreSQL and Redis servers from the test kit.
#![allow(missing_docs)]

mod acl;
mod admin;
mod cli;
mod ddl_capture;
mod drift;
mod faults;
mod flight;
mod http_limits;
mod identity;
mod liveness;
mod mtls;
mod out_of_service;
mod pipeline;
mod redis_loss;
mod refresh;
mod signing;
mod slot;
mod sockets;
mod support;
mod tags;
mod visibility;
