//! Client transactions on paused time: Timer A doubling and Timer B, Timer E capped at T2 and
//! Timer F, Proceeding, Timer K, the ACK of a non-2xx and the 2xx retransmissions of RFC 6026.

use super::*;

#[tokio::test(start_paused = true)]
async fn invite_client_timer_a_doubles_and_timer_b_times_out_at_32s() {
    let (driver, io) = setup();
    let key = ckey("z9hG4bKa", "INVITE");
    driver
        .start_client(key.clone(), "INVITE".into(), false)
        .unwrap();
    assert_eq!(driver.client_state(&key), Some(State::Calling));
    at(&io, 40_000).await;
    assert_eq!(
        io.tx_times("INVITE"),
        [0, 500, 1_500, 3_500, 7_500, 15_500, 31_500]
    );
    assert_eq!(io.tu(), [(32_000, terminated(key, Outcome::Timeout))]);
    assert!(driver.is_empty());
}

#[tokio::test(start_paused = true)]
async fn non_invite_client_timer_e_capped_at_t2_and_timer_f_at_32s() {
    let (driver, io) = setup();
    let key = ckey("z9hG4bKo", "OPTIONS");
    driver
        .start_client(key.clone(), "OPTIONS".into(), false)
        .unwrap();
    assert_eq!(driver.client_state(&key), Some(State::Trying));
    at(&io, 40_000).await;
    assert_eq!(
        io.tx_times("OPTIONS"),
        [
            0, 500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500
        ]
    );
    assert_eq!(io.tu(), [(32_000, terminated(key, Outcome::Timeout))]);
    assert!(driver.is_empty());
}

#[tokio::test(start_paused = true)]
async fn non_invite_client_in_proceeding_retransmits_every_t2() {
    let (driver, io) = setup();
    let key = ckey("z9hG4bKp", "BYE");
    driver
        .start_client(key.clone(), "BYE".into(), false)
        .unwrap();
    at(&io, 600).await;
    let d = driver.on_response(key.clone(), 100, "100".into());
    assert_eq!(d, ResponseDisposition::Matched);
    assert_eq!(driver.client_state(&key), Some(State::Proceeding));
    at(&io, 40_000).await;
    // Timer E was running with 1 s when the 100 came; from its next firing on, T2.
    assert_eq!(
        io.tx_times("BYE"),
        [
            0, 500, 1_500, 5_500, 9_500, 13_500, 17_500, 21_500, 25_500, 29_500
        ]
    );
    assert_eq!(
        io.tu(),
        [
            (600, response(&key, 100, "100")),
            (32_000, terminated(key, Outcome::Timeout))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn non_invite_client_final_response_then_timer_k() {
    let (driver, io) = setup();
    let key = ckey("z9hG4bKk", "OPTIONS");
    driver
        .start_client(key.clone(), "OPTIONS".into(), false)
        .unwrap();
    at(&io, 700).await;
    driver.on_response(key.clone(), 200, "200".into());
    assert_eq!(driver.client_state(&key), Some(State::Completed));
    at(&io, 800).await;
    // A retransmitted final is absorbed.
    assert_eq!(
        driver.on_response(key.clone(), 200, "200".into()),
        ResponseDisposition::Matched
    );
    at(&io, 40_000).await;
    assert_eq!(io.tx_times("OPTIONS"), [0, 500]);
    assert_eq!(
        io.tu(),
        [
            (700, response(&key, 200, "200")),
            (5_700, terminated(key, Outcome::Completed))
        ]
    );
}

/// With the default linger grid (16 ms) Timer K ends the transaction at the first grid point at or
/// after T4 (5,700 ms → 5,712), never before; the retransmission timer E stays exact (500 ms).
#[tokio::test(start_paused = true)]
async fn timer_k_ends_on_the_linger_grid_and_timer_e_does_not_move() {
    let (driver, io) = setup_with(DriverConfig::default());
    assert_eq!(DEFAULT_LINGER_GRID, Duration::from_millis(16));
    let key = ckey("z9hG4bKg", "OPTIONS");
    driver
        .start_client(key.clone(), "OPTIONS".into(), false)
        .unwrap();
    at(&io, 700).await;
    driver.on_response(key.clone(), 200, "200".into());
    at(&io, 5_711).await;
    assert_eq!(
        driver.client_state(&key),
        Some(State::Completed),
        "not before the grid point"
    );
    at(&io, 40_000).await;
    assert_eq!(io.tx_times("OPTIONS"), [0, 500]);
    assert_eq!(
        io.tu(),
        [
            (700, response(&key, 200, "200")),
            (5_712, terminated(key, Outcome::Completed))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn invite_client_acks_a_non_2xx_itself_and_reacks_retransmissions() {
    let (driver, io) = setup();
    let key = ckey("z9hG4bKn", "INVITE");
    driver
        .start_client(key.clone(), "INVITE".into(), false)
        .unwrap();
    at(&io, 600).await;
    driver.on_response(key.clone(), 486, "486".into());
    assert_eq!(driver.client_state(&key), Some(State::Completed));
    at(&io, 1_000).await;
    driver.on_response(key.clone(), 486, "486".into());
    at(&io, 40_000).await;
    assert_eq!(
        io.txs(),
        [
            (0, "INVITE".into()),
            (500, "INVITE".into()),
            (600, "ACK(INVITE|486)".into()),
            (1_000, "ACK(INVITE|486)".into()),
        ]
    );
    // The TU sees the final once, then the end after Timer D (32 s).
    assert_eq!(
        io.tu(),
        [
            (600, response(&key, 486, "486")),
            (32_600, terminated(key, Outcome::Completed))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn invite_client_accepted_passes_2xx_retransmissions_to_the_tu() {
    let (driver, io) = setup();
    let key = ckey("z9hG4bKm", "INVITE");
    driver
        .start_client(key.clone(), "INVITE".into(), false)
        .unwrap();
    at(&io, 100).await;
    driver.on_response(key.clone(), 180, "180".into());
    at(&io, 200).await;
    driver.on_response(key.clone(), 200, "200".into());
    assert_eq!(driver.client_state(&key), Some(State::Accepted));
    at(&io, 700).await;
    assert_eq!(
        driver.on_response(key.clone(), 200, "200".into()),
        ResponseDisposition::Matched
    );
    at(&io, 40_000).await;
    // After Timer M the transaction is gone: a late 2xx goes to the core as a stray.
    assert_eq!(
        driver.on_response(key.clone(), 200, "200".into()),
        ResponseDisposition::Stray
    );
    // The transaction never ACKs a 2xx and never retransmits after the 180.
    assert_eq!(io.txs(), [(0, "INVITE".into())]);
    assert_eq!(
        io.tu(),
        [
            (100, response(&key, 180, "180")),
            (200, response(&key, 200, "200")),
            (700, response(&key, 200, "200")),
            (32_200, terminated(key.clone(), Outcome::Completed)),
            (
                40_000,
                TuEvent::StrayResponse {
                    key,
                    status: 200,
                    response: "200".into()
                }
            ),
        ]
    );
}
