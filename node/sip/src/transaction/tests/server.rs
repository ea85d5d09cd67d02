//! Server transactions on paused time: Timer G until Timer H, the ACK for a non-2xx and Timer I,
//! Accepted (RFC 6026), and retransmitted requests answered with the last response.

use super::*;

#[tokio::test(start_paused = true)]
async fn invite_server_timer_g_retransmits_a_non_2xx_until_timer_h() {
    let (driver, io) = setup();
    let key = skey("z9hG4bKg", "INVITE");
    let d = driver.on_request(key.clone(), false, "INVITE".into(), false);
    assert_eq!(d, Ok(RequestDisposition::Created));
    assert_eq!(driver.server_state(&key), Some(State::Proceeding));
    driver.respond(&key, 486, "486".into()).unwrap();
    assert_eq!(driver.server_state(&key), Some(State::Completed));
    at(&io, 40_000).await;
    assert_eq!(
        io.tx_times("486"),
        [
            0, 500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500
        ]
    );
    assert_eq!(
        io.tu(),
        [
            (0, request(&key, "INVITE")),
            (32_000, terminated(key, Outcome::Timeout))
        ]
    );
    assert!(driver.is_empty());
}

#[tokio::test(start_paused = true)]
async fn invite_server_absorbs_the_ack_for_a_non_2xx_then_timer_i() {
    let (driver, io) = setup();
    let key = skey("z9hG4bKi", "INVITE");
    driver
        .on_request(key.clone(), false, "INVITE".into(), false)
        .unwrap();
    driver.respond(&key, 486, "486".into()).unwrap();
    at(&io, 1_000).await;
    let ack_key = skey("z9hG4bKi", "ACK");
    assert_eq!(ack_key, key);
    assert_eq!(
        driver.on_request(ack_key.clone(), true, "ACK".into(), false),
        Ok(RequestDisposition::Absorbed)
    );
    assert_eq!(driver.server_state(&key), Some(State::Confirmed));
    at(&io, 2_000).await;
    // Retransmitted ACK and INVITE in Confirmed: absorbed, nothing sent.
    assert_eq!(
        driver.on_request(ack_key, true, "ACK".into(), false),
        Ok(RequestDisposition::Absorbed)
    );
    assert_eq!(
        driver.on_request(key.clone(), false, "INVITE".into(), false),
        Ok(RequestDisposition::Absorbed)
    );
    at(&io, 40_000).await;
    // One Timer G retransmission (500 ms) before the ACK, none after; Timer I = T4 after the ACK.
    assert_eq!(io.tx_times("486"), [0, 500]);
    assert_eq!(io.txs().len(), 2);
    assert_eq!(
        io.tu(),
        [
            (0, request(&key, "INVITE")),
            (6_000, terminated(key, Outcome::Completed))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn invite_server_accepted_absorbs_invites_sends_core_2xx_and_passes_acks() {
    let (driver, io) = setup();
    let key = skey("z9hG4bKl", "INVITE");
    driver
        .on_request(key.clone(), false, "INVITE".into(), false)
        .unwrap();
    driver.respond(&key, 100, "100".into()).unwrap();
    driver.respond(&key, 200, "200".into()).unwrap();
    assert_eq!(driver.server_state(&key), Some(State::Accepted));
    at(&io, 500).await;
    // The core retransmits its 2xx (RFC 3261 13.3.1.4): it passes through.
    driver.respond(&key, 200, "200".into()).unwrap();
    at(&io, 700).await;
    // A retransmitted INVITE is absorbed: no new transaction, nothing sent (RFC 6026).
    assert_eq!(
        driver.on_request(key.clone(), false, "INVITE".into(), false),
        Ok(RequestDisposition::Absorbed)
    );
    // A non-2xx cannot follow the 2xx.
    assert_eq!(
        driver.respond(&key, 500, "500".into()),
        Err(DriverError::ResponseNotAllowed)
    );
    at(&io, 1_000).await;
    assert_eq!(
        driver.on_request(key.clone(), true, "ACK".into(), false),
        Ok(RequestDisposition::AckToTu)
    );
    at(&io, 40_000).await;
    assert_eq!(
        io.txs(),
        [(0, "100".into()), (0, "200".into()), (500, "200".into())]
    );
    assert_eq!(
        io.tu(),
        [
            (0, request(&key, "INVITE")),
            (
                1_000,
                TuEvent::Ack {
                    key: key.clone(),
                    ack: "ACK".into()
                }
            ),
            (32_000, terminated(key, Outcome::Completed)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn invite_server_retransmitted_invite_resends_the_last_provisional() {
    let (driver, io) = setup();
    let key = skey("z9hG4bKr", "INVITE");
    driver
        .on_request(key.clone(), false, "INVITE".into(), false)
        .unwrap();
    at(&io, 50).await;
    // Before any response: absorbed silently.
    assert_eq!(
        driver.on_request(key.clone(), false, "INVITE".into(), false),
        Ok(RequestDisposition::Absorbed)
    );
    driver.respond(&key, 100, "100".into()).unwrap();
    at(&io, 100).await;
    driver.respond(&key, 180, "180".into()).unwrap();
    at(&io, 300).await;
    assert_eq!(
        driver.on_request(key.clone(), false, "INVITE".into(), false),
        Ok(RequestDisposition::Absorbed)
    );
    assert_eq!(
        io.txs(),
        [(50, "100".into()), (100, "180".into()), (300, "180".into())]
    );
    // The TU saw the INVITE once.
    assert_eq!(io.tu(), [(0, request(&key, "INVITE"))]);
}

#[tokio::test(start_paused = true)]
async fn non_invite_server_absorbs_retransmissions_and_resends_the_last_response() {
    let (driver, io) = setup();
    let key = skey("z9hG4bKj", "OPTIONS");
    assert_eq!(
        driver.on_request(key.clone(), false, "OPTIONS".into(), false),
        Ok(RequestDisposition::Created)
    );
    assert_eq!(driver.server_state(&key), Some(State::Trying));
    at(&io, 100).await;
    assert_eq!(
        driver.on_request(key.clone(), false, "OPTIONS".into(), false),
        Ok(RequestDisposition::Absorbed)
    );
    at(&io, 200).await;
    driver.respond(&key, 200, "200".into()).unwrap();
    assert_eq!(driver.server_state(&key), Some(State::Completed));
    assert_eq!(
        driver.respond(&key, 500, "500".into()),
        Err(DriverError::ResponseNotAllowed)
    );
    at(&io, 300).await;
    assert_eq!(
        driver.on_request(key.clone(), false, "OPTIONS".into(), false),
        Ok(RequestDisposition::Absorbed)
    );
    at(&io, 40_000).await;
    assert_eq!(io.txs(), [(200, "200".into()), (300, "200".into())]);
    assert_eq!(
        io.tu(),
        [
            (0, request(&key, "OPTIONS")),
            (32_200, terminated(key, Outcome::Completed))
        ]
    );
}
