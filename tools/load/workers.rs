//! What runs inside each glommio executor: producers at a fixed rate (or as
//! fast as the window allows) and the fetch loops of the group's consumers.
//! Latency is measured from the intended send time, so a stalled broker
//! shows up in the numbers instead of slowing the load (coordinated
//! omission).

use crate::ledger::Ledger;
use hdrhistogram::Histogram;
use ringmq::client::{visit_records, AsyncConnection, ClientError};
use ringmq::protocol::{self, fb, verify, Assignment, Failure, FetchParams, Kind, ProduceRequestBuilder, TopicLayout};
use ringmq::storage::latency_histogram_us;
use ringmq::wire::MessageDraft;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bounds connecting, each write and each request: far above any answer a
/// healthy broker gives (a 1 MiB batch and its fdatasync).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The producer group of the transactional phase's halves. Nothing of it
/// registers, so the broker never checks them back: each gets its commit
/// right away.
pub const TRANSACTION_GROUP: &str = "ringmq-load";

/// Bytes at the start of every body: intended send time (ns since the run
/// started), producer index, sequence.
pub const BODY_HEADER_BYTES: usize = 20;

#[derive(Clone, Debug)]
pub struct Workload {
    pub topic: String,
    pub group: String,
    pub size: usize,
    pub batch: usize,
    pub window: usize,
    /// Messages per second per producer; 0 for as fast as possible.
    pub rate_per_producer: f64,
    pub keyed: bool,
    pub producer_id_base: u64,
    /// Each message a half, then `END_TRANSACTION` commit (one message per
    /// request); acknowledged, and timed, at the commit's answer.
    pub transactional: bool,
    /// Each producer on connections of its own (`--connection-per-producer`),
    /// not the executor's shared one per shard.
    pub connection_per_producer: bool,
}

impl Workload {
    /// The id load producer `producer` sends under, on every queue, as the
    /// client's `Producer` has: the broker keeps its sequences per producer
    /// and queue (an id per queue would make it track producers x queues
    /// producers). Its messages' ids start with it too.
    pub fn producer_id(&self, producer: u32) -> u64 {
        self.producer_id_base + u64::from(producer)
    }
}

/// State every executor and the main thread share.
pub struct Shared {
    pub start: Instant,
    pub warmup_end: Instant,
    pub produce_end: Instant,
    pub stop_consumers: AtomicBool,
    pub producers_running: AtomicUsize,
    pub ledger: Mutex<Ledger>,
    pub published: AtomicU64,
    pub consumed: AtomicU64,
    pub errors: AtomicU64,
    /// Messages the broker answered with a status other than SEND_OK
    /// (FLUSH_DISK_TIMEOUT, FLUSH_SLAVE_TIMEOUT, SLAVE_NOT_AVAILABLE), by
    /// status name; each is in `errors` too, never acknowledged.
    pub not_send_ok: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests that got no answer, by why (a broker's refusal by its
    /// error code, a timeout, a lost connection): counted in `errors` too.
    pub failed_requests: Mutex<BTreeMap<String, u64>>,
    /// The current reporting interval: publish and end-to-end latency.
    pub interval: Mutex<(Histogram<u64>, Histogram<u64>)>,
}

/// What one executor measured over the whole run (after warm-up).
pub struct Totals {
    pub publish: Histogram<u64>,
    pub e2e: Histogram<u64>,
    pub send_delay: Histogram<u64>,
    /// At a fixed rate: how late a producer came to a request's slot, before
    /// any wait for room in its window (the send delay includes that wait,
    /// which a slow broker causes). Late here is the generator's own doing.
    pub schedule_lag: Histogram<u64>,
}

impl Totals {
    pub fn new() -> Self {
        Self {
            publish: latency_histogram_us(),
            e2e: latency_histogram_us(),
            send_delay: latency_histogram_us(),
            schedule_lag: latency_histogram_us(),
        }
    }

    /// Adds another executor's figures.
    pub fn add(&mut self, other: &Totals) {
        let _ = self.publish.add(&other.publish);
        let _ = self.e2e.add(&other.e2e);
        let _ = self.send_delay.add(&other.send_delay);
        let _ = self.schedule_lag.add(&other.schedule_lag);
    }
}

struct Local {
    totals: Totals,
    publish_interval: Histogram<u64>,
    e2e_interval: Histogram<u64>,
}

pub struct ExecutorPlan {
    pub producers: Vec<u32>,
    pub consumers: Vec<(u32, Assignment)>,
    /// The topics producers send to (`--topics`); consumers read the first.
    pub topics: Vec<TopicLayout>,
    pub endpoints: Vec<String>,
    pub workload: Workload,
}

struct Context {
    plan: ExecutorPlan,
    shared: Arc<Shared>,
    local: RefCell<Local>,
    connections: RefCell<HashMap<ConnectionKey, Rc<AsyncConnection>>>,
}

/// Whose connection to which shard: a producer's own with
/// `--connection-per-producer`, else the executor's (`None`).
type ConnectionKey = (Option<u32>, u32);

impl Context {
    /// The executor's shared connection to `shard`.
    async fn connection(&self, shard: u32) -> Result<Rc<AsyncConnection>, ClientError> {
        self.owned_connection(None, shard).await
    }

    /// The connection `producer` sends to `shard` on: its own with
    /// `--connection-per-producer`, else the executor's.
    async fn producer_connection(&self, producer: u32, shard: u32) -> Result<Rc<AsyncConnection>, ClientError> {
        let owner = self.plan.workload.connection_per_producer.then_some(producer);
        self.owned_connection(owner, shard).await
    }

    /// `owner`'s connection to every shard, made before any request: senders
    /// that found none and each connected would spread one producer's
    /// requests over several connections, whose order the broker cannot
    /// keep (it answers OUT_OF_ORDER_SEQUENCE).
    async fn connect_every_shard(&self, owner: Option<u32>) {
        for shard in 0..self.plan.endpoints.len() as u32 {
            if let Err(error) = self.owned_connection(owner, shard).await {
                tracing::warn!(?owner, shard, %error, "no connection to the shard yet; its senders will retry");
            }
        }
    }

    async fn owned_connection(&self, owner: Option<u32>, shard: u32) -> Result<Rc<AsyncConnection>, ClientError> {
        let key = (owner, shard);
        if let Some(connection) = self.connections.borrow().get(&key).filter(|connection| !connection.is_closed()) {
            return Ok(connection.clone());
        }
        let address =
            self.plan.endpoints.get(shard as usize).ok_or_else(|| ClientError::Usage(format!("no shard {shard}")))?;
        let connection = AsyncConnection::connect(address, REQUEST_TIMEOUT).await?;
        self.connections.borrow_mut().insert(key, connection.clone());
        Ok(connection)
    }

    fn since_start_ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.shared.start).as_nanos() as u64
    }

    fn measured(&self, intended: Instant) -> bool {
        intended >= self.shared.warmup_end
    }
}

pub async fn run_executor(plan: ExecutorPlan, shared: Arc<Shared>) -> Totals {
    let local =
        Local { totals: Totals::new(), publish_interval: latency_histogram_us(), e2e_interval: latency_histogram_us() };
    let context =
        Rc::new(Context { plan, shared, local: RefCell::new(local), connections: RefCell::new(HashMap::new()) });
    context.connect_every_shard(None).await;
    let mut tasks = Vec::new();
    for producer in context.plan.producers.clone() {
        tasks.push(glommio::spawn_local(run_producer(context.clone(), producer)));
    }
    for (consumer, assignment) in context.plan.consumers.clone() {
        tasks.push(glommio::spawn_local(run_consumer(context.clone(), consumer, assignment)));
    }
    let publisher = glommio::spawn_local(publish_intervals(context.clone()));
    for task in tasks {
        task.await;
    }
    drop(publisher);
    move_interval(&context);
    let totals = std::mem::replace(&mut context.local.borrow_mut().totals, Totals::new());
    totals
}

/// Hands the executor's interval histograms to the main thread's report.
async fn publish_intervals(context: Rc<Context>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(500)).await;
        move_interval(&context);
    }
}

fn move_interval(context: &Context) {
    let mut local = context.local.borrow_mut();
    let mut interval = context.shared.interval.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let _ = interval.0.add(&local.publish_interval);
    let _ = interval.1.add(&local.e2e_interval);
    local.publish_interval.reset();
    local.e2e_interval.reset();
}

fn body(size: usize, intended_ns: u64, producer: u32, sequence: u64) -> Vec<u8> {
    let mut body = vec![0x5a; size.max(BODY_HEADER_BYTES)];
    body[0..8].copy_from_slice(&intended_ns.to_le_bytes());
    body[8..12].copy_from_slice(&producer.to_le_bytes());
    stamp_sequence(&mut body, sequence);
    body
}

/// Rewrites the sequence a `body` carries.
fn stamp_sequence(body: &mut [u8], sequence: u64) {
    body[12..20].copy_from_slice(&sequence.to_le_bytes());
}

pub fn read_body(body: &[u8]) -> Option<(u64, u32, u64)> {
    if body.len() < BODY_HEADER_BYTES {
        return None;
    }
    let word = |range: std::ops::Range<usize>| {
        body[range].iter().rev().fold(0u64, |value, byte| value << 8 | u64::from(*byte))
    };
    Some((word(0..8), word(8..12) as u32, word(12..20)))
}

/// Every queue of every topic producers send to, as (topic index, queue).
fn queue_slots(topics: &[TopicLayout]) -> Vec<(usize, u32)> {
    topics
        .iter()
        .enumerate()
        .flat_map(|(topic, layout)| (0..layout.queue_shards.len() as u32).map(move |queue| (topic, queue)))
        .collect()
}

async fn run_producer(context: Rc<Context>, producer: u32) {
    let workload = context.plan.workload.clone();
    let slots = queue_slots(&context.plan.topics);
    let queues = slots.len() as u32;
    if workload.connection_per_producer {
        context.connect_every_shard(Some(producer)).await;
    }
    let window = Rc::new(glommio::sync::Semaphore::new(workload.window as u64));
    let request_interval = (workload.rate_per_producer > 0.0)
        .then(|| Duration::from_secs_f64(workload.batch as f64 / workload.rate_per_producer));
    let mut request = 0u64;
    // The broker stores a producer's messages to a queue in sequence order:
    // consecutive sequences per queue, from 0.
    let mut next_sequences = vec![0u64; queues as usize];
    loop {
        let now = Instant::now();
        let scheduled = request_interval.map(|interval| context.shared.start + interval.mul_f64(request as f64));
        // Stop at the end of the run, in intended time or, when the broker
        // cannot keep up with the rate, in wall-clock time.
        if scheduled.is_some_and(|at| at >= context.shared.produce_end) || now >= context.shared.produce_end {
            break;
        }
        if let Some(wait) = scheduled.and_then(|at| at.checked_duration_since(now)) {
            glommio::timer::sleep(wait).await;
        }
        if let Some(at) = scheduled.filter(|at| context.measured(*at)) {
            let lag = Instant::now().saturating_duration_since(at).as_micros() as u64;
            context.local.borrow_mut().totals.schedule_lag.saturating_record(lag);
        }
        let Ok(permit) = window.clone().acquire_static_permit(1).await else { break };
        // At a fixed rate a request is due at its slot, and waiting for room
        // in the window is part of its latency (coordinated omission). As
        // fast as the window allows (closed loop), it is due when its room
        // comes: timing it from before would add the previous request's
        // round trip to its own (twice the latency at window 1).
        let intended = scheduled.unwrap_or_else(Instant::now);
        let first_sequence = request * workload.batch as u64;
        let slot = if workload.keyed {
            crc32fast::hash(format!("key-{}", first_sequence % 1024).as_bytes()) % queues
        } else {
            ((request + u64::from(producer)) % u64::from(queues)) as u32
        };
        let (topic, queue) = slots[slot as usize];
        if context.measured(intended) {
            let delay = Instant::now().saturating_duration_since(intended).as_micros() as u64;
            context.local.borrow_mut().totals.send_delay.saturating_record(delay);
        }
        let context = context.clone();
        let stamp = QueueStamp { topic, queue, first_sequence: next_sequences[slot as usize] };
        next_sequences[slot as usize] += workload.batch as u64;
        glommio::spawn_local(async move {
            send(&context, &context.plan.workload, producer, stamp, first_sequence, intended).await;
            drop(permit);
        })
        .detach();
        request += 1;
    }
    let _ = window.acquire(workload.window as u64).await;
    context.shared.producers_running.fetch_sub(1, Ordering::SeqCst);
}

/// Where a request goes and the queue sequence of its first message.
struct QueueStamp {
    /// Index into the plan's topics.
    topic: usize,
    queue: u32,
    first_sequence: u64,
}

/// A generated message's bytes beside its body (ids, topic, sequence, a
/// key): the request's builder is sized with it so that it never grows.
const MESSAGE_FIELDS_BYTES: usize = 256;

async fn send(
    context: &Context,
    workload: &Workload,
    producer: u32,
    stamp: QueueStamp,
    first_sequence: u64,
    intended: Instant,
) {
    if workload.transactional {
        // One message per request (`--transactional` refuses `--batch`).
        send_transactional(context, workload, producer, &stamp, first_sequence, intended).await;
        return;
    }
    let intended_ns = context.since_start_ns(intended);
    let (queue, layout) = (stamp.queue, &context.plan.topics[stamp.topic]);
    let message_producer = workload.producer_id(producer);
    // One body for the request, its sequence rewritten per message: each
    // message is encoded in place, in the request.
    let mut body = body(workload.size, intended_ns, producer, first_sequence);
    let mut request = ProduceRequestBuilder::with_capacity(
        &layout.name,
        workload.batch,
        workload.batch * (workload.size + MESSAGE_FIELDS_BYTES),
    );
    for sequence in first_sequence..first_sequence + workload.batch as u64 {
        stamp_sequence(&mut body, sequence);
        let key = workload.keyed.then(|| format!("key-{}", sequence % 1024));
        let keys: Vec<&str> = key.iter().map(String::as_str).collect();
        let draft = MessageDraft {
            msg_id: (message_producer, sequence),
            topic: &layout.name,
            queue,
            keys: &keys,
            body: &body,
            producer_id: message_producer,
            sequence: stamp.first_sequence + (sequence - first_sequence),
            ..MessageDraft::default()
        };
        request.push_draft(&draft);
    }
    let request = request.finish(&layout.name, queue, false);
    let shard = layout.queue_shards[queue as usize];
    let answer = match context.producer_connection(producer, shard).await {
        Ok(connection) => connection.request_body(Kind::ProduceRequest, request).await,
        Err(error) => Err(error),
    };
    if let Err(error) = &answer {
        count_failed_request(context, error);
    }
    let statuses: Option<Vec<fb::SendStatus>> = answer.ok().and_then(|body| {
        let response = protocol::verify_produce_response(&body).ok()?;
        Some(response.sends()?.iter().map(|send| send.status()).collect())
    });
    let statuses = statuses.unwrap_or_default();
    let acknowledged = statuses.iter().filter(|status| **status == fb::SendStatus::SendOk).count();
    // A request is acknowledged only when every message of it answered
    // SEND_OK; any other status is counted, never taken for a success.
    count_not_send_ok(context, &statuses);
    if statuses.len() != workload.batch || acknowledged != workload.batch {
        context.shared.errors.fetch_add(workload.batch as u64, Ordering::Relaxed);
        return;
    }
    acknowledge(context, workload, producer, first_sequence, intended, acknowledged);
}

pub fn status_name(status: fb::SendStatus) -> &'static str {
    match status {
        fb::SendStatus::SendOk => "SEND_OK",
        fb::SendStatus::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
        fb::SendStatus::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT",
        fb::SendStatus::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
        _ => "UNKNOWN",
    }
}

/// Why a request got no answer, in a word or two: a refusal by its error
/// code, else the kind of failure.
fn failure_kind(error: &ClientError) -> String {
    match error {
        ClientError::Broker(failure) => format!("{:?}", failure.code),
        ClientError::Connect { .. } => "connect".into(),
        ClientError::Io { .. } => "io".into(),
        ClientError::Closed { .. } => "closed".into(),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::Protocol(_) => "protocol".into(),
        other => format!("{other:?}").split([' ', '(', '{']).next().unwrap_or("other").to_string(),
    }
}

fn count_failed_request(context: &Context, error: &ClientError) {
    let mut counts = context.shared.failed_requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *counts.entry(failure_kind(error)).or_default() += 1;
}

fn count_not_send_ok(context: &Context, statuses: &[fb::SendStatus]) {
    if statuses.iter().all(|status| *status == fb::SendStatus::SendOk) {
        return;
    }
    let mut counts = context.shared.not_send_ok.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for status in statuses.iter().filter(|status| **status != fb::SendStatus::SendOk) {
        *counts.entry(status_name(*status)).or_default() += 1;
    }
}

/// Records an acknowledged request: its latency from the intended send
/// time, its messages in the ledger.
fn acknowledge(
    context: &Context,
    workload: &Workload,
    producer: u32,
    first_sequence: u64,
    intended: Instant,
    acknowledged: usize,
) {
    let latency = Instant::now().saturating_duration_since(intended).as_micros() as u64;
    if context.measured(intended) {
        let mut local = context.local.borrow_mut();
        local.totals.publish.saturating_record(latency);
        local.publish_interval.saturating_record(latency);
    }
    {
        let mut ledger = context.shared.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for sequence in first_sequence..first_sequence + workload.batch as u64 {
            ledger.acknowledge(producer, sequence);
        }
    }
    context.shared.published.fetch_add(acknowledged as u64, Ordering::Relaxed);
}

/// One transactional message: the half, then its commit on the same shard
/// connection (two durable writes); acknowledged at the commit's answer.
async fn send_transactional(
    context: &Context,
    workload: &Workload,
    producer: u32,
    stamp: &QueueStamp,
    sequence: u64,
    intended: Instant,
) {
    let (queue, layout) = (stamp.queue, &context.plan.topics[stamp.topic]);
    let body = body(workload.size, context.since_start_ns(intended), producer, sequence);
    let message_producer = workload.producer_id(producer);
    let key = format!("key-{}", sequence % 1024);
    let keys = [key.as_str()];
    // Unique across runs too: the broker refuses the opposite outcome of a
    // transaction id it has settled.
    let transaction_id = format!("load-{message_producer:016x}-{sequence}");
    // Producer id 0: the broker deduplicates halves by transaction id, not
    // by queue sequence.
    let half = MessageDraft {
        msg_id: (message_producer, sequence),
        topic: &layout.name,
        queue,
        keys: if workload.keyed { &keys } else { &[] },
        body: &body,
        half: true,
        producer_group: Some(TRANSACTION_GROUP),
        transaction_id: Some(&transaction_id),
        ..MessageDraft::default()
    }
    .build();
    let shard = layout.queue_shards[queue as usize];
    let committed = match context.producer_connection(producer, shard).await {
        Ok(connection) => half_and_commit(&connection, &layout.name, queue, &half, &transaction_id).await,
        Err(error) => Err(HalfFailure::Other(error.to_string())),
    };
    match committed {
        Ok(()) => acknowledge(context, workload, producer, sequence, intended, 1),
        Err(HalfFailure::Status(status)) => {
            count_not_send_ok(context, &[status]);
            context.shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        Err(HalfFailure::Other(error)) => {
            tracing::debug!(error, transaction_id, "a transactional send failed");
            context.shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Why a transactional send was not acknowledged.
enum HalfFailure {
    /// The half was answered with a status other than SEND_OK.
    Status(fb::SendStatus),
    Other(String),
}

impl From<String> for HalfFailure {
    fn from(error: String) -> Self {
        HalfFailure::Other(error)
    }
}

async fn half_and_commit(
    connection: &AsyncConnection,
    topic: &str,
    queue: u32,
    half: &[u8],
    transaction_id: &str,
) -> Result<(), HalfFailure> {
    let request = protocol::produce_request(topic, queue, &[half], false);
    let answer = connection.request(Kind::ProduceRequest, &request).await.map_err(|error| error.to_string())?;
    let response = protocol::verify_produce_response(&answer).map_err(|error| error.to_string())?;
    let status = response.sends().filter(|sends| sends.len() == 1).map(|sends| sends.get(0).status());
    match status {
        Some(fb::SendStatus::SendOk) => {}
        Some(status) => return Err(HalfFailure::Status(status)),
        None => return Err("the half was not stored".to_string().into()),
    }
    let request =
        protocol::end_transaction_request(topic, queue, transaction_id, fb::TransactionOutcome::Commit, false);
    let answer = connection.request(Kind::EndTransactionRequest, &request).await.map_err(|error| error.to_string())?;
    let response = verify::<fb::EndTransactionResponse>(&answer).map_err(|error| error.to_string())?;
    if let Some(failure) = Failure::from_outcome(response.outcome()) {
        return Err(failure.to_string().into());
    }
    if response.state() != fb::TransactionState::Committed {
        return Err(format!("the commit answered state {:?}", response.state()).into());
    }
    Ok(())
}

async fn run_consumer(context: Rc<Context>, consumer: u32, assignment: Assignment) {
    let fetchers: Vec<_> = assignment
        .queues
        .iter()
        .map(|queue| {
            let member = (assignment.member_id.clone(), assignment.generation);
            glommio::spawn_local(fetch_loop(context.clone(), *queue, member))
        })
        .collect();
    let heartbeat = glommio::spawn_local(heartbeat_loop(context.clone(), assignment.clone()));
    for fetcher in fetchers {
        fetcher.await;
    }
    drop(heartbeat);
    tracing::debug!(consumer, "consumer done");
}

async fn heartbeat_loop(context: Rc<Context>, assignment: Assignment) {
    let group = context.plan.workload.group.clone();
    let topic = context.plan.workload.topic.clone();
    let coordinator = protocol::coordinator_shard(&group, context.plan.endpoints.len() as u32);
    let interval = Duration::from_millis(u64::from(assignment.heartbeat_interval_ms.max(100)));
    loop {
        glommio::timer::sleep(interval).await;
        let body = protocol::heartbeat_request(&group, &topic, &assignment.member_id);
        if let Ok(connection) = context.connection(coordinator).await {
            if let Ok(answer) = connection.request(Kind::HeartbeatRequest, &body).await {
                if let Ok(current) = verify::<fb::GroupAssignment>(&answer) {
                    if current.generation() != assignment.generation {
                        tracing::warn!("the load group rebalanced during the run");
                    }
                }
            }
        }
    }
}

/// `member`: the member id and generation that own `queue` (commits are
/// fenced by both).
async fn fetch_loop(context: Rc<Context>, queue: u32, member: (String, u64)) {
    let workload = context.plan.workload.clone();
    let shard = context.plan.topics[0].queue_shards[queue as usize];
    let mut offset = 0;
    let mut last_commit = Instant::now();
    while !context.shared.stop_consumers.load(Ordering::SeqCst) {
        let params = FetchParams {
            topic: workload.topic.clone(),
            queue,
            offset,
            max_count: 4096,
            max_bytes: 4 << 20,
            max_wait_ms: 100,
            ..FetchParams::default()
        };
        let Ok(connection) = context.connection(shard).await else {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(body) = connection.request(Kind::FetchRequest, &protocol::fetch_request(&params)).await else {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(response) = verify::<fb::FetchResponse>(&body) else { continue };
        let records = response.records().map(|records| body.slice_ref(records.bytes())).unwrap_or_default();
        let next_offset = response.next_offset();
        let now = Instant::now();
        let mut received = Vec::with_capacity(response.record_count() as usize);
        let visited = visit_records(&records, |_, message| {
            let body = message.message().body().map(|body| body.bytes()).unwrap_or_default();
            let Some((intended_ns, producer, sequence)) = read_body(body) else { return };
            // Messages of an earlier run on the same topic are not ours.
            if message.msg_id.0 != workload.producer_id(producer) {
                return;
            }
            received.push((producer, sequence));
            let intended = context.shared.start + Duration::from_nanos(intended_ns);
            if context.measured(intended) {
                let latency = now.saturating_duration_since(intended).as_micros() as u64;
                let mut local = context.local.borrow_mut();
                local.totals.e2e.saturating_record(latency);
                local.e2e_interval.saturating_record(latency);
            }
        });
        if visited.ok() != Some(response.record_count()) {
            tracing::error!(queue, offset, "a fetched record failed verification");
            context.shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        {
            let mut ledger = context.shared.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for (producer, sequence) in &received {
                ledger.receive(*producer, *sequence);
            }
        }
        context.shared.consumed.fetch_add(received.len() as u64, Ordering::Relaxed);
        offset = next_offset.max(offset);
        if last_commit.elapsed() >= Duration::from_secs(1) {
            last_commit = Instant::now();
            commit(&context, queue, offset, &member).await;
        }
    }
    commit(&context, queue, offset, &member).await;
}

async fn commit(context: &Context, queue: u32, offset: u64, (member_id, generation): &(String, u64)) {
    let workload = &context.plan.workload;
    let shard = context.plan.topics[0].queue_shards[queue as usize];
    let body = protocol::commit_offset_request(&workload.group, &workload.topic, queue, offset, *generation, member_id);
    if let Ok(connection) = context.connection(shard).await {
        if let Err(error) = connection.request(Kind::CommitOffsetRequest, &body).await {
            tracing::debug!(%error, queue, "commit failed");
        }
    }
}
