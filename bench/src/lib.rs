//! Library side of `nham-bench`: the chain lab (namespaces, links, VNF
//! processes, SFF, traffic trials) shared by the `nham-bench` binary and the
//! data-path integration tests in `bench/tests/`; the HA trials through
//! `nhamd` (`ha`) and the soak built on them (`soak`); a lab of hosts with
//! an etcd cluster (`hosts`), the ground of the host-failure tests.
#![forbid(unsafe_code)]

pub mod ha;
pub mod hosts;
pub mod lab;
pub mod soak;
