//! Black-box tests of the simulator: every fake, fault, window and control route is exercised
//! through real sockets on 127.0.0.1:0. One test binary (modules below) keeps linking cheap.

mod abuse;
mod browser;
mod bucket;
mod cli;
mod control;
mod core;
mod executor;
mod faults;
mod journal;
mod karma;
mod memory;
mod providers;
mod replicas;
mod smtp;
mod support;
mod traces;
