//! Test support for kmm-rs: a real kube-apiserver + etcd (no mocks), a real
//! registry, and a QEMU node booting Debian's kernel.
#![warn(missing_docs)]

pub mod agent;
pub mod audit;
pub mod build_e2e;
pub mod buildah;
pub mod cluster;
pub mod controller;
pub mod controlplane;
pub mod deploy;
pub mod fleet;
pub mod grafana;
pub mod helm;
pub mod identity;
pub mod images;
mod jobexec;
pub mod kwok;
pub mod module;
pub mod monitoring;
pub mod prom_rules;
pub mod prometheus;
pub mod realnode;
pub mod signjob;
pub mod vm;
pub mod vm_agent;
pub mod webhook;
