//! The controller's Lease elector (library) against the real API server:
//! optimistic concurrency means racing candidates never both win; a silent
//! holder is replaced only after a whole lease duration; release hands over
//! at once.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use kmm_controller::lease::{LeaderElector, LeaseConfig, LeaseError};
use kmm_tests::controlplane::ControlPlane;
use kube::api::Api;

fn elector(cp: &ControlPlane, ns: &str, id: &str, secs: u64) -> LeaderElector {
    let mut cfg = LeaseConfig::new("test-lease", ns, id);
    cfg.lease_duration = Duration::from_secs(secs);
    cfg.retry_period = Duration::from_millis(500);
    cfg.renew_deadline = Duration::from_secs(secs.saturating_sub(1).max(1));
    LeaderElector::new(cp.client(), cfg)
}

async fn holder(cp: &ControlPlane, ns: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(cp.client(), ns);
    api.get("test-lease").await.unwrap().spec?.holder_identity
}

#[tokio::test]
async fn racing_candidates_never_both_hold_the_lease() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.temp_namespace("lease-race").await?;
    let mut electors: Vec<_> = (0..4)
        .map(|i| elector(cp, ns.name(), &format!("cand-{i}"), 2))
        .collect();
    for round in 0..5 {
        let results = futures_join(&mut electors).await;
        let winners: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Ok(true)))
            .map(|(i, _)| i)
            .collect();
        assert!(winners.len() <= 1, "round {round}: winners {winners:?}");
        if round > 0 {
            // From the second round on, the holder renews: exactly one winner, the holder.
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            let h = holder(cp, ns.name()).await;
            assert_eq!(h, Some(format!("cand-{}", winners[0])));
        }
    }

    // The holder goes silent: the others all see the Lease expire in the same
    // round and race to replace it; the resourceVersion lets exactly one win.
    let old = holder(cp, ns.name()).await.unwrap();
    electors.retain(|e| e.config().identity != old);
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let results = futures_join(&mut electors).await;
        let winners = results.iter().filter(|r| matches!(r, Ok(true))).count();
        assert!(winners <= 1, "takeover round: {results:?}");
        if winners == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nobody took over"
        );
    }
    let new = holder(cp, ns.name()).await.unwrap();
    assert_ne!(new, old);
    ns.cleanup().await
}

/// Runs one round of every elector concurrently, so the requests overlap on the API server.
async fn futures_join(electors: &mut [LeaderElector]) -> Vec<Result<bool, LeaseError>> {
    join_all(
        electors
            .iter_mut()
            .map(|e| e.try_acquire_or_renew())
            .collect(),
    )
    .await
}

/// Polls every future until all are done (a tiny `join_all`; kmm-tests has no `futures`).
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn silent_holder_is_replaced_only_after_a_lease_duration() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.temp_namespace("lease-expiry").await?;
    let mut a = elector(cp, ns.name(), "a", 3);
    let mut b = elector(cp, ns.name(), "b", 3);
    assert!(a.try_acquire_or_renew().await?);
    let first_seen = Instant::now();
    assert!(!b.try_acquire_or_renew().await?);

    // While a renews, b never gets it.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(a.try_acquire_or_renew().await?);
        assert!(!b.try_acquire_or_renew().await?);
    }

    // a goes silent: b waits a whole duration from when it saw a's last renewal.
    let silent = Instant::now();
    loop {
        if b.try_acquire_or_renew().await? {
            break;
        }
        assert!(
            silent.elapsed() < Duration::from_secs(10),
            "b never took over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        silent.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        silent.elapsed()
    );
    assert!(first_seen.elapsed() >= Duration::from_secs(3));
    assert_eq!(holder(cp, ns.name()).await.as_deref(), Some("b"));

    // a comes back: it has lost, and hold() says so.
    assert!(!a.try_acquire_or_renew().await?);
    let lost = tokio::time::timeout(Duration::from_secs(5), a.hold()).await?;
    assert!(matches!(lost, LeaseError::Lost { .. }), "{lost}");
    ns.cleanup().await
}

#[tokio::test]
async fn release_hands_the_lease_over_at_once() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.temp_namespace("lease-release").await?;
    let mut a = elector(cp, ns.name(), "a", 60);
    let mut b = elector(cp, ns.name(), "b", 60);
    assert!(a.try_acquire_or_renew().await?);
    assert!(!b.try_acquire_or_renew().await?);
    // b's release of a Lease it does not hold changes nothing.
    b.release().await?;
    assert_eq!(holder(cp, ns.name()).await.as_deref(), Some("a"));
    a.release().await?;
    assert!(b.try_acquire_or_renew().await?);
    assert_eq!(holder(cp, ns.name()).await.as_deref(), Some("b"));
    ns.cleanup().await
}
