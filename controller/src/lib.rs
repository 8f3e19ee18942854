//! kmm-controller library: the cluster-wide side of kmm-rs, split by concern.
//!
//! - [`lease`]: leader election through a `coordination.k8s.io/v1` Lease;
//! - [`reconcile`]: the Module controller (finalizer, status, device plugin,
//!   DRA driver and DeviceClasses, namespace label), run by the leader only;
//! - [`status`] / [`plugin`]: the pure decisions it applies; [`kstatus`]: the
//!   `Ready` / `Reconciling` / `Stalled` conditions generic tools read;
//! - [`labels`]: labels on the objects the controller creates;
//! - [`metrics`] / [`server`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`build`]: in-cluster build and sign Jobs for missing kernel images;
//! - [`preflight`]: the PreflightValidation controller (leader only), every Module checked
//!   against a coming kernel, built and signed with [`build`]'s Jobs;
//! - [`webhook`]: admission webhooks (every replica), HTTPS;
//! - [`agent_credentials`]: pull secrets for agents, on the webhook server;
//! - [`rollout`]: the ModuleRollout controller (leader only), automatic ordered upgrades.
#![warn(missing_docs)]

pub mod agent_credentials;
pub mod build;
pub mod error;
pub mod kstatus;
pub mod labels;
pub mod lease;
pub mod metrics;
pub mod plugin;
pub mod preflight;
pub mod reconcile;
pub mod rollout;
pub mod server;
pub mod status;
pub mod webhook;

pub use error::{Error, Result};
