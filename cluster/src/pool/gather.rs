//! The leader's gathering of dialog batches: every [`Command::OwnerDialogBatch`] the leader
//! proposes — its own batcher's and those the followers' batchers send it — waits for the next
//! gathering, and goes to Raft with the others in one `client_write_many`. The pool then appends
//! (an fsync on every voter) and replicates (an AppendEntries to each follower) once per window,
//! instead of once per node per window as when each node's batcher kept a window of its own
//! (BENCHMARKS.md, "the done-when checks on a quiet machine, sixth run"). This is the only window
//! of the dialog group commit: a node's batcher has one batch in flight and sends it at once.
//!
//! Each batch stays its own entry with its own outcome: the log's format is unchanged, and a node
//! of the previous version applies the entries alike. The window opens only under load: a batch
//! that comes after a quiet spell goes at once; under load, gatherings start at least
//! [`GATHER_WINDOW`] apart, and one still committing does not hold up the next. A full queue is
//! not an error: that batch is proposed on its own.

use std::time::Duration;

use openraft::errors::{ClientWriteError, Fatal};
use openraft::raft::WriteResult;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use futures_util::StreamExt;

use crate::command::{Command, CommandResult};
use crate::error::{NotAppended, WriteError};
use crate::typ::TypeConfig;

use super::Pool;

/// Under load, gatherings start at least this far apart (one dialog window: a follower's batch
/// waits at most this long at the leader).
pub const GATHER_WINDOW: Duration = super::DIALOG_WINDOW;

/// Batches waiting for the next gathering (each holds at most [`super::commit::MAX_BATCH_RECORDS`]
/// records; a pool has a few nodes, each with one batch in flight).
pub(super) const GATHER_QUEUE: usize = 256;

/// Most batches in one gathering (one Raft append).
const MAX_GATHERED: usize = 64;

/// A batch waiting for the gathering, and where its outcome goes.
pub(super) struct Gathered {
    cmd: Command,
    reply: oneshot::Sender<Result<CommandResult, WriteError>>,
}

impl Pool {
    /// Proposes a dialog batch (this node leads) with the others of the next gathering.
    pub(super) async fn propose_gathered(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        let (reply, outcome) = oneshot::channel();
        if let Err(e) = self.gather.try_send(Gathered { cmd, reply }) {
            // A full queue (or a pool on its way out): this batch goes alone.
            let cmd = match e {
                mpsc::error::TrySendError::Full(g) | mpsc::error::TrySendError::Closed(g) => g.cmd,
            };
            return self.propose_alone(cmd).await;
        }
        outcome.await.unwrap_or_else(|_| {
            // The gatherer stopped with the batch taken: it may have reached the log.
            Err(WriteError::MaybeApplied("the pool is stopping".into()))
        })
    }

    /// Gathers the dialog batches proposed here and writes each gathering in one Raft append.
    pub(super) async fn gatherer(
        self: std::sync::Arc<Self>,
        mut rx: mpsc::Receiver<Gathered>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut last: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                g = rx.recv() => match g { Some(g) => g, None => return },
                _ = stop.changed() => return,
            };
            if let Some(until) = last.map(|t| t + GATHER_WINDOW)
                && Instant::now() < until
            {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = stop.changed() => return,
                }
            }
            last = Some(Instant::now());
            let mut batch = vec![first];
            while batch.len() < MAX_GATHERED
                && let Ok(g) = rx.try_recv()
            {
                batch.push(g);
            }
            use std::sync::atomic::Ordering::Relaxed;
            self.dialog_stats.gatherings.fetch_add(1, Relaxed);
            self.dialog_stats
                .gathered
                .fetch_add(batch.len() as u64, Relaxed);
            let (cmds, replies): (Vec<Command>, Vec<_>) =
                batch.into_iter().map(|g| (g.cmd, g.reply)).unzip();
            let results = match self.raft.client_write_many(cmds).await {
                Ok(results) => results,
                Err(fatal) => {
                    for r in replies {
                        let _ = r.send(Err(WriteError::MaybeApplied(fatal.to_string())));
                    }
                    continue;
                }
            };
            // The outcomes are awaited aside: the next gathering goes when its window opens,
            // whether or not this one has committed (a slow commit holds up no other batch).
            tokio::spawn(answer(results, replies));
        }
    }
}

/// Hands each batch of a gathering its outcome; they come in the order the batches were given.
async fn answer(
    results: futures_util::stream::BoxStream<
        'static,
        Result<WriteResult<TypeConfig>, Fatal<TypeConfig>>,
    >,
    replies: Vec<oneshot::Sender<Result<CommandResult, WriteError>>>,
) {
    let mut results = results;
    for reply in replies {
        let outcome = match results.next().await {
            Some(Ok(Ok(written))) => outcome_of(written.response),
            // Nothing was appended: the writer may try again (at the new leader).
            Some(Ok(Err(e @ ClientWriteError::ForwardToLeader(_)))) => Err(
                WriteError::NotAppended(NotAppended::NotLeader(e.to_string())),
            ),
            Some(Ok(Err(e))) => Err(WriteError::MaybeApplied(e.to_string())),
            Some(Err(fatal)) => Err(WriteError::MaybeApplied(fatal.to_string())),
            None => Err(WriteError::MaybeApplied("Raft stopped".into())),
        };
        let _ = reply.send(outcome);
    }
}

/// A write's outcome from what the state machine answered.
pub(super) fn outcome_of(result: CommandResult) -> Result<CommandResult, WriteError> {
    match result {
        CommandResult::Rejected(r) => Err(WriteError::Refused(r)),
        ok => Ok(ok),
    }
}
