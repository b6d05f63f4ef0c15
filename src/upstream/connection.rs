//! One pipelined connection to Redis.
//!
//! Requests are written as they come, without waiting for replies; replies
//! are matched to requests strictly in order. A request is a batch: the bytes
//! of one or more commands from one client and how many replies they expect.
//! The batch's replies arrive contiguously, so they are handed back as one
//! zero-copy slice of the read buffer.
//!
//! Guarantee: every request's `respond` is answered exactly once, with its
//! replies or with an error; a broken connection never leaves a waiter hanging
//! and never gives one request's replies to another.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::{ConnectOptions, UpstreamError};
use crate::gather::Gather;
use crate::output::OutputBuffer;
use crate::protocol::{ReplyLimits, ReplyScanner};
use crate::stats::{ConnectionKind, Stats};
use crate::stream::{ReadHalf, Stream, WriteHalf};

/// The replies to one batch, or why they will never come.
pub type BatchResult = Result<Bytes, UpstreamError>;

/// Work to do with a batch's replies as soon as they arrive, on the
/// connection's reader, before they are handed on (so it never waits for
/// the client that will read them); what it returns is handed on (reply
/// decoding replaces enveloped values there).
pub type Hook = Box<dyn FnOnce(BatchResult) -> BatchResult + Send>;

/// Answers one batch exactly once: runs its hook, then hands the result
/// over. Dropped unanswered, it answers "connection lost".
struct Responder {
    respond: Option<oneshot::Sender<BatchResult>>,
    hook: Option<Hook>,
    /// The client's output buffer, where the replies count as held, and
    /// how many replies the batch brings.
    output: Option<(Arc<OutputBuffer>, usize)>,
}

impl Responder {
    /// Whether `pending` more bytes of replies would take the client over
    /// its output-buffer limit (which then counts as reached).
    fn over_output_limit(&self, pending: usize) -> bool {
        self.output
            .as_ref()
            .is_some_and(|(output, _)| output.over_with(pending))
    }

    fn answer(mut self, result: BatchResult) {
        self.finish(result);
    }

    fn finish(&mut self, result: BatchResult) {
        let result = match self.hook.take() {
            Some(hook) => hook(result),
            None => result,
        };
        if let Some((output, replies)) = self.output.take() {
            let bytes = result.as_ref().map_or(0, |bytes| bytes.len());
            output.add(bytes);
            output.batch_arrived(replies, bytes);
        }
        if let Some(respond) = self.respond.take() {
            let _ = respond.send(result);
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.respond.is_some() || self.hook.is_some() {
            self.finish(Err(UpstreamError::lost()));
        }
    }
}

/// Requests queued per connection before senders wait (back-pressure).
const REQUEST_QUEUE: usize = 1024;
/// Requests smaller than this wait for the outstanding replies (see
/// [`Outstanding`]); larger ones fill a write by themselves and go at once.
const CLOCKED_BELOW: usize = 4096;
/// Largest write assembled from queued requests before it is sent.
const MAX_WRITE: usize = 256 * 1024;
/// A batch's replies gathered past this size are checked against the
/// client's output-buffer limit as they arrive (a batch of 512 large
/// replies could otherwise be held whole before its client is counted).
const DISCARD_CHECK_ABOVE: usize = 64 * 1024;

enum Request {
    Batch {
        bytes: Bytes,
        replies: usize,
        respond: Responder,
    },
    /// Bytes whose replies, if any, flow to the pipe sink.
    Raw(Bytes),
    /// From here on, every byte Redis sends goes to `sink` unparsed.
    Pipe(mpsc::Sender<Bytes>),
}

impl Request {
    fn len(&self) -> usize {
        match self {
            Request::Batch { bytes, .. } | Request::Raw(bytes) => bytes.len(),
            Request::Pipe(_) => 0,
        }
    }
}

/// What the reader expects next, in request order.
enum Expect {
    Replies { count: usize, respond: Responder },
    Pipe(mpsc::Sender<Bytes>),
}

/// Batches written to Redis whose replies have not all arrived yet.
///
/// A pooled connection writes again only when Redis has answered everything
/// it was sent: whatever clients send meanwhile is queued and goes out as one
/// write. Under load this turns many small writes (and as many reads and
/// wake-ups in Redis) into a few large ones; when idle it adds no delay,
/// because nothing is outstanding. Redis runs one connection's commands in
/// order anyway, so waiting for the earlier ones costs at most the loopback
/// round trip, and blocking commands never use pooled connections.
#[derive(Debug, Default)]
struct Outstanding {
    batches: AtomicUsize,
    answered: Notify,
    /// The reader is gone; nothing will be answered any more.
    dead: AtomicBool,
}

impl Outstanding {
    fn sent(&self, batches: usize) {
        self.batches.fetch_add(batches, Ordering::AcqRel);
    }

    fn answered_one(&self) {
        if self.batches.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.answered.notify_one();
        }
    }

    /// The connection is gone: release the writer, for good.
    fn clear(&self) {
        self.dead.store(true, Ordering::Release);
        self.answered.notify_one();
    }

    async fn all_answered(&self) {
        // notify_one keeps a permit when nobody waits, so no wake-up is lost;
        // a stale permit only costs one more look at the counter.
        while self.batches.load(Ordering::Acquire) > 0 && !self.dead.load(Ordering::Acquire) {
            self.answered.notified().await;
        }
    }
}

/// A handle to a pipelined upstream connection; clones share it. The
/// connection closes when the last handle is dropped or Redis goes away.
#[derive(Clone, Debug)]
pub struct UpstreamConnection {
    link: Link,
}

/// What a handle reaches: one Redis, or a Redis Cluster through its router.
#[derive(Clone, Debug)]
enum Link {
    Node {
        requests: mpsc::Sender<Request>,
        closed: watch::Receiver<bool>,
    },
    /// A pooled connection to a cluster: each command to its slot's master.
    Cluster(super::cluster::ClusterLink),
    /// A client's own connection to a cluster: one master at a time.
    Pinned(Arc<super::cluster::Pinned>),
}

/// Answers one batch exactly once, as a connection's reader does (its
/// hook run, its replies counted in the client's output buffer), for a
/// batch whose replies are assembled elsewhere (the cluster router).
pub(super) struct Answer(Responder);

impl Answer {
    pub(super) fn new(
        hook: Option<Hook>,
        output: Option<Arc<OutputBuffer>>,
        replies: usize,
    ) -> (Answer, oneshot::Receiver<BatchResult>) {
        let (respond, receiver) = oneshot::channel();
        let responder = Responder {
            respond: Some(respond),
            hook,
            output: output.map(|output| (output, replies)),
        };
        (Answer(responder), receiver)
    }

    pub(super) fn answer(self, result: BatchResult) {
        self.0.answer(result);
    }
}

impl UpstreamConnection {
    /// Starts the reader and writer tasks over an established, set-up stream.
    /// `leftover` holds bytes already read past the set-up replies.
    pub(super) fn start(
        stream: Stream,
        leftover: BytesMut,
        limits: ReplyLimits,
        stats: Arc<Stats>,
        options: ConnectOptions,
    ) -> UpstreamConnection {
        let kind = options.kind;
        let (read, write) = stream.split();
        let (requests, request_rx) = mpsc::channel(REQUEST_QUEUE);
        let (expect_tx, expect_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed) = watch::channel(false);
        let write_failed = Arc::new(Notify::new());
        stats.connection_opened(kind);
        let outstanding = (kind == ConnectionKind::Pooled).then(|| Arc::new(Outstanding::default()));
        tokio::spawn(write_loop(
            write,
            request_rx,
            expect_tx,
            write_failed.clone(),
            outstanding.clone(),
        ));
        tokio::spawn(async move {
            let silence = options.reply_timeout.filter(|_| outstanding.is_some());
            let reason = read_loop(read, leftover, expect_rx, limits, write_failed, outstanding, silence).await;
            tracing::debug!(%reason, ?kind, "upstream connection closed");
            stats.connection_closed(kind);
            closed_tx.send_replace(true);
        });
        UpstreamConnection {
            link: Link::Node { requests, closed },
        }
    }

    pub(super) fn cluster(link: super::cluster::ClusterLink) -> UpstreamConnection {
        UpstreamConnection {
            link: Link::Cluster(link),
        }
    }

    pub(super) fn pinned(pinned: Arc<super::cluster::Pinned>) -> UpstreamConnection {
        UpstreamConnection {
            link: Link::Pinned(pinned),
        }
    }

    /// As [`Self::send`] on a connection to one node (what the cluster
    /// router sends on); any other handle answers "connection lost".
    pub(super) async fn send_to_node(
        &self,
        bytes: Bytes,
        replies: usize,
        hook: Option<Hook>,
    ) -> oneshot::Receiver<BatchResult> {
        let Link::Node { requests, .. } = &self.link else {
            let (answer, receiver) = Answer::new(hook, None, replies);
            answer.answer(Err(UpstreamError::lost()));
            return receiver;
        };
        queue_batch(requests, bytes, replies, hook, None).await
    }

    /// [`Self::pipe_to`] on a connection to one node.
    pub(super) async fn pipe_to_node(&self, sink: mpsc::Sender<Bytes>) -> Result<(), UpstreamError> {
        match &self.link {
            Link::Node { requests, .. } => requests
                .send(Request::Pipe(sink))
                .await
                .map_err(|_| UpstreamError::lost()),
            _ => Err(UpstreamError::lost()),
        }
    }

    /// [`Self::send_raw`] on a connection to one node.
    pub(super) async fn send_raw_to_node(&self, bytes: Bytes) -> Result<(), UpstreamError> {
        match &self.link {
            Link::Node { requests, .. } => requests
                .send(Request::Raw(bytes))
                .await
                .map_err(|_| UpstreamError::lost()),
            _ => Err(UpstreamError::lost()),
        }
    }

    /// Queues a batch of `replies` commands; the receiver yields their replies.
    pub async fn send(&self, bytes: Bytes, replies: usize) -> oneshot::Receiver<BatchResult> {
        self.send_with(bytes, replies, None, None).await
    }

    /// As [`Self::send`], running `hook` on the replies (or the failure) as
    /// soon as they arrive, and counting what it returns in `output` (the
    /// client's output buffer) until the client's writer takes it out.
    pub async fn send_with(
        &self,
        bytes: Bytes,
        replies: usize,
        hook: Option<Hook>,
        output: Option<Arc<OutputBuffer>>,
    ) -> oneshot::Receiver<BatchResult> {
        let requests = match &self.link {
            Link::Node { requests, .. } => requests,
            Link::Cluster(link) => return link.send_with(bytes, replies, hook, output).await,
            Link::Pinned(pinned) => return pinned.send_with(bytes, replies, hook, output).await,
        };
        queue_batch(requests, bytes, replies, hook, output).await
    }

    /// Switches the connection to pipe mode: everything Redis sends from now
    /// on goes to `sink` as it arrives. Replies still owed to earlier batches
    /// are delivered first.
    pub async fn pipe_to(&self, sink: mpsc::Sender<Bytes>) -> Result<(), UpstreamError> {
        match &self.link {
            Link::Node { .. } => self.pipe_to_node(sink).await,
            Link::Pinned(pinned) => pinned.pipe_to(sink).await,
            Link::Cluster(_) => Err(UpstreamError::Unavailable(
                "a pooled cluster connection cannot be piped".into(),
            )),
        }
    }

    /// Writes bytes in pipe mode (their replies go to the sink).
    pub async fn send_raw(&self, bytes: Bytes) -> Result<(), UpstreamError> {
        match &self.link {
            Link::Node { .. } => self.send_raw_to_node(bytes).await,
            Link::Pinned(pinned) => pinned.send_raw(bytes).await,
            Link::Cluster(_) => Err(UpstreamError::Unavailable(
                "a pooled cluster connection cannot be piped".into(),
            )),
        }
    }

    /// True once the connection is gone for good.
    pub fn is_closed(&self) -> bool {
        match &self.link {
            Link::Node { requests, closed } => *closed.borrow() || requests.is_closed(),
            Link::Cluster(_) => false,
            Link::Pinned(pinned) => pinned.is_closed(),
        }
    }

    /// Resolves when the connection is gone for good.
    pub async fn closed(&self) {
        match &self.link {
            Link::Node { closed, .. } => {
                let mut closed = closed.clone();
                let _ = closed.wait_for(|closed| *closed).await;
            }
            Link::Cluster(_) => std::future::pending().await,
            Link::Pinned(pinned) => pinned.closed().await,
        }
    }
}

/// Queues a batch on one connection's writer; if the writer is gone, the
/// batch is answered "connection lost" at once.
async fn queue_batch(
    requests: &mpsc::Sender<Request>,
    bytes: Bytes,
    replies: usize,
    hook: Option<Hook>,
    output: Option<Arc<OutputBuffer>>,
) -> oneshot::Receiver<BatchResult> {
    let (respond, receiver) = oneshot::channel();
    let request = Request::Batch {
        bytes,
        replies,
        respond: Responder {
            respond: Some(respond),
            hook,
            output: output.map(|output| (output, replies)),
        },
    };
    if let Err(mpsc::error::SendError(Request::Batch { respond, .. })) = requests.send(request).await {
        respond.answer(Err(UpstreamError::lost()));
    }
    receiver
}

async fn write_loop(
    mut write: WriteHalf,
    mut requests: mpsc::Receiver<Request>,
    expects: mpsc::UnboundedSender<Expect>,
    write_failed: Arc<Notify>,
    outstanding: Option<Arc<Outstanding>>,
) {
    let mut out = Gather::default();
    while let Some(first) = requests.recv().await {
        if let Some(outstanding) = &outstanding
            && first.len() < CLOCKED_BELOW
        {
            outstanding.all_answered().await;
        }
        // Let every client that is ready queue its commands too, so that
        // Redis gets one large write instead of one per client: without this
        // the scheduler runs this task as soon as the first client wakes it.
        tokio::task::yield_now().await;
        if expects.is_closed() {
            // The reader is gone: nothing written now could be answered.
            // Dropping the queue fails every request still in it.
            return;
        }
        let mut batches = 0;
        let mut next = Some(first);
        // Coalesce whatever is queued into one write: many clients' commands,
        // one syscall, and Redis reads them in one go.
        while let Some(request) = next.take() {
            let bytes = match request {
                Request::Batch {
                    bytes,
                    replies,
                    respond,
                } => {
                    if replies > 0 {
                        // The expectation is queued before the bytes are
                        // written, so the reader always knows who a reply is for.
                        if let Err(mpsc::error::SendError(Expect::Replies { respond, .. })) =
                            expects.send(Expect::Replies {
                                count: replies,
                                respond,
                            })
                        {
                            // The reader is gone (and has failed everything
                            // queued before): write none of this round, so
                            // no command runs that its client is told failed.
                            respond.answer(Err(UpstreamError::lost()));
                            return;
                        }
                        batches += 1;
                    }
                    bytes
                }
                Request::Raw(bytes) => bytes,
                Request::Pipe(sink) => {
                    let _ = expects.send(Expect::Pipe(sink));
                    continue;
                }
            };
            out.push(bytes);
            if out.len() < MAX_WRITE {
                next = requests.try_recv().ok();
            }
        }
        if let Some(outstanding) = &outstanding {
            outstanding.sent(batches);
        }
        if !out.is_empty() && out.write_to(&mut write).await.is_err() {
            write_failed.notify_one();
            return;
        }
    }
    // Every handle is gone: closing our side makes Redis close the connection.
    let _ = write.shutdown().await;
}

/// Reads replies and hands them to their batches until the connection ends;
/// returns why it ended, after failing everything still owed.
async fn read_loop(
    mut read: ReadHalf,
    mut buf: BytesMut,
    mut expects: mpsc::UnboundedReceiver<Expect>,
    limits: ReplyLimits,
    write_failed: Arc<Notify>,
    outstanding: Option<Arc<Outstanding>>,
    reply_timeout: Option<Duration>,
) -> UpstreamError {
    let mut matcher = ReplyMatcher::new(limits, outstanding.clone());
    // The reply timeout: every quarter of it, a look at whether replies are
    // owed and nothing has come since the last look that found none owed,
    // or since the last read (so it fires between 3/4 of it and all of it).
    let mut last_heard = Instant::now();
    let mut looks = reply_timeout.map(|timeout| tokio::time::interval((timeout / 4).max(Duration::from_millis(1))));
    let reason = loop {
        if let Err(reason) = matcher.deliver(&mut buf, &mut expects).await {
            break reason;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            read_result = read.read_buf(&mut buf) => match read_result {
                Ok(0) => break UpstreamError::lost(),
                Ok(_) => {
                    if looks.is_some() {
                        last_heard = Instant::now();
                    }
                }
                Err(error) => break UpstreamError::Unavailable(format!("connection lost: {error}")),
            },
            _ = write_failed.notified() => break UpstreamError::lost(),
            _ = look(&mut looks) => {
                let owed = outstanding.as_ref().is_some_and(|outstanding| outstanding.batches.load(Ordering::Acquire) > 0);
                if !owed {
                    last_heard = Instant::now();
                } else if let Some(timeout) = reply_timeout
                    && last_heard.elapsed() >= timeout
                {
                    break UpstreamError::Unavailable(format!("no reply from Redis within {} ms", timeout.as_millis()));
                }
            }
        }
    };
    matcher.fail(reason.clone());
    // Closed before the writer is released, so it sees the reader is gone.
    expects.close();
    if let Some(outstanding) = &outstanding {
        outstanding.clear();
    }
    while let Ok(expect) = expects.try_recv() {
        if let Expect::Replies { respond, .. } = expect {
            respond.answer(Err(reason.clone()));
        }
    }
    reason
}

/// The next look for the reply timeout; never, without one.
async fn look(looks: &mut Option<tokio::time::Interval>) {
    match looks {
        Some(looks) => {
            looks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Matches complete replies in the read buffer to the batches waiting for them.
struct ReplyMatcher {
    scanner: ReplyScanner,
    /// The batch whose replies are arriving, and how many it still needs.
    current: Option<(usize, Responder)>,
    /// Bytes at the front of the buffer that belong to `current`.
    taken: usize,
    /// Replies of `current` copied aside because a push frame came between them.
    carried: BytesMut,
    /// The replies of `current` are being dropped as they come: its client
    /// went over its output-buffer limit.
    discarding: bool,
    pipe: Option<mpsc::Sender<Bytes>>,
    outstanding: Option<Arc<Outstanding>>,
}

impl ReplyMatcher {
    fn new(limits: ReplyLimits, outstanding: Option<Arc<Outstanding>>) -> Self {
        Self {
            scanner: ReplyScanner::new(limits),
            current: None,
            taken: 0,
            carried: BytesMut::new(),
            discarding: false,
            pipe: None,
            outstanding,
        }
    }

    /// Hands out every complete reply in `buf`.
    async fn deliver(
        &mut self,
        buf: &mut BytesMut,
        expects: &mut mpsc::UnboundedReceiver<Expect>,
    ) -> Result<(), UpstreamError> {
        loop {
            if let Some(sink) = &self.pipe {
                if !buf.is_empty() {
                    sink.send(buf.split().freeze())
                        .await
                        .map_err(|_| UpstreamError::Unavailable("client went away".into()))?;
                }
                return Ok(());
            }
            let frame = self
                .scanner
                .scan(&buf[self.taken..])
                .map_err(|error| UpstreamError::Unavailable(format!("bad reply from Redis: {}", error.message())))?;
            let Some(frame) = frame else {
                return Ok(());
            };
            if frame.push && self.current.is_none() {
                // In RESP3 the first frame after SUBSCRIBE is itself a push:
                // if pipe mode comes next, it starts with this frame.
                match expects.try_recv() {
                    Ok(Expect::Pipe(sink)) => {
                        self.pipe = Some(sink);
                        continue;
                    }
                    Ok(Expect::Replies { count, respond }) => self.current = Some((count, respond)),
                    Err(_) => {}
                }
            }
            if frame.push {
                // Out-of-band data (no client subscribed here); not a reply.
                if self.taken > 0 {
                    self.carried.extend_from_slice(&buf[..self.taken]);
                    buf.advance(self.taken);
                    self.taken = 0;
                }
                buf.advance(frame.len);
                continue;
            }
            if self.current.is_none() {
                match expects.try_recv() {
                    Ok(Expect::Replies { count, respond }) => self.current = Some((count, respond)),
                    Ok(Expect::Pipe(sink)) => {
                        // The frame just scanned is the first piped byte.
                        self.pipe = Some(sink);
                        continue;
                    }
                    Err(_) => {
                        return Err(UpstreamError::Unavailable("Redis sent a reply nobody asked for".into()));
                    }
                }
            }
            self.taken += frame.len;
            let Some((remaining, respond)) = self.current.as_mut() else {
                continue;
            };
            *remaining -= 1;
            if self.taken + self.carried.len() > DISCARD_CHECK_ABOVE
                && respond.over_output_limit(self.taken + self.carried.len())
            {
                // The client will be cut off and never see these replies:
                // they are read and dropped, not gathered.
                buf.advance(self.taken);
                self.taken = 0;
                self.carried = BytesMut::new();
                self.discarding = true;
            }
            if *remaining == 0 {
                let mut replies = buf.split_to(self.taken);
                self.taken = 0;
                if !self.carried.is_empty() {
                    self.carried.extend_from_slice(&replies);
                    replies = std::mem::take(&mut self.carried);
                }
                if let Some((_, respond)) = self.current.take() {
                    if std::mem::take(&mut self.discarding) {
                        respond.answer(Err(UpstreamError::Unavailable("output buffer limit reached".into())));
                    } else {
                        respond.answer(Ok(replies.freeze()));
                    }
                }
                if let Some(outstanding) = &self.outstanding {
                    outstanding.answered_one();
                }
            }
            // The next batch may already be waiting in the buffer; pipe mode
            // may also begin right after this batch.
            if self.current.is_none()
                && let Ok(expect) = expects.try_recv()
            {
                match expect {
                    Expect::Replies { count, respond } => self.current = Some((count, respond)),
                    Expect::Pipe(sink) => self.pipe = Some(sink),
                }
            }
        }
    }

    fn fail(&mut self, reason: UpstreamError) {
        if let Some((_, respond)) = self.current.take() {
            respond.answer(Err(reason));
        }
    }
}
