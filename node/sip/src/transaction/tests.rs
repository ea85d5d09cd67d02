//! Driver tests on paused tokio time: exact retransmission instants, timeouts and outcomes, with a
//! recording [`TransactionIo`] whose messages are plain strings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::*;

type Msg = String;
type TestDriver = Driver<Msg, Arc<MockIo>>;

/// One thing the IO saw, at a time in milliseconds since the test began.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rec {
    Tx(TransactionKey, Msg),
    Tu(TuEvent<Msg>),
}

struct MockIo {
    start: Instant,
    log: Mutex<Vec<(u64, Rec)>>,
    fail_transmit: AtomicBool,
    /// When set, answers every new request with "200" from inside `deliver` (re-entrancy).
    auto_answer: Mutex<Option<TestDriver>>,
}

impl MockIo {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            log: Mutex::new(Vec::new()),
            fail_transmit: AtomicBool::new(false),
            auto_answer: Mutex::new(None),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from((Instant::now() - self.start).as_millis()).unwrap()
    }

    fn record(&self, rec: Rec) {
        let t = self.now_ms();
        self.log.lock().unwrap().push((t, rec));
    }

    /// Every transmission: (ms, message).
    fn txs(&self) -> Vec<(u64, Msg)> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter_map(|(t, r)| match r {
                Rec::Tx(_, m) => Some((*t, m.clone())),
                Rec::Tu(_) => None,
            })
            .collect()
    }

    /// The instants at which `message` was transmitted.
    fn tx_times(&self, message: &str) -> Vec<u64> {
        self.txs()
            .into_iter()
            .filter(|(_, m)| m == message)
            .map(|(t, _)| t)
            .collect()
    }

    /// Every TU event: (ms, event).
    fn tu(&self) -> Vec<(u64, TuEvent<Msg>)> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter_map(|(t, r)| match r {
                Rec::Tu(e) => Some((*t, e.clone())),
                Rec::Tx(..) => None,
            })
            .collect()
    }

    fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl TransactionIo<Msg> for MockIo {
    fn transmit(&self, key: &TransactionKey, message: &Msg) -> Result<(), TransmitError> {
        if self.fail_transmit.load(Ordering::SeqCst) {
            return Err(TransmitError);
        }
        self.record(Rec::Tx(key.clone(), message.clone()));
        Ok(())
    }

    fn build_ack(&self, request: &Msg, response: &Msg) -> Msg {
        format!("ACK({request}|{response})")
    }

    fn deliver(&self, event: TuEvent<Msg>) {
        let answer = match &event {
            TuEvent::Request { key, .. } => self
                .auto_answer
                .lock()
                .unwrap()
                .clone()
                .map(|d| (d, key.clone())),
            _ => None,
        };
        self.record(Rec::Tu(event));
        if let Some((driver, key)) = answer {
            driver.respond(&key, 200, "200".into()).unwrap();
        }
    }
}

fn setup_with(config: DriverConfig) -> (TestDriver, Arc<MockIo>) {
    let io = MockIo::new();
    (Driver::new(config, Arc::clone(&io)), io)
}

fn setup() -> (TestDriver, Arc<MockIo>) {
    setup_with(DriverConfig::default())
}

/// Sleep until `ms` milliseconds after the test began.
async fn at(io: &MockIo, ms: u64) {
    sleep_until(io.start + Duration::from_millis(ms)).await;
}

fn ckey(branch: &str, method: &str) -> ClientKey {
    ClientKey::new(branch.as_bytes(), method.as_bytes())
}

fn skey(branch: &str, method: &str) -> ServerKey {
    ServerKey::from_parts(branch.as_bytes(), b"192.0.2.1:5060", method.as_bytes()).unwrap()
}

fn terminated(key: impl Into<TransactionKey>, outcome: Outcome) -> TuEvent<Msg> {
    TuEvent::Terminated {
        key: key.into(),
        outcome,
    }
}

fn response(key: &ClientKey, status: u16, msg: &str) -> TuEvent<Msg> {
    TuEvent::Response {
        key: key.clone(),
        status,
        response: msg.into(),
    }
}

fn request(key: &ServerKey, msg: &str) -> TuEvent<Msg> {
    TuEvent::Request {
        key: key.clone(),
        request: msg.into(),
    }
}

// ---------------------------------------------------------------- client transactions

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

// ---------------------------------------------------------------- server transactions

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

// ---------------------------------------------------------------- CANCEL

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

// ---------------------------------------------------------------- reliable transports

#[tokio::test(start_paused = true)]
async fn reliable_transport_no_retransmissions_and_d_i_j_k_zero() {
    let (driver, io) = setup();
    let inv = ckey("z9hG4bKt1", "INVITE");
    let opt = ckey("z9hG4bKt2", "OPTIONS");
    let sinv = skey("z9hG4bKt3", "INVITE");
    let sopt = skey("z9hG4bKt4", "OPTIONS");
    let silent = ckey("z9hG4bKt5", "INVITE");
    driver
        .start_client(inv.clone(), "INVITE".into(), true)
        .unwrap();
    driver
        .start_client(opt.clone(), "OPTIONS".into(), true)
        .unwrap();
    driver
        .start_client(silent.clone(), "INVITE-silent".into(), true)
        .unwrap();
    driver
        .on_request(sinv.clone(), false, "sINVITE".into(), true)
        .unwrap();
    driver
        .on_request(sopt.clone(), false, "sOPTIONS".into(), true)
        .unwrap();
    at(&io, 1_000).await;
    driver.on_response(inv.clone(), 486, "486".into());
    driver.on_response(opt.clone(), 200, "200".into());
    driver.respond(&sinv, 486, "s486".into()).unwrap();
    driver.respond(&sopt, 200, "s200".into()).unwrap();
    at(&io, 2_000).await;
    driver
        .on_request(sinv.clone(), true, "ACK".into(), true)
        .unwrap();
    at(&io, 40_000).await;
    assert_eq!(
        io.txs(),
        [
            (0, "INVITE".into()),
            (0, "OPTIONS".into()),
            (0, "INVITE-silent".into()),
            (1_000, "ACK(INVITE|486)".into()),
            (1_000, "s486".into()),
            (1_000, "s200".into()),
        ]
    );
    let ends: Vec<_> = io
        .tu()
        .into_iter()
        .filter(|(_, e)| matches!(e, TuEvent::Terminated { .. }))
        .collect();
    assert_eq!(
        ends,
        [
            (1_000, terminated(inv, Outcome::Completed)), // Timer D = 0
            (1_000, terminated(opt, Outcome::Completed)), // Timer K = 0
            (1_000, terminated(sopt, Outcome::Completed)), // Timer J = 0
            (2_000, terminated(sinv, Outcome::Completed)), // Timer I = 0
            (32_000, terminated(silent, Outcome::Timeout)), // Timer B still runs
        ]
    );
    assert!(driver.is_empty());
}

// ---------------------------------------------------------------- limits, errors, re-entrancy

#[tokio::test(start_paused = true)]
async fn the_table_is_bounded() {
    let (driver, io) = setup_with(DriverConfig {
        max_transactions: 2,
        ..DriverConfig::default()
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

// ---------------------------------------------------------------- sharded table, batched sweeps

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
        ..DriverConfig::default()
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
