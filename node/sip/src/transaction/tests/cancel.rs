//! CANCEL, server side (before and after a provisional, after the final, for no INVITE) and client
//! side (waits for a provisional; a non-INVITE transaction of its own).

use super::*;

/// The TU's CANCEL handling (RFC 3261 9.2), as the B2BUA core does it: 200 to the CANCEL, and 487 to the
/// INVITE if it has no final response yet; 481 if there is no such INVITE.
fn tu_handles_cancel(driver: &TestDriver, cancel: &ServerKey) {
    let invite = cancel.invite_key_for_cancel().unwrap();
    match driver.server_state(&invite) {
        None => driver.respond(cancel, 481, "481".into()).unwrap(),
        Some(state) => {
            driver.respond(cancel, 200, "200/CANCEL".into()).unwrap();
            if state == State::Proceeding {
                driver.respond(&invite, 487, "487".into()).unwrap();
            } else {
                // Already answered: the CANCEL has no effect on the INVITE.
                assert_eq!(
                    driver.respond(&invite, 487, "487".into()),
                    Err(DriverError::ResponseNotAllowed)
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_before_a_provisional_server_side() {
    let (driver, io) = setup();
    let invite = skey("z9hG4bKc1", "INVITE");
    driver
        .on_request(invite.clone(), false, "INVITE".into(), false)
        .unwrap();
    at(&io, 100).await;
    let cancel = skey("z9hG4bKc1", "CANCEL");
    assert_ne!(cancel, invite);
    assert_eq!(
        driver.on_request(cancel.clone(), false, "CANCEL".into(), false),
        Ok(RequestDisposition::Created)
    );
    tu_handles_cancel(&driver, &cancel);
    assert_eq!(driver.server_state(&invite), Some(State::Completed));
    at(&io, 150).await;
    assert_eq!(
        driver.on_request(skey("z9hG4bKc1", "ACK"), true, "ACK".into(), false),
        Ok(RequestDisposition::Absorbed)
    );
    at(&io, 40_000).await;
    assert_eq!(io.txs(), [(100, "200/CANCEL".into()), (100, "487".into())]);
    assert_eq!(
        io.tu(),
        [
            (0, request(&invite, "INVITE")),
            (100, request(&cancel, "CANCEL")),
            (5_150, terminated(invite, Outcome::Completed)),
            (32_100, terminated(cancel, Outcome::Completed)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_after_a_provisional_server_side() {
    let (driver, io) = setup();
    let invite = skey("z9hG4bKc2", "INVITE");
    driver
        .on_request(invite.clone(), false, "INVITE".into(), false)
        .unwrap();
    driver.respond(&invite, 180, "180".into()).unwrap();
    at(&io, 1_000).await;
    let cancel = skey("z9hG4bKc2", "CANCEL");
    driver
        .on_request(cancel.clone(), false, "CANCEL".into(), false)
        .unwrap();
    tu_handles_cancel(&driver, &cancel);
    // A retransmitted CANCEL gets the 200 again; it does not reach the TU.
    at(&io, 1_100).await;
    assert_eq!(
        driver.on_request(cancel.clone(), false, "CANCEL".into(), false),
        Ok(RequestDisposition::Absorbed)
    );
    at(&io, 1_200).await;
    driver
        .on_request(invite.clone(), true, "ACK".into(), false)
        .unwrap();
    assert_eq!(
        io.txs(),
        [
            (0, "180".into()),
            (1_000, "200/CANCEL".into()),
            (1_000, "487".into()),
            (1_100, "200/CANCEL".into())
        ]
    );
    assert_eq!(
        io.tu(),
        [
            (0, request(&invite, "INVITE")),
            (1_000, request(&cancel, "CANCEL"))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_after_the_final_or_for_no_invite() {
    let (driver, io) = setup();
    // After the final: 200 to the CANCEL, the INVITE is untouched.
    let invite = skey("z9hG4bKc3", "INVITE");
    driver
        .on_request(invite.clone(), false, "INVITE".into(), false)
        .unwrap();
    driver.respond(&invite, 200, "200".into()).unwrap();
    let cancel = skey("z9hG4bKc3", "CANCEL");
    driver
        .on_request(cancel.clone(), false, "CANCEL".into(), false)
        .unwrap();
    tu_handles_cancel(&driver, &cancel);
    // No INVITE at all: 481.
    let orphan = skey("z9hG4bKc4", "CANCEL");
    driver
        .on_request(orphan.clone(), false, "CANCEL".into(), false)
        .unwrap();
    tu_handles_cancel(&driver, &orphan);
    assert_eq!(
        io.txs(),
        [
            (0, "200".into()),
            (0, "200/CANCEL".into()),
            (0, "481".into())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_client_side_waits_for_a_provisional_and_is_a_non_invite_transaction() {
    let (driver, io) = setup();
    let invite = ckey("z9hG4bKcc", "INVITE");
    driver
        .start_client(invite.clone(), "INVITE".into(), false)
        .unwrap();
    // Before a provisional, RFC 3261 9.1 forbids sending the CANCEL.
    assert!(!driver.may_cancel(&invite));
    at(&io, 100).await;
    driver.on_response(invite.clone(), 180, "180".into());
    assert!(driver.may_cancel(&invite));
    let cancel = invite.cancel_key();
    assert_eq!(cancel.branch(), invite.branch());
    driver
        .start_client(cancel.clone(), "CANCEL".into(), false)
        .unwrap();
    assert_eq!(driver.client_state(&cancel), Some(State::Trying));
    at(&io, 200).await;
    driver.on_response(cancel.clone(), 200, "200/CANCEL".into());
    at(&io, 300).await;
    driver.on_response(invite.clone(), 487, "487".into());
    assert!(!driver.may_cancel(&invite));
    at(&io, 40_000).await;
    assert_eq!(
        io.txs(),
        [
            (0, "INVITE".into()),
            (100, "CANCEL".into()),
            (300, "ACK(INVITE|487)".into())
        ]
    );
    assert_eq!(
        io.tu(),
        [
            (100, response(&invite, 180, "180")),
            (200, response(&cancel, 200, "200/CANCEL")),
            (300, response(&invite, 487, "487")),
            (5_200, terminated(cancel, Outcome::Completed)),
            (32_300, terminated(invite, Outcome::Completed)),
        ]
    );
}
