//! Leader election through a `coordination.k8s.io/v1` Lease, the client-go way:
//! the holder renews `renewTime` every few seconds; a candidate takes the Lease
//! over only after it has seen the same record unchanged for a whole
//! `leaseDurationSeconds` on its own clock (no clock agreement needed between
//! replicas). Every write carries the `resourceVersion` it read, so two
//! candidates can never both win the same round.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// Errors of the lease loop.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API server refused or did not answer a Lease call.
    #[error("lease {name}: {source}")]
    Api {
        /// Lease name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The leader could not renew for longer than the renew deadline (or someone
    /// else holds the Lease now): it must stop acting as leader.
    #[error("lost leadership of lease {name}: {why}")]
    Lost {
        /// Lease name.
        name: String,
        /// What happened.
        why: String,
    },
}

impl LeaseError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Api { .. } => "lease_api",
            Self::Lost { .. } => "lease_lost",
        }
    }
}

/// Settings of one elector.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (`holderIdentity`).
    pub identity: String,
    /// `leaseDurationSeconds`: how long a silent holder keeps the Lease.
    pub lease_duration: Duration,
    /// How often the holder renews and a candidate retries.
    pub retry_period: Duration,
    /// The holder gives up when it could not renew for this long (< lease_duration,
    /// so it stops before anyone else may take over).
    pub renew_deadline: Duration,
}

impl LeaseConfig {
    /// Defaults: 15 s lease, renew every 5 s, give up after 10 s without renewal.
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// The part of a Lease that proves its holder is alive: when any of it changes,
/// the holder (or a new one) wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `holderIdentity` (empty when released).
    pub holder: String,
    /// `renewTime` as written.
    pub renew_time: Option<String>,
    /// `leaseTransitions`.
    pub transitions: i32,
    /// `leaseDurationSeconds`.
    pub duration_seconds: i32,
}

impl Record {
    /// The record of a Lease's spec.
    pub fn of(spec: Option<&LeaseSpec>) -> Self {
        let spec = spec.cloned().unwrap_or_default();
        Self {
            holder: spec.holder_identity.unwrap_or_default(),
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            transitions: spec.lease_transitions.unwrap_or(0),
            duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
        }
    }
}

/// What a candidate should do with the Lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: write a new `renewTime`.
    Renew,
    /// Nobody holds it, or the holder went silent for a whole lease duration.
    Acquire,
    /// Someone else holds it and is alive (as far as we can tell).
    Wait {
        /// The current holder.
        holder: String,
    },
}

/// Decides from the Lease's current record, the record this candidate observed
/// before and when it observed it (its own monotonic clock), and now.
///
/// A record seen for the first time is fresh by definition: a new candidate
/// waits a whole lease duration before taking over, even if the holder's
/// `renewTime` looks old (its clock may differ from ours).
pub fn decide(
    identity: &str,
    current: &Record,
    observed: Option<&(Record, Instant)>,
    now: Instant,
) -> Decision {
    if current.holder.is_empty() {
        return Decision::Acquire;
    }
    if current.holder == identity {
        return Decision::Renew;
    }
    let duration = Duration::from_secs(u64::try_from(current.duration_seconds.max(1)).unwrap_or(1));
    match observed {
        Some((seen, at)) if seen == current && now.duration_since(*at) >= duration => {
            Decision::Acquire
        }
        _ => Decision::Wait {
            holder: current.holder.clone(),
        },
    }
}

/// One replica's elector.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Option<(Record, Instant)>,
}

impl LeaderElector {
    /// An elector for `cfg` (nothing is written until [`Self::try_acquire_or_renew`]).
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn api_err(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            name: self.cfg.name.clone(),
            source,
        }
    }

    fn spec(&self, acquire_time: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquire_time.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: read the Lease, then create, renew or take it over as
    /// [`decide`] says. Returns whether this replica holds the Lease now. A
    /// conflict (someone else wrote first) is a lost round, not an error.
    ///
    /// # Errors
    /// API errors other than conflicts.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let Some(lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.api_err(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.api_err(e)),
            };
        };
        let current = Record::of(lease.spec.as_ref());
        let now = Instant::now();
        let decision = decide(&self.cfg.identity, &current, self.observed.as_ref(), now);
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != current)
        {
            self.observed = Some((current.clone(), now));
        }
        let spec = match decision {
            Decision::Wait { .. } => return Ok(false),
            Decision::Renew => self.spec(
                lease.spec.as_ref().and_then(|s| s.acquire_time.clone()),
                current.transitions,
            ),
            Decision::Acquire => {
                tracing::info!(lease = %self.cfg.name, previous = %current.holder, "taking over the lease");
                self.spec(None, current.transitions + 1)
            }
        };
        let mut updated = lease.clone();
        updated.spec = Some(spec);
        // replace() sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&lease.name_any(), &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.api_err(e)),
        }
    }

    /// Tries every `retry_period` until this replica holds the Lease.
    /// Transient API errors are logged and retried.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "lease round failed"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews every `retry_period` while leader; returns when leadership is lost
    /// (someone else holds the Lease, or no renewal succeeded for `renew_deadline`).
    pub async fn hold(&mut self) -> LeaseError {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    return LeaseError::Lost {
                        name: self.cfg.name.clone(),
                        why: "another replica holds it".into(),
                    };
                }
                Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
            }
            if last_renewal.elapsed() >= self.cfg.renew_deadline {
                return LeaseError::Lost {
                    name: self.cfg.name.clone(),
                    why: format!("no renewal for {:?}", self.cfg.renew_deadline),
                };
            }
        }
    }

    /// Gives the Lease up (empty holder) so a standby takes over at once, as on
    /// a clean shutdown. Does nothing when another replica holds it.
    ///
    /// # Errors
    /// API errors other than conflicts.
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.api_err(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.api_err(e)),
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// This replica's identity: `$POD_NAME` when set (downward API), else
/// `<hostname>_<pid>` so two processes on one host differ.
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}_{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renew: &str) -> Record {
        Record {
            holder: holder.into(),
            renew_time: Some(renew.into()),
            transitions: 0,
            duration_seconds: 15,
        }
    }

    #[test]
    fn free_lease_is_acquired() {
        let now = Instant::now();
        assert_eq!(
            decide("me", &record("", "t0"), None, now),
            Decision::Acquire
        );
    }

    #[test]
    fn own_lease_is_renewed() {
        let now = Instant::now();
        assert_eq!(
            decide("me", &record("me", "t0"), None, now),
            Decision::Renew
        );
    }

    #[test]
    fn first_sight_of_a_held_lease_waits_whatever_its_renew_time() {
        let now = Instant::now();
        assert_eq!(
            decide("me", &record("other", "1970-01-01T00:00:00Z"), None, now),
            Decision::Wait {
                holder: "other".into()
            }
        );
    }

    #[test]
    fn silent_holder_is_taken_over_after_one_lease_duration() {
        let start = Instant::now();
        let rec = record("other", "t0");
        let seen = (rec.clone(), start);
        let before = start + Duration::from_secs(14);
        let after = start + Duration::from_secs(15);
        assert!(matches!(
            decide("me", &rec, Some(&seen), before),
            Decision::Wait { .. }
        ));
        assert_eq!(decide("me", &rec, Some(&seen), after), Decision::Acquire);
    }

    #[test]
    fn renewing_holder_is_never_taken_over() {
        let start = Instant::now();
        let seen = (record("other", "t0"), start);
        let renewed = record("other", "t1");
        let much_later = start + Duration::from_secs(60);
        assert!(matches!(
            decide("me", &renewed, Some(&seen), much_later),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn identity_differs_between_processes_on_one_host() {
        let id = default_identity();
        if std::env::var("POD_NAME").is_err() {
            assert!(id.ends_with(&format!("_{}", std::process::id())), "{id}");
        }
    }
}
