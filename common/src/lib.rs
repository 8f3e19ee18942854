//! kmm-rs common library: the `Module` API (`kmm.sigs.x-k8s.io/v1beta1`), its CRD,
//! and the pure decisions (eligibility, kernel mapping, substitution) shared by
//! the agent and the controller.
#![warn(missing_docs)]
