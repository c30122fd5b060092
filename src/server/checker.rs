//! The transaction checker: a task in every shard's own executor. Every
//! `transaction_check_interval` it looks for pending halves older than
//! `transaction_timeout` (or their own check-immunity time) and sends each
//! a `CHECK_TRANSACTION` on a live registered producer of its group,
//! rotating among the members. A check counts only once the producer
//! acknowledged it (`CheckTransactionResponse`): while a whole group is
//! offline nothing is counted, so a producer that was down loses no
//! transaction (RocketMQ counts those). A counted check appends only a
//! small op record (`transactions::record_check`), not the half again.
//! After `transaction_check_max` counted checks the half is rolled back as
//! discarded, in the round after the last one, so the producer had an
//! interval to answer it.

use super::metrics::ShardCounters;
use super::shard::Shard;
use super::transactions::{self, CheckDue, HALF_QUEUE_ID};
use crate::protocol::{self, Kind, TransactionCheck};
use crate::storage::now_us;
use std::rc::Rc;
use std::time::Duration;

/// Longest wait for a producer to acknowledge a check (shorter when the
/// check interval is).
const CHECK_ACK_TIMEOUT_MAX: Duration = Duration::from_secs(3);

/// Runs the checker until the task is dropped.
pub async fn run(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(shard.config.transaction_check_interval).await;
        if shard.shutting_down.get() {
            return;
        }
        let forgotten =
            shard.transactions.borrow_mut().forget_settled(now_us(), crate::constants::SETTLED_TRANSACTIONS_KEPT);
        if forgotten > 0 {
            tracing::debug!(forgotten, "forgot transactions settled over an hour ago");
        }
        check_round(&shard).await;
    }
}

/// One round: discard the halves whose checks ran out, check the rest that
/// are due, all at once, and wait for every check to end (acknowledged or
/// timed out) so rounds never overlap.
async fn check_round(shard: &Rc<Shard>) {
    let config = &shard.config;
    let (due, exhausted) =
        shard.transactions.borrow().due_for_check(now_us(), config.transaction_timeout, config.transaction_check_max);
    for transaction_id in exhausted {
        match transactions::discard(shard, &transaction_id).await {
            Ok(()) => tracing::warn!(
                transaction_id,
                checks = config.transaction_check_max,
                "no outcome after the last check-back; rolled back and listed as discarded"
            ),
            Err(error) => tracing::warn!(%error, transaction_id, "could not discard a transaction; next round retries"),
        }
    }
    let mut checks = Vec::new();
    for half in due {
        // No live producer of its group: nothing sent, nothing counted.
        let Some(link) = shard.producer_links.borrow_mut().pick(&half.producer_group) else { continue };
        let shard = shard.clone();
        checks.push(glommio::spawn_local(async move {
            let ack_timeout = shard.config.transaction_check_interval.min(CHECK_ACK_TIMEOUT_MAX);
            check_one(&shard, &link, &half, ack_timeout).await;
        }));
    }
    for check in checks {
        check.await;
    }
}

async fn check_one(shard: &Shard, link: &super::producer_links::ProducerLink, half: &CheckDue, ack_timeout: Duration) {
    let message = match shard.log.read(HALF_QUEUE_ID, half.half_offset, 1, crate::constants::FRAME_BODY_BYTES_MAX).await
    {
        Ok(batch) => match batch.records.first() {
            Some(record) => record.message().to_vec(),
            None => {
                tracing::warn!(transaction_id = half.transaction_id, "the half message is not readable; not checked");
                return;
            }
        },
        Err(error) => {
            tracing::warn!(%error, transaction_id = half.transaction_id, "reading the half message failed; not checked");
            return;
        }
    };
    let check = TransactionCheck {
        transaction_id: half.transaction_id.clone(),
        msg_id: half.msg_id,
        topic: half.topic.clone(),
        queue: half.queue,
        producer_group: half.producer_group.clone(),
        message,
        checks_delivered: half.checks_delivered,
    };
    let body = protocol::check_transaction_request(&check);
    match link.request(Kind::CheckTransactionRequest, body, ack_timeout).await {
        Ok(frame) if frame.kind == Kind::CheckTransactionResponse as u16 => {
            match transactions::record_check(shard, half).await {
                Ok(()) => ShardCounters::add(&shard.counters.checks_delivered, 1),
                Err(error) => {
                    tracing::warn!(%error, transaction_id = half.transaction_id, "could not record a delivered check")
                }
            }
        }
        Ok(frame) => {
            tracing::debug!(
                kind = frame.kind,
                transaction_id = half.transaction_id,
                "a check answered with an error; not counted"
            )
        }
        Err(error) => {
            tracing::debug!(%error, transaction_id = half.transaction_id, "a check was not delivered; not counted")
        }
    }
}
