//! Calls on this node: each DialogActor is asked for its [`CallInfo`] (concurrently, with a short
//! timeout: a busy or dying call is skipped, never waited for), then filtered and paged. Pure
//! helpers ([`matches`], [`page`]) do the selection so they are tested without actors.

use std::sync::Arc;

use futures_util::StreamExt;
use medpool_b2bua::dialog::{CallInfo, DialogMsg};
use medpool_b2bua::node::NodeCtx;
use medpool_proto::admin::{self as pb, CallPhase};
use ractor::ActorRef;

use super::convert;

/// How long one call may take to describe itself.
const INFO_TIMEOUT_MS: u64 = 500;
/// Calls asked at once.
const CONCURRENCY: usize = 256;
/// Default and largest page.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page.
pub const MAX_PAGE: usize = 1000;

/// Every call on this node with its actor.
pub async fn local(node: &Arc<NodeCtx>) -> Vec<(CallInfo, ActorRef<DialogMsg>)> {
    futures_util::stream::iter(node.registry.call_actors())
        .map(|actor| async move {
            match ractor::call_t!(actor, DialogMsg::Info, INFO_TIMEOUT_MS) {
                Ok(info) => Some((info, actor)),
                Err(_) => None,
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

/// The call with this Call-ID (leg A's or leg B's) on this node.
pub async fn find(node: &Arc<NodeCtx>, call_id: &str) -> Option<(CallInfo, ActorRef<DialogMsg>)> {
    local(node)
        .await
        .into_iter()
        .find(|(info, _)| info.a_call_id == call_id || info.b_call_id.as_deref() == Some(call_id))
}

/// Whether a call passes the filters of a `ListCalls` request (the node filter is applied by the
/// caller: it decides which nodes to ask).
pub fn matches(call: &pb::Call, req: &pb::ListCallsRequest) -> bool {
    if !req.trunk.is_empty() && call.inbound_trunk != req.trunk && call.gateway != req.trunk {
        return false;
    }
    if !req.gateway.is_empty() && call.gateway != req.gateway {
        return false;
    }
    if req.phase() != CallPhase::Unspecified && call.phase() != req.phase() {
        return false;
    }
    if !req.number_prefix.is_empty()
        && !call.called.starts_with(&req.number_prefix)
        && !call.calling.starts_with(&req.number_prefix)
    {
        return false;
    }
    true
}

/// Sorts by Call-ID, skips up to and including `page_token`, and cuts a page; the token of the
/// next page is the last Call-ID of this one when more follow — here, or on a node that sent only
/// its own first page (`more_elsewhere`: each node cuts its list to the page size, so one that
/// holds more calls than a page says so with its own token).
pub fn page(
    mut calls: Vec<pb::Call>,
    page_token: &str,
    page_size: u32,
    more_elsewhere: bool,
) -> (Vec<pb::Call>, String) {
    calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
    calls.dedup_by(|a, b| a.call_id == b.call_id);
    let size = match usize::try_from(page_size).unwrap_or(MAX_PAGE) {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let rest: Vec<pb::Call> = calls
        .into_iter()
        .filter(|c| page_token.is_empty() || c.call_id.as_str() > page_token)
        .collect();
    let more = rest.len() > size || (more_elsewhere && !rest.is_empty());
    let page: Vec<pb::Call> = rest.into_iter().take(size).collect();
    let next = if more {
        page.last().map(|c| c.call_id.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    (page, next)
}

/// This node's calls that pass the filters, as admin records.
pub async fn list_local(
    node: &Arc<NodeCtx>,
    node_id: u64,
    req: &pb::ListCallsRequest,
) -> Vec<pb::Call> {
    local(node)
        .await
        .into_iter()
        .map(|(info, _)| convert::call(info, node_id))
        .filter(|c| matches(c, req))
        .collect()
}

/// Hangs a call up: BYE on confirmed legs, 480 to the caller and CANCEL towards the gateway while
/// it is being set up.
pub fn hangup(actor: &ActorRef<DialogMsg>) -> bool {
    actor.cast(DialogMsg::Hangup).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, trunk: &str, gw: &str, called: &str, phase: CallPhase) -> pb::Call {
        pb::Call {
            call_id: id.into(),
            inbound_trunk: trunk.into(),
            gateway: gw.into(),
            called: called.into(),
            phase: phase.into(),
            ..Default::default()
        }
    }

    #[test]
    fn filters_and_pages() {
        let calls = vec![
            call("c", "pbx", "gw1", "+4420", CallPhase::Confirmed),
            call("a", "pbx", "gw2", "+3312", CallPhase::Early),
            call("b", "pbx", "gw1", "+4421", CallPhase::Confirmed),
        ];
        let req = pb::ListCallsRequest {
            gateway: "gw1".into(),
            ..Default::default()
        };
        assert_eq!(calls.iter().filter(|c| matches(c, &req)).count(), 2);
        let req = pb::ListCallsRequest {
            number_prefix: "+33".into(),
            ..Default::default()
        };
        assert_eq!(calls.iter().filter(|c| matches(c, &req)).count(), 1);
        let mut req = pb::ListCallsRequest {
            trunk: "gw2".into(),
            ..Default::default()
        };
        assert_eq!(calls.iter().filter(|c| matches(c, &req)).count(), 1);
        req.trunk = String::new();
        req.set_phase(CallPhase::Confirmed);
        assert_eq!(calls.iter().filter(|c| matches(c, &req)).count(), 2);

        let (p1, next) = page(calls.clone(), "", 2, false);
        assert_eq!(
            p1.iter().map(|c| c.call_id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(next, "b");
        let (p2, next) = page(calls.clone(), &next, 2, false);
        assert_eq!(p2.len(), 1);
        assert_eq!(p2[0].call_id, "c");
        assert!(next.is_empty());
        // Another node held more than a page and sent its first two: the page is full and says
        // more follow, though no more than a page came.
        let first_two = vec![calls[1].clone(), calls[2].clone()];
        let (p1, next) = page(first_two, "", 2, true);
        assert_eq!(p1.len(), 2);
        assert_eq!(next, "b", "a node's own next page was lost");
    }
}
