//! The sharded table and batched sweeps: a burst over every shard timing out together, a timer
//! started while the timer task sleeps late, and transactions driven from many threads at once.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_burst_over_every_shard_times_out_together_in_bounded_sweeps() {
    let (driver, io) = setup();
    // Many times the shard count, started in the same instant: every Timer F falls due at once.
    let n = TABLE_SHARDS * 20;
    for i in 0..n {
        driver
            .start_client(
                ckey(&format!("z9hG4bKburst{i}"), "OPTIONS"),
                "O".into(),
                true,
            )
            .unwrap();
    }
    assert_eq!(driver.len(), n);
    assert_eq!(driver.unfinished(), n);
    at(&io, 31_999).await;
    assert_eq!(driver.len(), n, "nothing ends before Timer F (64*T1)");
    at(&io, 32_001).await;
    assert!(driver.is_empty());
    let ends: Vec<u64> = io
        .tu()
        .into_iter()
        .filter_map(|(t, e)| {
            matches!(
                e,
                TuEvent::Terminated {
                    outcome: Outcome::Timeout,
                    ..
                }
            )
            .then_some(t)
        })
        .collect();
    assert_eq!(ends.len(), n);
    assert!(ends.iter().all(|&t| t == 32_000), "all at 32 s: {ends:?}");
    // Fired in batches: at least n / SWEEP_BATCH holds of a shard's lock, each firing some.
    let sweeps = driver.sweeps();
    assert!(
        sweeps.sweeps >= (n / SWEEP_BATCH) as u64,
        "{sweeps:?} for {n} timers"
    );
    // The bound still counts every shard: full again, then refused.
    let full = setup_with(DriverConfig {
        max_transactions: 100,
        ..exact()
    })
    .0;
    for i in 0..100 {
        full.start_client(
            ckey(&format!("z9hG4bKfull{i}"), "OPTIONS"),
            "O".into(),
            true,
        )
        .unwrap();
    }
    assert_eq!(
        full.start_client(ckey("z9hG4bKfull100", "OPTIONS"), "O".into(), true),
        Err(DriverError::Overloaded { limit: 100 })
    );
}

#[tokio::test(start_paused = true)]
async fn a_timer_started_while_the_timer_task_sleeps_late_still_fires_on_time() {
    let (driver, io) = setup();
    // One far timer: the timer task sleeps until 32 s.
    driver
        .start_client(ckey("z9hG4bKfar", "OPTIONS"), "FAR".into(), true)
        .unwrap();
    at(&io, 1_000).await;
    // Earlier timers in whichever shards these keys land: each must wake the task.
    for i in 0..TABLE_SHARDS {
        driver
            .start_client(
                ckey(&format!("z9hG4bKnear{i}"), "INVITE"),
                "INV".into(),
                false,
            )
            .unwrap();
    }
    at(&io, 1_600).await;
    // Timer A (T1 = 500 ms) retransmitted every INVITE at 1,500 ms, not at 32 s.
    let times = io.tx_times("INV");
    assert_eq!(times.len(), 2 * TABLE_SHARDS, "{times:?}");
    assert!(times.iter().filter(|&&t| t == 1_500).count() == TABLE_SHARDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_are_driven_from_many_threads_at_once() {
    let (driver, _io) = setup();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let d = driver.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let key = skey(&format!("z9hG4bKtask{t}x{i}"), "OPTIONS");
                d.on_request(key.clone(), false, "O".into(), true).unwrap();
                d.respond(&key, 200, "200".into()).unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Reliable: Timer J is zero, every transaction ended as soon as it was answered.
    assert!(driver.is_empty());
    assert_eq!(driver.unfinished(), 0);
}
