//! Tests of the replicated state machine's pure state (`state.rs`): applying each command, and
//! what the applied state answers.

#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;

fn addrs(n: u64) -> NodeAddrs {
    NodeAddrs {
        raft_addr: format!("10.0.0.{n}:7000"),
        sip_addr: format!("10.0.0.{n}:5060"),
        admin_addr: format!("10.0.0.{n}:8080"),
    }
}

fn add(state: &mut State, id: NodeId) {
    let r = apply(
        state,
        Command::AddNode {
            id,
            addresses: addrs(id),
            voter: id < 3,
        },
    );
    assert_eq!(r, CommandResult::Done);
}

fn rejected(r: CommandResult) -> Rejection {
    r.into_result().unwrap_err()
}

#[test]
fn membership_changes_start_capacity_generations_that_settle() {
    let mut s = State::default();
    add(&mut s, 1);
    assert_eq!(s.division().generation, 1);
    assert!(s.division().stable.is_empty());
    let settle =
        |s: &mut State, node, generation| apply(s, Command::CapacitySettled { node, generation });
    assert_eq!(settle(&mut s, 1, 1), CommandResult::Done);
    assert!(s.division().is_stable());
    add(&mut s, 2);
    add(&mut s, 2); // a restarted node's AddNode: the active set is the same
    assert_eq!(s.division().generation, 2);
    assert_eq!(
        rejected(settle(&mut s, 2, 1)),
        Rejection::StaleGeneration {
            generation: 1,
            current: 2
        }
    );
    assert_eq!(
        rejected(settle(&mut s, 9, 2)),
        Rejection::NotACapacityMember(9)
    );
    assert_eq!(settle(&mut s, 2, 2), CommandResult::Done);
    assert_eq!(s.division().stable, BTreeSet::from([1]));
    assert_eq!(settle(&mut s, 1, 2), CommandResult::Done);
    assert_eq!(s.division().stable, BTreeSet::from([1, 2]));
    let down = Command::SetNodeState {
        id: 2,
        state: NodeState::Down,
    };
    assert_eq!(apply(&mut s, down), CommandResult::Done);
    assert_eq!(s.division().generation, 3);
    assert_eq!(s.division().members, BTreeSet::from([1]));
    assert_eq!(s.division().stable, BTreeSet::from([1, 2]));
    // A refused membership command starts no generation.
    let _ = apply(&mut s, Command::RemoveNode { id: 7 });
    assert_eq!(s.division().generation, 3);
}

#[test]
fn gateway_states_are_kept_per_gateway_and_bounded() {
    let mut s = State::default();
    add(&mut s, 1);
    add(&mut s, 2);
    let set = |gateway: &str, node, state| Command::SetGatewayAdmin {
        gateway: gateway.into(),
        node,
        state,
    };
    assert_eq!(
        apply(&mut s, set("gw1", None, GatewayAdmin::Disabled)),
        CommandResult::Done
    );
    assert_eq!(
        apply(&mut s, set("gw1", Some(2), GatewayAdmin::Enabled)),
        CommandResult::Done
    );
    assert_eq!(s.gateway_admin("gw1", 1), GatewayAdmin::Disabled);
    assert_eq!(s.gateway_admin("gw1", 2), GatewayAdmin::Enabled);
    assert_eq!(s.gateway_admin("gw2", 1), GatewayAdmin::Enabled);
    assert_eq!(
        rejected(apply(&mut s, set("gw1", Some(5), GatewayAdmin::Draining))),
        Rejection::UnknownNode(5)
    );
    let json = serde_json::to_vec(&s).unwrap();
    let back: State = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        back, s,
        "gateway states and the division survive a snapshot"
    );
    for i in 1..MAX_GATEWAY_STATES {
        let _ = apply(&mut s, set(&format!("g{i}"), None, GatewayAdmin::Draining));
    }
    assert_eq!(
        rejected(apply(&mut s, set("one-more", None, GatewayAdmin::Draining))),
        Rejection::TooManyGatewayStates {
            max: MAX_GATEWAY_STATES
        }
    );
    assert_eq!(
        apply(&mut s, set("gw1", None, GatewayAdmin::Enabled)),
        CommandResult::Done,
        "a known gateway's state still changes"
    );
    assert_eq!(s.gateway_admin("gw1", 2), GatewayAdmin::Enabled);
}

#[test]
fn the_pool_secret_is_set_once_and_survives_a_snapshot() {
    let mut s = State::default();
    assert_eq!(s.pool_secret(), None);
    let first = [7u8; 32];
    assert_eq!(
        apply(&mut s, Command::SetPoolSecret { secret: first }),
        CommandResult::Done
    );
    assert_eq!(
        rejected(apply(&mut s, Command::SetPoolSecret { secret: [9u8; 32] })),
        Rejection::PoolSecretExists
    );
    assert_eq!(s.pool_secret(), Some(first));
    let json = serde_json::to_vec(&s).unwrap();
    let back: State = serde_json::from_slice(&json).unwrap();
    assert_eq!(back.pool_secret(), Some(first));
    // A state written before the secret existed reads as having none.
    let mut old: serde_json::Value = serde_json::from_slice(&json).unwrap();
    old.as_object_mut().unwrap().remove("pool_secret");
    let old: State = serde_json::from_value(old).unwrap();
    assert_eq!(old.pool_secret(), None);
}

#[test]
fn bootstrap_once() {
    let mut s = State::default();
    assert!(!s.is_bootstrapped());
    assert_eq!(
        rejected(apply(&mut s, Command::Bootstrap { shard_count: 0 })),
        Rejection::InvalidShardCount
    );
    assert_eq!(
        apply(&mut s, Command::Bootstrap { shard_count: 16 }),
        CommandResult::Done
    );
    assert_eq!(s.shard_count(), 16);
    assert!(s.shards().iter().all(|e| e.owner.is_none() && e.epoch == 0));
    let before = s.clone();
    assert_eq!(
        rejected(apply(&mut s, Command::Bootstrap { shard_count: 8 })),
        Rejection::AlreadyBootstrapped { shard_count: 16 }
    );
    assert_eq!(s, before);
}

#[test]
fn nodes_join_change_state_and_leave() {
    let mut s = State::default();
    apply(&mut s, Command::Bootstrap { shard_count: 4 });
    add(&mut s, 1);
    add(&mut s, 2);
    assert_eq!(s.active_nodes(), BTreeSet::from([1, 2]));
    assert_eq!(
        apply(
            &mut s,
            Command::SetNodeState {
                id: 2,
                state: NodeState::Draining
            }
        ),
        CommandResult::Done
    );
    assert_eq!(s.active_nodes(), BTreeSet::from([1]));
    assert_eq!(
        rejected(apply(
            &mut s,
            Command::SetNodeState {
                id: 9,
                state: NodeState::Down
            }
        )),
        Rejection::UnknownNode(9)
    );
    // Re-adding (a restart on a new address) updates and reactivates.
    let mut new_addr = addrs(2);
    new_addr.sip_addr = "10.0.1.2:5060".into();
    apply(
        &mut s,
        Command::AddNode {
            id: 2,
            addresses: new_addr.clone(),
            voter: true,
        },
    );
    assert_eq!(s.node(2).unwrap().addresses, new_addr);
    assert_eq!(s.node(2).unwrap().state, NodeState::Active);

    // A node that owns shards cannot be removed.
    apply(
        &mut s,
        Command::MoveShards {
            moves: vec![(0, 2)],
        },
    );
    assert_eq!(
        rejected(apply(&mut s, Command::RemoveNode { id: 2 })),
        Rejection::NodeOwnsShards { node: 2, shards: 1 }
    );
    apply(
        &mut s,
        Command::MoveShards {
            moves: vec![(0, 1)],
        },
    );
    assert_eq!(
        apply(&mut s, Command::RemoveNode { id: 2 }),
        CommandResult::Done
    );
    assert!(s.node(2).is_none());
    assert_eq!(
        rejected(apply(&mut s, Command::RemoveNode { id: 2 })),
        Rejection::UnknownNode(2)
    );
}

#[test]
fn move_shards_bumps_epochs_all_or_nothing() {
    let mut s = State::default();
    assert_eq!(
        rejected(apply(
            &mut s,
            Command::MoveShards {
                moves: vec![(0, 1)]
            }
        )),
        Rejection::NotBootstrapped
    );
    apply(&mut s, Command::Bootstrap { shard_count: 4 });
    add(&mut s, 1);
    add(&mut s, 2);
    assert_eq!(
        apply(
            &mut s,
            Command::MoveShards {
                moves: vec![(0, 1), (1, 1), (2, 2)]
            }
        ),
        CommandResult::ShardsMoved { moved: 3 }
    );
    assert_eq!(
        s.shard(0),
        Some(&ShardEntry {
            owner: Some(1),
            epoch: 1
        })
    );
    // Moving to the current owner changes nothing.
    assert_eq!(
        apply(
            &mut s,
            Command::MoveShards {
                moves: vec![(0, 1), (1, 2)]
            }
        ),
        CommandResult::ShardsMoved { moved: 1 }
    );
    assert_eq!(s.shard(0).unwrap().epoch, 1);
    assert_eq!(
        s.shard(1),
        Some(&ShardEntry {
            owner: Some(2),
            epoch: 2
        })
    );
    assert_eq!(s.shards_of(2), vec![1, 2]);

    let before = s.clone();
    assert_eq!(
        rejected(apply(
            &mut s,
            Command::MoveShards {
                moves: vec![(3, 1), (4, 1)]
            }
        )),
        Rejection::UnknownShard {
            shard: 4,
            shard_count: 4
        }
    );
    assert_eq!(
        rejected(apply(
            &mut s,
            Command::MoveShards {
                moves: vec![(3, 1), (2, 7)]
            }
        )),
        Rejection::UnknownNode(7)
    );
    apply(
        &mut s,
        Command::SetNodeState {
            id: 2,
            state: NodeState::Down,
        },
    );
    let before_down = s.clone();
    assert_eq!(
        rejected(apply(
            &mut s,
            Command::MoveShards {
                moves: vec![(3, 2)]
            }
        )),
        Rejection::NodeNotActive {
            node: 2,
            state: NodeState::Down
        }
    );
    assert_eq!(s, before_down);
    assert_eq!(before.shards(), s.shards());
}

#[test]
fn config_versions_only_grow() {
    let mut s = State::default();
    let set = |s: &mut State, expected: Option<u64>, body: &str| {
        apply(
            s,
            Command::SetConfig {
                expected_version: expected,
                body: body.as_bytes().to_vec(),
            },
        )
    };
    assert_eq!(
        rejected(set(&mut s, Some(1), "a")),
        Rejection::StaleConfigVersion {
            expected: Some(1),
            current: None
        }
    );
    assert_eq!(
        set(&mut s, None, "a"),
        CommandResult::ConfigSet { version: 1 }
    );
    // A second seed loses: the pool already has a configuration.
    assert_eq!(
        rejected(set(&mut s, None, "b")),
        Rejection::StaleConfigVersion {
            expected: None,
            current: Some(1)
        }
    );
    assert_eq!(
        set(&mut s, Some(1), "b"),
        CommandResult::ConfigSet { version: 2 }
    );
    assert_eq!(
        rejected(set(&mut s, Some(1), "c")),
        Rejection::StaleConfigVersion {
            expected: Some(1),
            current: Some(2)
        }
    );
    assert_eq!(s.config().unwrap().body, b"b");
    assert_eq!(s.config_version(), Some(2));
}

#[test]
fn dialog_batches() {
    let mut s = State::default();
    let batch = |up: &[(u16, &str, &str)], rm: &[(u16, &str)]| Command::DialogBatch {
        upserts: up
            .iter()
            .map(|(sh, k, v)| (*sh, (*k).to_owned(), v.as_bytes().to_vec()))
            .collect(),
        removes: rm.iter().map(|(sh, k)| (*sh, (*k).to_owned())).collect(),
    };
    assert_eq!(
        rejected(apply(&mut s, batch(&[(0, "a", "1")], &[]))),
        Rejection::NotBootstrapped
    );
    apply(&mut s, Command::Bootstrap { shard_count: 3 });
    assert_eq!(
        apply(
            &mut s,
            batch(
                &[(0, "a", "1"), (0, "b", "2"), (1, "a", "3"), (2, "z", "4")],
                &[]
            )
        ),
        CommandResult::DialogsApplied {
            upserted: 4,
            removed: 0
        }
    );
    assert_eq!(s.dialog(0, "a"), Some(&b"1"[..]));
    assert_eq!(s.dialog(1, "a"), Some(&b"3"[..]));
    let shard0: Vec<_> = s.dialogs_of(0).collect();
    assert_eq!(shard0, vec![("a", &b"1"[..]), ("b", &b"2"[..])]);
    assert_eq!(s.dialogs_of(2).count(), 1);
    assert_eq!(s.dialog_counts(), vec![2, 1, 1]);

    assert_eq!(
        apply(
            &mut s,
            batch(&[(0, "a", "1b")], &[(0, "b"), (1, "missing")])
        ),
        CommandResult::DialogsApplied {
            upserted: 1,
            removed: 1
        }
    );
    assert_eq!(s.dialog(0, "a"), Some(&b"1b"[..]));
    assert_eq!(s.dialog(0, "b"), None);
    assert_eq!(s.dialog_count(), 3);

    let before = s.clone();
    assert_eq!(
        rejected(apply(&mut s, batch(&[(0, "x", "1")], &[(3, "a")]))),
        Rejection::UnknownShard {
            shard: 3,
            shard_count: 3
        }
    );
    assert_eq!(s, before);
}

#[test]
fn dialogs_of_last_shard_id() {
    let mut s = State::default();
    apply(
        &mut s,
        Command::Bootstrap {
            shard_count: u16::MAX,
        },
    );
    apply(
        &mut s,
        Command::DialogBatch {
            upserts: vec![(u16::MAX - 1, "k".into(), vec![1])],
            removes: vec![],
        },
    );
    assert_eq!(s.dialogs_of(u16::MAX - 1).count(), 1);
    assert_eq!(s.dialogs_of(u16::MAX).count(), 0);
}

#[test]
fn state_json_round_trip() {
    let mut s = State::default();
    apply(&mut s, Command::Bootstrap { shard_count: 8 });
    add(&mut s, 1);
    apply(
        &mut s,
        Command::MoveShards {
            moves: vec![(3, 1)],
        },
    );
    apply(
        &mut s,
        Command::SetConfig {
            expected_version: None,
            body: b"[pool]\nname = \"x\"\n".to_vec(),
        },
    );
    apply(
        &mut s,
        Command::DialogBatch {
            upserts: vec![(3, "call@host".into(), (0..=255u8).collect())],
            removes: vec![],
        },
    );
    let json = serde_json::to_string(&s).unwrap();
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn command_json_round_trip() {
    let cmds = [
        Command::Bootstrap { shard_count: 1024 },
        Command::AddNode {
            id: 3,
            addresses: addrs(3),
            voter: false,
        },
        Command::SetNodeState {
            id: 3,
            state: NodeState::Draining,
        },
        Command::RemoveNode { id: 3 },
        Command::MoveShards {
            moves: vec![(1, 2), (3, 4)],
        },
        Command::SetConfig {
            expected_version: Some(4),
            body: vec![0, 1, 2, 250],
        },
        Command::DialogBatch {
            upserts: vec![(9, "abc".into(), vec![7; 10])],
            removes: vec![(1, "x".into())],
        },
        Command::Noop,
    ];
    for c in cmds {
        let json = serde_json::to_vec(&c).unwrap();
        let back: Command = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, c);
        assert!(!c.to_string().is_empty());
    }
}

#[test]
fn an_old_owners_late_upsert_never_overwrites_the_new_owners_record() {
    let mut s = State::default();
    apply(&mut s, Command::Bootstrap { shard_count: 2 });
    add(&mut s, 1);
    add(&mut s, 2);
    apply(
        &mut s,
        Command::MoveShards {
            moves: vec![(0, 2)],
        },
    );
    let from = |w: u64, id: &str, rec: &str| Command::OwnerDialogBatch {
        writer: w,
        upserts: vec![(0, id.to_owned(), rec.as_bytes().to_vec())],
        removes: vec![],
        replace_only: vec![],
    };
    // The owner writes; node 1 (no longer the owner) may only add a call shard 0 does not know.
    apply(&mut s, from(2, "a", "new-owner"));
    apply(&mut s, from(1, "a", "late"));
    apply(&mut s, from(1, "b", "retried-first-record"));
    let records: Vec<(String, Vec<u8>)> = s
        .dialogs_of(0)
        .map(|(k, v)| (k.to_owned(), v.to_vec()))
        .collect();
    assert_eq!(
        records,
        vec![
            ("a".to_owned(), b"new-owner".to_vec()),
            ("b".to_owned(), b"retried-first-record".to_vec())
        ]
    );
}

#[test]
fn a_rebuilt_calls_rewrite_replaces_its_record_but_never_brings_a_removed_one_back() {
    let mut s = State::default();
    apply(&mut s, Command::Bootstrap { shard_count: 1 });
    add(&mut s, 2);
    apply(
        &mut s,
        Command::MoveShards {
            moves: vec![(0, 2)],
        },
    );
    let plain = |id: &str, rec: &str| Command::DialogBatch {
        upserts: vec![(0, id.to_owned(), rec.as_bytes().to_vec())],
        removes: vec![],
    };
    apply(&mut s, plain("live", "old-plan"));
    apply(&mut s, plain("ended", "old-plan"));
    // The old owner ended one of the two calls in the instant of the move.
    apply(
        &mut s,
        Command::DialogBatch {
            upserts: vec![],
            removes: vec![(0, "ended".to_owned())],
        },
    );
    // The new owner rebuilt both and rewrites both records with its media plan, replace-only,
    // next to the first record of a call of its own.
    let applied = apply(
        &mut s,
        Command::OwnerDialogBatch {
            writer: 2,
            upserts: vec![
                (0, "live".to_owned(), b"new-plan".to_vec()),
                (0, "ended".to_owned(), b"new-plan".to_vec()),
                (0, "fresh".to_owned(), b"first".to_vec()),
            ],
            removes: vec![],
            replace_only: vec![(0, "live".to_owned()), (0, "ended".to_owned())],
        },
    );
    assert_eq!(
        applied,
        CommandResult::DialogsApplied {
            upserted: 2,
            removed: 0
        }
    );
    let records: Vec<(String, Vec<u8>)> = s
        .dialogs_of(0)
        .map(|(k, v)| (k.to_owned(), v.to_vec()))
        .collect();
    assert_eq!(
        records,
        vec![
            ("fresh".to_owned(), b"first".to_vec()),
            ("live".to_owned(), b"new-plan".to_vec()),
        ],
        "the ended call's record stays removed"
    );
}

#[test]
fn a_late_record_shows_in_the_write_count_even_when_a_removal_cancels_it_out() {
    let mut s = State::default();
    apply(&mut s, Command::Bootstrap { shard_count: 2 });
    apply(
        &mut s,
        Command::DialogBatch {
            upserts: vec![(1, "old".to_owned(), b"r".to_vec())],
            removes: vec![],
        },
    );
    let before = (s.dialog_counts(), s.dialog_writes());
    // One batch: a late record of a call, and the removal of a call that ended.
    apply(
        &mut s,
        Command::DialogBatch {
            upserts: vec![(1, "late".to_owned(), b"r".to_vec())],
            removes: vec![(1, "old".to_owned())],
        },
    );
    assert_eq!(s.dialog_counts(), before.0, "the record count did not move");
    assert_eq!(before.1, vec![0, 1]);
    assert_eq!(s.dialog_writes(), vec![0, 2], "the write count did");
}
