//! The driver's bounds and failures: the table's limit, transport errors, stray ACKs and misuse,
//! the TU calling back from `deliver`, and the timer task stopping with the last driver.

use super::*;

#[tokio::test(start_paused = true)]
async fn the_table_is_bounded() {
    let (driver, io) = setup_with(DriverConfig {
        max_transactions: 2,
        ..exact()
    });
    driver
        .start_client(ckey("z9hG4bKb1", "OPTIONS"), "O1".into(), false)
        .unwrap();
    let server = skey("z9hG4bKb2", "OPTIONS");
    driver
        .on_request(server.clone(), false, "O2".into(), false)
        .unwrap();
    assert_eq!(
        driver.start_client(ckey("z9hG4bKb3", "OPTIONS"), "O3".into(), false),
        Err(DriverError::Overloaded { limit: 2 })
    );
    assert_eq!(
        driver.on_request(skey("z9hG4bKb4", "OPTIONS"), false, "O4".into(), false),
        Err(DriverError::Overloaded { limit: 2 })
    );
    // Matching still works when full.
    assert_eq!(
        driver.on_request(server.clone(), false, "O2".into(), false),
        Ok(RequestDisposition::Absorbed)
    );
    assert_eq!(driver.len(), 2);
    // Once the client transaction times out (Timer F), there is room again.
    at(&io, 33_000).await;
    assert_eq!(driver.len(), 1);
    assert_eq!(
        driver.on_request(skey("z9hG4bKb4", "OPTIONS"), false, "O4".into(), false),
        Ok(RequestDisposition::Created)
    );
}

#[tokio::test(start_paused = true)]
async fn transmit_failures_and_reported_transport_errors_end_the_transaction() {
    let (driver, io) = setup();
    io.fail_transmit.store(true, Ordering::SeqCst);
    let key = ckey("z9hG4bKe1", "INVITE");
    driver
        .start_client(key.clone(), "INVITE".into(), false)
        .unwrap();
    assert_eq!(
        io.tu(),
        [(0, terminated(key.clone(), Outcome::TransportError))]
    );
    assert!(driver.is_empty());

    io.fail_transmit.store(false, Ordering::SeqCst);
    io.clear();
    let server = skey("z9hG4bKe2", "INVITE");
    driver
        .on_request(server.clone(), false, "INVITE".into(), false)
        .unwrap();
    driver.respond(&server, 486, "486".into()).unwrap();
    at(&io, 100).await;
    assert!(driver.transport_error(&server.clone().into()));
    assert!(!driver.transport_error(&key.into()));
    at(&io, 40_000).await;
    // No Timer G retransmission after the transaction ended.
    assert_eq!(io.tx_times("486"), [0]);
    assert_eq!(
        io.tu(),
        [
            (0, request(&server, "INVITE")),
            (100, terminated(server, Outcome::TransportError))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn stray_acks_go_to_the_tu_and_misuse_is_refused() {
    let (driver, io) = setup();
    // The ACK for a 2xx has a branch of its own: it matches nothing and goes to the dialog.
    let ack = skey("z9hG4bKs1", "ACK");
    assert_eq!(
        driver.on_request(ack.clone(), true, "ACK".into(), false),
        Ok(RequestDisposition::StrayAck)
    );
    assert_eq!(
        io.tu(),
        [(
            0,
            TuEvent::Ack {
                key: ack,
                ack: "ACK".into()
            }
        )]
    );
    assert!(driver.is_empty());
    assert_eq!(
        driver.start_client(ckey("z9hG4bKs2", "ACK"), "ACK".into(), false),
        Err(DriverError::AckHasNoTransaction)
    );
    let key = ckey("z9hG4bKs3", "OPTIONS");
    driver.start_client(key.clone(), "O".into(), false).unwrap();
    assert_eq!(
        driver.start_client(key, "O".into(), false),
        Err(DriverError::Duplicate)
    );
    assert_eq!(
        driver.respond(&skey("z9hG4bKs4", "OPTIONS"), 200, "200".into()),
        Err(DriverError::NoSuchTransaction)
    );
}

#[tokio::test(start_paused = true)]
async fn the_tu_may_call_the_driver_from_deliver() {
    let (driver, io) = setup();
    *io.auto_answer.lock().unwrap() = Some(driver.clone());
    let key = skey("z9hG4bKre", "OPTIONS");
    driver
        .on_request(key.clone(), false, "OPTIONS".into(), true)
        .unwrap();
    // Answered from inside deliver; reliable, so Timer J is zero and the transaction is gone.
    assert_eq!(io.txs(), [(0, "200".into())]);
    assert!(driver.is_empty());
    // Break the driver ↔ IO cycle.
    io.auto_answer.lock().unwrap().take();
}

#[tokio::test(start_paused = true)]
async fn the_timer_task_stops_with_the_last_driver() {
    let (driver, io) = setup();
    driver
        .start_client(ckey("z9hG4bKd1", "OPTIONS"), "OPTIONS".into(), false)
        .unwrap();
    drop(driver);
    at(&io, 40_000).await;
    assert_eq!(io.tx_times("OPTIONS"), [0]);
    assert!(io.tu().is_empty());
}
