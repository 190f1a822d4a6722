//! Durable invalidation over a Redis Stream (feature `redis`).
//!
//! Publishers `XADD` each message (field `m`) to one stream capped at
//! `max_len` entries (`MAXLEN ~`). Each listener remembers the id of the
//! last entry it applied and reads on from there, so a listener that loses
//! its connection replays exactly what it missed when it is back. Before
//! each batch it reads, atomically with the batch, whether entries it had
//! not read yet were trimmed away (`max-deleted-entry-id` above its
//! position) or the stream was deleted or recreated (a Redis restart
//! without persistence): only then does it apply its
//! [`Recovery`](crate::bus::Recovery), counted in `BusStats::lost` and
//! logged at warn. Needs Redis 7.0 or later.
//!
//! Entry ids are not taken for time: whoever writes an entry may choose its
//! id (`XADD <stream> <ms>-<seq>`), and Redis numbers every later entry
//! after the highest id, so one id a day ahead would date every later entry
//! a day ahead. A signed message's age is judged by the listener's own
//! clock; after a disconnect, the pump says `Resumed` and then `CaughtUp`
//! once it has read to the end, and in between the listener also accepts
//! what it missed (see `window.rs`). An entry id well ahead of this host's
//! clock is logged at warn.
//!
//! ```no_run
//! # async fn demo(pool: warmpool::Pool<String>) -> Result<(), warmpool::bus::BusError> {
//! use warmpool::bus::{ListenOptions, Scope, new_origin, redis_streams::RedisStreamBus};
//! let origin = new_origin("billing");
//! // Keep the last 100,000 invalidations: a listener may be away that long.
//! let bus = RedisStreamBus::new("redis://127.0.0.1:6379", "warmpool:invalidations", 100_000)?;
//! let _listener = bus.attach(&pool, ListenOptions::new(&origin)).await?;
//! let publisher = bus.publisher(origin, None).await?;
//! publisher.invalidate(&pool, Scope::Key("acme:openai".into())).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::bus::listener::{self, BusEvent, EventSink};
use crate::bus::redis::{manager, open, send_pipeline};
use crate::bus::wire::now_us;
use crate::bus::{BusError, ListenOptions, Outbox, Publisher, SigningKey, Stamper};
use crate::pool::Pool;

/// How long one blocking `XREAD` waits for new entries before the listener
/// looks again (it also ends then if its pool is gone).
const BLOCK: Duration = Duration::from_secs(1);

/// Entries read per batch.
const BATCH: usize = 512;

/// How far ahead of this host's clock an entry id may be before it is
/// logged as chosen by its writer (clocks of hosts differ a little).
const ID_AHEAD_WARN_MS: u64 = 60_000;

/// Reads, in one atomic step, whether the stream exists, its
/// `max-deleted-entry-id` (moved by `XDEL`), `entries-added` (every entry
/// ever added; trimming does not lower it), its length, its first entry's
/// id, and up to `ARGV[2]` entries after id `ARGV[1]`. Atomic, so no entry
/// can be trimmed between the check and the read.
const READ_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, '0-0', 0, 0, '0-0', {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local max_deleted, added = '0-0', 0
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then max_deleted = info[i + 1] end
  if info[i] == 'entries-added' then added = info[i + 1] end
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first_id = '0-0'
if #first > 0 then first_id = first[1][1] end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
end
return {1, max_deleted, added, redis.call('XLEN', KEYS[1]), first_id, entries}
";

/// The script's reply: exists, max-deleted id, entries added, length, first id, entries.
type ReadReply = (i64, String, i64, i64, String, Vec<(String, Vec<Vec<u8>>)>);

/// A stream entry id, `{ms}-{seq}`, ordered as Redis orders them.
fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// A Redis server and the stream invalidations are appended to.
#[derive(Clone)]
pub struct RedisStreamBus {
    client: redis::Client,
    stream: String,
    max_len: usize,
}

/// Shows the stream only: the client holds the connection info, password included.
impl std::fmt::Debug for RedisStreamBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamBus")
            .field("stream", &self.stream)
            .field("max_len", &self.max_len)
            .finish()
    }
}

/// The sending half of a [`RedisStreamBus`]: `XADD` with the length cap.
#[derive(Clone)]
pub struct RedisStreamOutbox {
    connection: redis::aio::ConnectionManager,
    stream: String,
    max_len: usize,
}

impl std::fmt::Debug for RedisStreamOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamOutbox")
            .field("stream", &self.stream)
            .finish()
    }
}

/// Publishes invalidations to a Redis Stream.
pub type RedisStreamPublisher = Publisher<RedisStreamOutbox>;

impl Outbox for RedisStreamOutbox {
    async fn send(&self, payload: Vec<u8>) -> Result<(), BusError> {
        let mut connection = self.connection.clone();
        redis::cmd("XADD")
            .arg(&self.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*")
            .arg("m")
            .arg(payload)
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| BusError::transport("XADD", e))
    }

    /// One pipeline: the entries are added in order, in one round trip.
    async fn send_batch(&self, payloads: Vec<Vec<u8>>) -> Vec<Result<(), BusError>> {
        let mut pipe = redis::pipe();
        for payload in &payloads {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_len)
                .arg("*")
                .arg("m")
                .arg(payload);
        }
        send_pipeline(&self.connection, &mut pipe, "XADD").await
    }
}

/// Where a listener stands in the stream.
#[derive(Debug, Clone)]
struct Cursor {
    /// The id of the last entry read.
    last: String,
    /// How many entries were ever added up to and including `last`: the
    /// stream's `entries-added` when the position was fixed, plus one per
    /// entry read since. `entries-added` minus this is how many entries the
    /// listener has not read yet.
    seen: i64,
    /// The highest `max-deleted-entry-id` already reported, so that one
    /// deletion is reported once.
    deleted: String,
    /// Whether the listener is reading what it missed while disconnected.
    reading: Reading,
}

/// What a listener's reads are for, so that it can say when it caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// New entries as they are added.
    Live,
    /// The entries added while it was disconnected, until a read comes back
    /// short.
    Backlog,
}

impl Cursor {
    /// Why entries this listener has not read are gone, if they are, from
    /// one atomic reading of the stream's state.
    fn loss(&self, stream: &str, state: &ReadReply) -> Option<String> {
        let (exists, max_deleted, added, len, first, _) = state;
        if *exists == 0 {
            return (self.seen > 0 || self.last != "0-0")
                .then(|| format!("the stream `{stream}` is gone (deleted, or Redis restarted without persistence)"));
        }
        if *added < self.seen {
            return Some(format!("the stream `{stream}` was deleted and created again"));
        }
        let unread = added - self.seen;
        // Trimming removes the oldest entries: if the first one left is
        // after our position, every unread entry must still be there.
        if unread > 0 && (*len == 0 || parse_id(first) > parse_id(&self.last)) && *len < unread {
            return Some(format!(
                "{} entries of `{stream}` were trimmed before this listener read them (after {}); raise max_len",
                unread - len,
                self.last
            ));
        }
        (parse_id(max_deleted) > parse_id(&self.last).max(parse_id(&self.deleted)))
            .then(|| format!("entries of `{stream}` up to {max_deleted} were deleted before this listener read them"))
    }
}

impl RedisStreamBus {
    /// A bus on stream `stream` of the Redis at `url`, keeping about the
    /// last `max_len` messages (trimmed approximately, in whole nodes, so at
    /// least `max_len`). Does not connect yet.
    pub fn new(url: &str, stream: impl Into<String>, max_len: usize) -> Result<Self, BusError> {
        Ok(RedisStreamBus {
            client: open(url)?,
            stream: stream.into(),
            max_len: max_len.max(1),
        })
    }

    /// Connects a publisher for `origin`, signing with `signing_key` if given.
    pub async fn publisher(
        &self,
        origin: impl Into<String>,
        signing_key: Option<SigningKey>,
    ) -> Result<RedisStreamPublisher, BusError> {
        let outbox = RedisStreamOutbox {
            connection: manager(&self.client).await?,
            stream: self.stream.clone(),
            max_len: self.max_len,
        };
        Ok(Publisher::new(Stamper::new(origin, signing_key), outbox))
    }

    /// A dedicated connection: `XREAD BLOCK` holds it, so it is not shared.
    async fn connect(&self) -> Result<redis::aio::MultiplexedConnection, BusError> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| BusError::transport("connecting to Redis", e))
    }

    async fn read(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        after: &str,
        count: usize,
    ) -> Result<ReadReply, BusError> {
        // EVAL rather than EVALSHA: the script is small, and this needs no
        // script cache (nor the crate's `script` feature).
        redis::cmd("EVAL")
            .arg(READ_SCRIPT)
            .arg(1)
            .arg(&self.stream)
            .arg(after)
            .arg(count)
            .query_async(connection)
            .await
            .map_err(|e| BusError::transport("reading the stream", e))
    }

    /// Fixes the listener's position at the end of the stream, then applies
    /// every later message to `pool` in a background task.
    ///
    /// Returns once the position is fixed (so nothing published afterwards
    /// is missed), or fails if Redis cannot be reached now. A lost connection
    /// is retried with exponential backoff and jitter (100 ms to 10 s); the
    /// listener then reads on from its position. The task ends when the
    /// pool shuts down or is dropped.
    pub async fn attach<T: Send + Sync + 'static>(
        &self,
        pool: &Pool<T>,
        options: ListenOptions,
    ) -> Result<JoinHandle<()>, BusError> {
        let mut connection = self.connect().await?;
        // The position is "everything added so far": the last id is read
        // with `entries-added` in the same atomic step.
        let (exists, _, added, _, _, _) = self.read(&mut connection, "0-0", 0).await?;
        let last: String = if exists == 0 {
            "0-0".into()
        } else {
            redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&self.stream)
                .query_async::<std::collections::HashMap<String, redis::Value>>(&mut connection)
                .await
                .ok()
                .and_then(|info| {
                    info.get("last-generated-id")
                        .and_then(|v| redis::from_redis_value_ref(v).ok())
                })
                .unwrap_or_else(|| "0-0".into())
        };
        let cursor = Cursor {
            last,
            seen: added,
            deleted: "0-0".into(),
            reading: Reading::Live,
        };
        let bus = self.clone();
        Ok(listener::spawn(pool, options, true, |sink| {
            bus.pump(connection, cursor, sink)
        }))
    }

    async fn pump(self, mut connection: redis::aio::MultiplexedConnection, mut cursor: Cursor, sink: EventSink) {
        loop {
            match self.read_on(&mut connection, &mut cursor, &sink).await {
                Ok(()) => return, // the listener ended
                Err(error) => tracing::warn!(error = %error, stream = %self.stream, "redis stream read failed"),
            }
            if !sink.send(BusEvent::Disconnected).await {
                return;
            }
            let Some(renewed) = sink.reconnect(&self.stream, || self.connect()).await else {
                return;
            };
            connection = renewed;
            cursor.reading = Reading::Backlog;
            if !sink.send(BusEvent::Resumed).await {
                return;
            }
        }
    }

    /// Reads batches until the connection fails (`Err`) or the listener
    /// ends (`Ok`).
    async fn read_on(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        cursor: &mut Cursor,
        sink: &EventSink,
    ) -> Result<(), BusError> {
        loop {
            let state = self.read(connection, &cursor.last, BATCH).await?;
            if let Some(reason) = cursor.loss(&self.stream, &state) {
                let (exists, max_deleted, added, len, first) = (state.0, &state.1, state.2, state.3, &state.4);
                if exists == 0 || added < cursor.seen {
                    // A new stream: read it from its start.
                    cursor.last = "0-0".into();
                }
                if cursor.last == "0-0" || parse_id(first) > parse_id(&cursor.last) {
                    // What is left to read is the whole stream; the rest is
                    // gone for good and counts as seen.
                    cursor.seen = added - len;
                }
                cursor.deleted = max_deleted.clone();
                if !sink.send(BusEvent::Lost { reason }).await {
                    return Ok(());
                }
            }
            let entries = state.5;
            let short = entries.len() < BATCH;
            for (id, fields) in entries {
                let payload = fields
                    .chunks(2)
                    .find(|pair| pair.first().is_some_and(|f| f == b"m"))
                    .and_then(|pair| pair.get(1).cloned())
                    .unwrap_or_default();
                self.warn_if_ahead(&cursor.last, &id);
                cursor.last = id;
                cursor.seen += 1;
                // No stored time: the id is the writer's choice, not a clock.
                let stored_at_us = None;
                if !sink.send(BusEvent::Message { payload, stored_at_us }).await {
                    return Ok(());
                }
            }
            if !short {
                continue; // more to read at once
            }
            if cursor.reading == Reading::Backlog {
                // A short read reached the end of the stream as it was.
                cursor.reading = Reading::Live;
                if !sink.send(BusEvent::CaughtUp).await {
                    return Ok(());
                }
            }
            // Wait for the next entry (or BLOCK), then read it in the atomic
            // step above.
            let _: redis::Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(&cursor.last)
                .query_async(connection)
                .await
                .map_err(|e| BusError::transport("XREAD", e))?;
            if sink.is_closed() {
                return Ok(());
            }
        }
    }

    /// Logs an entry `id` well ahead of this host's clock, once per run of
    /// such ids (after one, Redis numbers every later entry after it).
    fn warn_if_ahead(&self, previous: &str, id: &str) {
        let horizon = now_us() / 1_000 + ID_AHEAD_WARN_MS;
        if parse_id(id).0 > horizon && parse_id(previous).0 <= horizon {
            tracing::warn!(
                stream = %self.stream,
                id,
                "stream entry id is ahead of this host's clock: a writer chose it, or clocks differ; ids are not used as time"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    /// Ids compare by milliseconds, then sequence, as numbers.
    #[test]
    fn ids_order_numerically() {
        assert!(parse_id("10-0") > parse_id("9-5"));
        assert!(parse_id("10-10") > parse_id("10-9"));
        assert_eq!(parse_id("0-0"), (0, 0));
    }
}
