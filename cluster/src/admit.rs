//! Who may ask what of a node over the internal service: the typed refusal ([`Denied`]) and the
//! rules for a write another node asks the leader for ([`admit_write`]). Pure: the caller says
//! which node ids the sender's certificate speaks for.
//!
//! A write over the wire is one of:
//! - the sender's own business: its own record (`AddNode` with its id), its dialog records
//!   (`OwnerDialogBatch` with itself as writer; `DialogBatch`; both within [`MAX_DIALOG_RECORDS`]
//!   and [`MAX_DIALOG_BYTES`]), its report that it settled in a capacity generation
//!   (`CapacitySettled` with its id), the pool's first entries (`Bootstrap`, `SetPoolSecret`: each applies
//!   once), `Noop`;
//! - an operator's action relayed from the sender's admin API (which checked the operator's
//!   token): drain/undrain (`SetNodeState` to Active or Draining), `RemoveNode`, `SetConfig`
//!   (within [`MAX_CONFIG_BYTES`], and validated by the leader itself before it is proposed),
//!   a gateway's enable/disable/drain (`SetGatewayAdmin`, its name within
//!   [`MAX_GATEWAY_NAME`]).
//!
//! Never from another node: `MoveShards` and `SetNodeState(Down)` (the leader's rebalancer and
//! failure detector write them locally).

use crate::command::Command;
use crate::division::MAX_GATEWAY_NAME;
use crate::ids::{NodeId, NodeState};
use crate::tls::node_name;

/// Most dialog records (upserts and removes) in one batch sent to the leader.
pub const MAX_DIALOG_RECORDS: usize = 1024;
/// Most bytes (Call-IDs and records) in one dialog batch sent to the leader.
pub const MAX_DIALOG_BYTES: usize = 2 * 1024 * 1024;
/// Largest pool configuration.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Why a request on the internal service was refused (PERMISSION_DENIED, or INVALID_ARGUMENT for
/// [`Denied::TooLarge`]; the one mapping is in crate::grpc).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The connection carries no client certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// The request names a node the sender's certificate is not valid for.
    #[error("the client certificate is not valid for {}", node_name(*node))]
    NotThatNode {
        /// The node the request names.
        node: NodeId,
    },
    /// A command only the leader writes, never accepted from another node.
    #[error("{command} is written by the leader itself, never accepted from another node")]
    LeaderOnly {
        /// The command.
        command: &'static str,
    },
    /// A request (or a part of it) beyond its cap.
    #[error("{what} too large: {size} > {max}")]
    TooLarge {
        /// What was measured.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The cap.
        max: usize,
    },
}

/// `Err(TooLarge)` when `size > max`.
pub fn cap(what: &'static str, size: usize, max: usize) -> Result<(), Denied> {
    if size > max {
        return Err(Denied::TooLarge { what, size, max });
    }
    Ok(())
}

fn dialog_size(upserts: &[(u16, String, Vec<u8>)], removes: &[(u16, String)]) -> usize {
    upserts
        .iter()
        .map(|(_, c, r)| c.len() + r.len())
        .sum::<usize>()
        + removes.iter().map(|(_, c)| c.len()).sum::<usize>()
}

fn dialog_caps(
    upserts: &[(u16, String, Vec<u8>)],
    removes: &[(u16, String)],
) -> Result<(), Denied> {
    cap(
        "dialog batch (records)",
        upserts.len() + removes.len(),
        MAX_DIALOG_RECORDS,
    )?;
    cap(
        "dialog batch (bytes)",
        dialog_size(upserts, removes),
        MAX_DIALOG_BYTES,
    )
}

/// Whether a node whose certificate speaks for the ids `speaks_for` accepts may ask the leader to
/// write `cmd` (see the module's rules).
pub fn admit_write(cmd: &Command, speaks_for: impl Fn(NodeId) -> bool) -> Result<(), Denied> {
    let must_be = |node: NodeId| {
        if speaks_for(node) {
            Ok(())
        } else {
            Err(Denied::NotThatNode { node })
        }
    };
    match cmd {
        Command::Noop | Command::Bootstrap { .. } | Command::SetPoolSecret { .. } => Ok(()),
        Command::AddNode { id, .. } => must_be(*id),
        Command::SetNodeState {
            state: NodeState::Down,
            ..
        } => Err(Denied::LeaderOnly {
            command: "SetNodeState(Down)",
        }),
        Command::SetNodeState { .. } | Command::RemoveNode { .. } => Ok(()),
        Command::MoveShards { .. } => Err(Denied::LeaderOnly {
            command: "MoveShards",
        }),
        Command::SetConfig { body, .. } => cap("configuration", body.len(), MAX_CONFIG_BYTES),
        Command::SetGatewayAdmin { gateway, .. } => {
            cap("gateway name", gateway.len(), MAX_GATEWAY_NAME)
        }
        Command::CapacitySettled { node, .. } => must_be(*node),
        Command::DialogBatch { upserts, removes } => dialog_caps(upserts, removes),
        Command::OwnerDialogBatch {
            writer,
            upserts,
            removes,
            replace_only,
        } => {
            must_be(*writer)?;
            dialog_caps(upserts, removes)?;
            // Each names one of the upserts: no more of them than upserts.
            cap(
                "dialog batch (replace-only keys)",
                replace_only.len(),
                upserts.len(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeAddrs;

    fn only(id: NodeId) -> impl Fn(NodeId) -> bool {
        move |n| n == id
    }

    #[test]
    fn a_node_writes_only_its_own_record_and_its_own_dialogs() {
        let add = |id| Command::AddNode {
            id,
            addresses: NodeAddrs::default(),
            voter: true,
        };
        assert_eq!(admit_write(&add(2), only(2)), Ok(()));
        assert_eq!(
            admit_write(&add(3), only(2)),
            Err(Denied::NotThatNode { node: 3 })
        );
        let batch = |writer, n: usize, len: usize| Command::OwnerDialogBatch {
            writer,
            upserts: (0..n).map(|i| (0, format!("c{i}"), vec![0; len])).collect(),
            removes: Vec::new(),
            replace_only: Vec::new(),
        };
        assert_eq!(admit_write(&batch(2, 3, 10), only(2)), Ok(()));
        assert_eq!(
            admit_write(&batch(1, 3, 10), only(2)),
            Err(Denied::NotThatNode { node: 1 })
        );
        let settled = |node| Command::CapacitySettled {
            node,
            generation: 4,
        };
        assert_eq!(admit_write(&settled(2), only(2)), Ok(()));
        assert_eq!(
            admit_write(&settled(1), only(2)),
            Err(Denied::NotThatNode { node: 1 })
        );
        assert!(matches!(
            admit_write(&batch(2, MAX_DIALOG_RECORDS + 1, 1), only(2)),
            Err(Denied::TooLarge { .. })
        ));
        assert!(matches!(
            admit_write(&batch(2, 2, MAX_DIALOG_BYTES / 2 + 1), only(2)),
            Err(Denied::TooLarge { .. })
        ));
        let unfenced = Command::DialogBatch {
            upserts: vec![(0, "c".into(), vec![0; MAX_DIALOG_BYTES])],
            removes: Vec::new(),
        };
        assert!(matches!(
            admit_write(&unfenced, only(2)),
            Err(Denied::TooLarge { .. })
        ));
    }

    #[test]
    fn the_leaders_own_commands_never_come_over_the_wire() {
        let anyone = |_| true;
        for cmd in [
            Command::MoveShards {
                moves: vec![(0, 1)],
            },
            Command::SetNodeState {
                id: 1,
                state: NodeState::Down,
            },
        ] {
            assert!(
                matches!(admit_write(&cmd, anyone), Err(Denied::LeaderOnly { .. })),
                "{cmd}"
            );
        }
        // An operator's drain, relayed by any member.
        let drain = Command::SetNodeState {
            id: 1,
            state: NodeState::Draining,
        };
        assert_eq!(admit_write(&drain, only(2)), Ok(()));
        // A gateway's state, relayed for an operator; a name beyond its cap.
        let gw = |name: String| Command::SetGatewayAdmin {
            gateway: name,
            node: None,
            state: crate::division::GatewayAdmin::Disabled,
        };
        assert_eq!(admit_write(&gw("gw1".into()), only(2)), Ok(()));
        assert!(matches!(
            admit_write(&gw("g".repeat(MAX_GATEWAY_NAME + 1)), anyone),
            Err(Denied::TooLarge { .. })
        ));
        let big = Command::SetConfig {
            expected_version: None,
            body: vec![b' '; MAX_CONFIG_BYTES + 1],
        };
        assert!(matches!(
            admit_write(&big, anyone),
            Err(Denied::TooLarge { .. })
        ));
    }
}
