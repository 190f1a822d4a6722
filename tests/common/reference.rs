//! A plain, sequential reference model of the pool, for `tests/model.rs`.
//!
//! It follows the contract in DESIGN.md and the documented behaviour of
//! `Pool` (hit conditions, singleflight, waiters of a build invalidated in
//! flight getting a fresh build, LRU capacity that skips leased and building
//! keys, the sweep) one event at a time, with time in milliseconds since the
//! pool started. It knows nothing about actors or messages, except where the
//! pool's documented outcome depends on *when* the supervisor learns
//! something: capacity is enforced when a new key arrives and on sweep
//! ticks, never when a key's state changes or a lease is merely dropped.
//! Expiry follows the contract's boundary: served at the very deadline,
//! expired after it.
//!
//! A few situations have more than one correct outcome, decided by how the
//! runtime interleaves key actors (see [`Model::ambiguous`]); the model says
//! so instead of guessing, and the property test then stops comparing
//! exactly.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Why an instance was retired, as the model counts it (named as in
/// `warmpool::Retirements`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireCause {
    Ttl,
    Idle,
    Capacity,
    Credentials,
    Invalidated,
    Replaced,
    Refreshed,
}

/// Milliseconds since the pool started.
pub type Ms = u64;

/// What a factory does when it is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// Returns an instance at once.
    Ok,
    /// Returns an instance after 1 s.
    OkAfter1s,
    /// Returns an instance after 2 s.
    OkAfter2s,
    /// Returns an error at once.
    Err,
    /// Panics inside its future.
    Panic,
    /// Never finishes: `create_timeout` fails it.
    Hang,
}

impl Build {
    pub fn succeeds(self) -> bool {
        matches!(self, Build::Ok | Build::OkAfter1s | Build::OkAfter2s)
    }
}

/// What a dispose hook does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ok,
    Err,
    Panic,
    /// Never finishes: `dispose_timeout` abandons it.
    Hang,
}

/// The pool settings a case runs with (all times in whole seconds, see `tests/model.rs`).
#[derive(Debug, Clone)]
pub struct Config {
    pub max_entries: usize,
    /// Zero: never.
    pub ttl_ms: Ms,
    /// Zero: off.
    pub idle_ms: Ms,
    /// Zero: no sweep.
    pub sweep_ms: Ms,
    pub create_timeout_ms: Ms,
    pub dispose_timeout_ms: Ms,
    /// Refresh-ahead age; zero: off.
    pub refresh_ms: Ms,
    /// The hook's behaviour for serial `s` is `hooks[s % hooks.len()]`.
    pub hooks: Vec<Hook>,
}

impl Config {
    pub fn hook_for(&self, serial: u64) -> Hook {
        self.hooks[serial as usize % self.hooks.len()]
    }
}

/// How a call failed, as far as the model can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrKind {
    Factory,
    Panicked,
    Timeout,
}

/// What one caller is doing, in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Idle,
    Pending { key: &'static str, hash: u64 },
    Holding { key: &'static str, hash: u64, serial: u64 },
    Failed(ErrKind),
}

#[derive(Debug, Clone)]
struct Req {
    caller: usize,
    hash: u64,
    build: Build,
    /// Counted as a miss already (a follower asking itself).
    counted: bool,
}

#[derive(Debug)]
struct BuildInFlight {
    hash: u64,
    /// The factory of the request that started the build.
    build: Build,
    waiters: Vec<Req>,
    stale: Option<RetireCause>,
    finish_at: Ms,
    /// Which factory call of this key it is (0-based): its serial is the
    /// serial the fake factory recorded for that call.
    call: usize,
    /// A rebuild of the current instance (`Pool::refresh`, refresh-ahead).
    refresh: Option<Refreshing>,
}

#[derive(Debug)]
struct Refreshing {
    /// The serial it replaces.
    replaces: u64,
    /// Whether the test's `refresh` call waits on it.
    has_caller: bool,
}

/// The test's one `Pool::refresh` call, as the model predicts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Idle,
    Pending,
    /// Answered with `Ok(replaced)`.
    Done(bool),
}

#[derive(Debug)]
struct Current {
    serial: u64,
    hash: u64,
    expires_at: Option<Ms>,
    last_used: Ms,
    /// What its factory does (`None`: inserted, nothing to rebuild with).
    build: Option<Build>,
    created_at: Ms,
    /// A hit asked for its refresh-ahead.
    claimed: bool,
}

/// What the supervisor last heard from a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// Just spawned, nothing reported yet (never evicted).
    New,
    Building,
    Ready(u64),
}

#[derive(Debug)]
struct Key {
    current: Option<Current>,
    build: Option<BuildInFlight>,
    queued: VecDeque<Req>,
    view: View,
    /// The supervisor's last-use time (last call routed here).
    routed_at: Ms,
    /// Chosen for eviction; no longer counted as resident.
    retiring: bool,
    /// Retire messages not yet handled: (cause, generation).
    mailbox: VecDeque<(RetireCause, Option<u64>)>,
}

/// Everything the model knows about one instance.
#[derive(Debug, Clone)]
pub struct Instance {
    pub key: &'static str,
    pub hash: u64,
    pub retired: bool,
    /// Retired because a refresh replaced it (its uses pass to the new one).
    pub refreshed: bool,
    /// When its dispose hook started.
    pub disposed_at: Option<Ms>,
}

/// Counters the model predicts, named as in `warmpool::Stats`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub hits: u64,
    pub misses: u64,
    pub builds: u64,
    pub build_failures: u64,
    pub inserts: u64,
    pub capacity_overshoot: u64,
    pub refreshes: u64,
    pub retired: BTreeMap<&'static str, u64>,
}

/// The reference model.
#[derive(Debug)]
pub struct Model {
    /// For each pending caller that waits on another caller's ask instead
    /// of asking (a miss in flight for the same key and hash; see
    /// `src/inflight.rs`), that caller.
    follows: Vec<Option<usize>>,
    /// Each follower's own factory, for when it has to ask itself.
    follow_builds: Vec<Option<Build>>,
    /// The pending callers whose ask later callers of the same key and
    /// hash follow (those that found no ask in flight for their key), with
    /// the number of prefix invalidations when they asked.
    leads: Vec<Option<u64>>,
    /// Prefix invalidations so far (the read view's fence number).
    prefix_invalidations: u64,
    /// Followers whose leader was served while a prefix invalidation ran:
    /// they ask the actors themselves, already counted as misses.
    fallbacks: Vec<(usize, &'static str, u64, Build)>,
    pub cfg: Config,
    pub now: Ms,
    /// Resident keys (and keys being retired), in LRU order: least recent first.
    lru: Vec<&'static str>,
    keys: HashMap<&'static str, Key>,
    /// Factory calls started per key.
    pub calls: BTreeMap<&'static str, usize>,
    pub counts: Counts,
    pub callers: Vec<Caller>,
    pub instances: BTreeMap<u64, Instance>,
    /// Set when the pool's outcome stops being determined by the operations
    /// alone (see the module docs); holds the reason.
    pub ambiguous: Option<String>,
    pub refresher: Refresher,
    /// A racing reader's hits, not yet seen by the supervisor (`raced_by`).
    race: Option<(&'static str, Vec<u64>)>,
    /// Hits that found their key's instance due for refresh-ahead; each
    /// served caller then asks for the refresh (through the supervisor).
    due_refresh: Vec<(&'static str, u64)>,
}

/// Looks up the serial of a key's n-th factory call (recorded by the fake factory).
pub trait Serials {
    fn serial_of(&self, key: &str, call: usize) -> Option<u64>;
}

fn cause_name(cause: RetireCause) -> &'static str {
    match cause {
        RetireCause::Ttl => "ttl",
        RetireCause::Idle => "idle",
        RetireCause::Capacity => "capacity",
        RetireCause::Credentials => "credentials",
        RetireCause::Invalidated => "invalidated",
        RetireCause::Replaced => "replaced",
        RetireCause::Refreshed => "refreshed",
    }
}

impl Model {
    pub fn new(cfg: Config, callers: usize) -> Self {
        Model {
            follows: vec![None; callers],
            follow_builds: vec![None; callers],
            leads: vec![None; callers],
            prefix_invalidations: 0,
            fallbacks: Vec::new(),
            cfg,
            now: 0,
            lru: Vec::new(),
            keys: HashMap::new(),
            calls: BTreeMap::new(),
            counts: Counts::default(),
            callers: vec![Caller::Idle; callers],
            instances: BTreeMap::new(),
            ambiguous: None,
            refresher: Refresher::Idle,
            race: None,
            due_refresh: Vec::new(),
        }
    }

    /// Resident keys, in key order.
    pub fn resident(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .keys
            .iter()
            .filter(|(_, k)| !k.retiring)
            .map(|(name, _)| *name)
            .collect();
        set.into_iter().map(str::to_string).collect()
    }

    pub fn builds_in_flight(&self) -> u64 {
        self.keys.values().filter(|k| k.build.is_some()).count() as u64
    }

    pub fn live_leases(&self) -> u64 {
        self.callers
            .iter()
            .filter(|c| matches!(c, Caller::Holding { .. }))
            .count() as u64
    }

    fn leases_of(&self, serial: u64) -> usize {
        self.callers
            .iter()
            .filter(|c| matches!(c, Caller::Holding { serial: s, .. } if *s == serial))
            .count()
    }

    /// Disposes `serial` if it is retired and nothing (no lease, no key) holds it.
    fn maybe_dispose(&mut self, serial: u64) {
        let held_by_key = self
            .keys
            .values()
            .any(|k| k.current.as_ref().is_some_and(|c| c.serial == serial));
        let leases = self.leases_of(serial);
        let now = self.now;
        let inst = self.instances.get_mut(&serial).expect("known instance");
        if inst.retired && !held_by_key && leases == 0 && inst.disposed_at.is_none() {
            inst.disposed_at = Some(now);
        }
    }

    fn retire_serial(&mut self, serial: u64, cause: RetireCause) {
        *self.counts.retired.entry(cause_name(cause)).or_default() += 1;
        let inst = self.instances.get_mut(&serial).expect("known instance");
        inst.retired = true;
        inst.refreshed = cause == RetireCause::Refreshed;
        self.maybe_dispose(serial);
    }

    fn check(&self, cur: &Current, hash: u64) -> Option<RetireCause> {
        let now = self.now;
        if cur.expires_at.is_some_and(|at| now > at) {
            Some(RetireCause::Ttl)
        } else if self.cfg.idle_ms > 0 && now > cur.last_used + self.cfg.idle_ms {
            Some(RetireCause::Idle)
        } else if cur.hash != hash {
            Some(RetireCause::Credentials)
        } else {
            None
        }
    }

    fn retire_current(&mut self, key: &'static str, cause: RetireCause) {
        self.retire_current_keeping(key, cause, false);
    }

    /// Retires the key's instance; a refresh of it nobody waits on is
    /// dropped with it, unless `keep_refresh` (the caller joins it).
    fn retire_current_keeping(&mut self, key: &'static str, cause: RetireCause, keep_refresh: bool) {
        let Some(k) = self.keys.get_mut(key) else { return };
        if let Some(cur) = k.current.take() {
            if !keep_refresh
                && let Some(b) = k.build.as_mut()
                && b.waiters.is_empty()
                && b.refresh.as_ref().is_some_and(|r| r.replaces == cur.serial)
            {
                b.stale.get_or_insert(cause);
            }
            self.retire_serial(cur.serial, cause);
        }
    }

    fn serve(&mut self, caller: usize, key: &'static str, hash: u64, serial: u64) {
        self.callers[caller] = Caller::Holding { key, hash, serial };
        let fenced = self
            .leads
            .get(caller)
            .copied()
            .flatten()
            .is_some_and(|asked| asked != self.prefix_invalidations);
        let followers = self.followers(caller);
        if fenced && !followers.is_empty() && self.ambiguous.is_none() {
            // Each such follower asks the actors when its task next runs:
            // before or after the key actor's report of this turn reaches
            // the supervisor, as the runtime interleaves them, which
            // decides admissions and so counts and retirements.
            self.ambiguous = Some(format!(
                "followers of a `{key}` ask sent back after a prefix invalidation"
            ));
        }
        for f in followers {
            if fenced {
                let build = self.follow_builds[f].take().expect("a follower keeps its factory");
                self.fallbacks.push((f, key, hash, build));
            } else {
                self.callers[f] = Caller::Holding { key, hash, serial };
            }
        }
    }

    /// Gives `caller` its error, and its followers the same.
    fn fail(&mut self, caller: usize, kind: ErrKind) {
        self.callers[caller] = Caller::Failed(kind);
        for f in self.followers(caller) {
            self.callers[f] = Caller::Failed(kind);
        }
    }

    /// The callers that follow `caller`'s ask, which ends now: they are
    /// answered with it and no longer follow anyone.
    fn followers(&mut self, caller: usize) -> Vec<usize> {
        let Some(leads) = self.leads.get_mut(caller) else {
            return Vec::new();
        };
        *leads = None;
        let followers: Vec<usize> = (0..self.follows.len())
            .filter(|f| self.follows[*f] == Some(caller))
            .collect();
        for f in &followers {
            self.follows[*f] = None;
        }
        followers
    }

    // ---- operations -------------------------------------------------------

    /// A caller asks for `key`. The caller must not be pending; a lease it
    /// holds is dropped first.
    pub fn get(&mut self, serials: &impl Serials, caller: usize, key: &'static str, hash: u64, build: Build) {
        assert!(!matches!(self.callers[caller], Caller::Pending { .. }));
        self.release(caller);
        self.callers[caller] = Caller::Pending { key, hash };
        // A call the read view serves never follows. Otherwise: at most one
        // ask per key is in flight for others to follow.
        let servable = self
            .keys
            .get(key)
            .and_then(|k| k.current.as_ref())
            .is_some_and(|cur| self.check(cur, hash).is_none());
        let leader = (0..self.leads.len()).filter(|_| !servable).find(|c| {
            self.leads[*c].is_some() && matches!(self.callers[*c], Caller::Pending { key: k, .. } if k == key)
        });
        match leader {
            Some(leader) if self.callers[leader] == (Caller::Pending { key, hash }) => {
                self.follows[caller] = Some(leader);
                self.follow_builds[caller] = Some(build);
                self.counts.misses += 1;
                return;
            }
            Some(_) => {}
            None => self.leads[caller] = Some(self.prefix_invalidations),
        }
        self.route(key);
        self.request(
            key,
            Req {
                caller,
                hash,
                build,
                counted: false,
            },
        );
        self.report(key);
        self.run_due(serials);
    }

    /// The refresh-ahead requests of the callers just served.
    fn ask_due_refreshes(&mut self, serials: &impl Serials) {
        for (key, serial) in std::mem::take(&mut self.due_refresh) {
            if self.keys.contains_key(key) {
                self.start_refresh(key, Some(serial), false);
                self.report(key);
                self.run_due(serials);
            }
        }
    }

    /// `Pool::get`: a hit on the published instance or nothing; returns the
    /// serial served. The caller's lease, if any, is dropped first.
    pub fn lookup(&mut self, caller: usize, key: &'static str, hash: u64) -> Option<u64> {
        self.release(caller);
        let cur = self.keys.get(key)?.current.as_ref()?;
        if self.check(cur, hash).is_some() {
            return None;
        }
        let serial = cur.serial;
        let now = self.now;
        self.keys.get_mut(key).unwrap().current.as_mut().unwrap().last_used = now;
        self.counts.hits += 1;
        // A use through the read view: the supervisor orders it after every
        // use it routed at the same instant.
        self.lru.retain(|k| *k != key);
        self.lru.push(key);
        self.keys.get_mut(key).unwrap().routed_at = now;
        self.serve(caller, key, hash, serial);
        Some(serial)
    }

    /// The credentials hash of the key's current instance.
    pub fn current_hash(&self, key: &str) -> Option<u64> {
        self.keys.get(key)?.current.as_ref().map(|c| c.hash)
    }

    /// Lookups by a concurrent reader racing the next operation, which
    /// were served `serials` of `key` (all at this instant). Each is a hit.
    /// Their use of the key is applied when the supervisor would see it:
    /// at the eviction walk of an admission during the operation (see
    /// `route`), else after it (`settle_race`).
    pub fn raced_by(&mut self, key: &'static str, serials: Vec<u64>) {
        self.counts.hits += serials.len() as u64;
        self.race = Some((key, serials));
    }

    /// Applies the racing reader's use of its key, if not applied yet.
    pub fn settle_race(&mut self) {
        if let Some((key, serials)) = self.race.take() {
            self.reader_touch(key, &serials);
        }
    }

    /// A hit is a use of its key while the key stays in the pool, also when
    /// the instance it hit has been retired since: the key actor carries
    /// the use over to the instance that serves next. For idle time it
    /// counts only on the instance it hit (or on one a refresh replaced,
    /// whose recorded uses the new one takes over).
    fn reader_touch(&mut self, key: &'static str, serials: &[u64]) {
        if serials.is_empty() || !self.keys.contains_key(key) {
            return;
        }
        let now = self.now;
        self.lru.retain(|k| *k != key);
        self.lru.push(key);
        let k = self.keys.get_mut(key).unwrap();
        k.routed_at = now;
        if let Some(cur) = k.current.as_mut()
            && serials.iter().any(|s| *s == cur.serial || self.instances[s].refreshed)
        {
            cur.last_used = now;
        }
    }

    /// `Pool::retire(&lease)` of the caller's lease; returns its answer.
    pub fn retire_lease(&mut self, serials: &impl Serials, caller: usize) -> bool {
        let Caller::Holding { key, serial, .. } = self.callers[caller] else {
            panic!("retire of a caller that holds no lease");
        };
        if !self.keys.contains_key(key) {
            return false;
        }
        let retired = self.retire(key, RetireCause::Invalidated, Some(serial));
        self.report(key);
        self.run_due(serials);
        retired
    }

    /// `Pool::refresh(key)` by the test's refresher; `Some(answer)` when it
    /// answers at once, `None` when it waits for a rebuild.
    pub fn refresh(&mut self, serials: &impl Serials, key: &'static str) -> Option<bool> {
        assert_ne!(self.refresher, Refresher::Pending);
        self.refresher = Refresher::Idle;
        if !self.keys.contains_key(key) {
            return Some(false);
        }
        let answer = self.start_refresh(key, None, true);
        self.report(key);
        self.run_due(serials);
        let answer = answer.or(match self.refresher {
            Refresher::Done(replaced) => Some(replaced),
            _ => None,
        });
        if answer.is_some() {
            self.refresher = Refresher::Idle;
        }
        answer
    }

    /// The key actor's refresh: `Some(false)` when there is nothing to
    /// rebuild, `None` when a rebuild was started or joined.
    fn start_refresh(&mut self, key: &'static str, target: Option<u64>, has_caller: bool) -> Option<bool> {
        let Some(cur) = self.keys[key].current.as_ref() else {
            return Some(false);
        };
        if target.is_some_and(|t| t != cur.serial) || self.check(cur, cur.hash).is_some() {
            return Some(false);
        }
        let Some(build) = cur.build else {
            return Some(false);
        };
        let (hash, replaces) = (cur.hash, cur.serial);
        if has_caller {
            self.refresher = Refresher::Pending;
        }
        let k = self.keys.get_mut(key).unwrap();
        match k.build.as_mut() {
            Some(b) if b.stale.is_none() && b.refresh.is_some() => {
                let r = b.refresh.as_mut().unwrap();
                r.has_caller |= has_caller;
                None
            }
            Some(_) => {
                if has_caller && self.ambiguous.is_none() {
                    self.ambiguous = Some(format!("a refresh of `{key}` deferred behind a dropped build"));
                }
                None
            }
            None => {
                self.start_build(
                    key,
                    Req {
                        caller: usize::MAX,
                        hash,
                        build,
                        counted: false,
                    },
                );
                let b = self.keys.get_mut(key).unwrap().build.as_mut().unwrap();
                b.waiters.clear();
                b.refresh = Some(Refreshing { replaces, has_caller });
                None
            }
        }
    }

    /// A caller drops its lease (or forgets its error).
    pub fn release(&mut self, caller: usize) {
        let old = std::mem::replace(&mut self.callers[caller], Caller::Idle);
        match old {
            Caller::Holding { serial, .. } => self.maybe_dispose(serial),
            Caller::Pending { .. } => panic!("release of a pending caller"),
            _ => {}
        }
    }

    pub fn insert(&mut self, serials: &impl Serials, key: &'static str, hash: u64, serial: u64) {
        self.route(key);
        self.counts.inserts += 1;
        self.instances.insert(
            serial,
            Instance {
                key,
                hash,
                retired: false,
                refreshed: false,
                disposed_at: None,
            },
        );
        self.retire_current(key, RetireCause::Replaced);
        let now = self.now;
        let expires_at = (self.cfg.ttl_ms > 0).then(|| now + self.cfg.ttl_ms);
        let k = self.keys.get_mut(key).expect("routed");
        if let Some(build) = k.build.as_mut() {
            build.stale.get_or_insert(RetireCause::Replaced);
        }
        k.current = Some(Current {
            serial,
            hash,
            expires_at,
            last_used: now,
            build: None,
            created_at: now,
            claimed: false,
        });
        self.report(key);
        self.run_due(serials);
    }

    /// Returns what `invalidate` returns.
    pub fn invalidate(&mut self, serials: &impl Serials, key: &'static str) -> bool {
        if !self.keys.contains_key(key) {
            return false;
        }
        let retired = self.retire(key, RetireCause::Invalidated, None);
        self.report(key);
        self.run_due(serials);
        retired
    }

    /// Returns what `invalidate_by_prefix` returns.
    pub fn invalidate_by_prefix(&mut self, serials: &impl Serials, prefix: &str) -> usize {
        self.prefix_invalidations += 1;
        let mut matched: Vec<&'static str> = self.keys.keys().copied().filter(|k| k.starts_with(prefix)).collect();
        matched.sort_unstable();
        // The answer counts the resident keys it retires: not those an
        // earlier invalidation or an eviction is still retiring.
        let resident = matched.iter().filter(|key| !self.keys[**key].retiring).count();
        for key in &matched {
            let k = self.keys.get_mut(key).unwrap();
            // The supervisor stops counting a ready key as resident until its
            // actor reports back (a busy one gets its retire at once).
            if matches!(k.view, View::Ready(_)) {
                k.retiring = true;
            }
            k.mailbox.push_back((RetireCause::Invalidated, None));
        }
        self.pump();
        self.run_due(serials);
        resident
    }

    /// Moves the clock to `to`, handling build completions and sweep ticks in order.
    pub fn advance_to(&mut self, serials: &impl Serials, to: Ms) {
        loop {
            let next_build = self
                .keys
                .iter()
                .filter_map(|(name, k)| k.build.as_ref().map(|b| (b.finish_at, *name)))
                .min();
            let next_sweep = (self.cfg.sweep_ms > 0).then(|| (self.now / self.cfg.sweep_ms + 1) * self.cfg.sweep_ms);
            let next = match (next_build, next_sweep) {
                (Some((b, _)), Some(s)) => b.min(s),
                (Some((b, _)), None) => b,
                (None, Some(s)) => s,
                (None, None) => break,
            };
            if next > to {
                break;
            }
            self.now = next;
            let finishing: Vec<&'static str> = self
                .keys
                .iter()
                .filter(|(_, k)| k.build.as_ref().is_some_and(|b| b.finish_at == next))
                .map(|(name, _)| *name)
                .collect();
            let sweeping = next_sweep == Some(next);
            assert!(
                finishing.len() + usize::from(sweeping) <= 1,
                "the test's timings let two timers fire at once at {next} ms ({finishing:?}, sweep {sweeping}): \
                 the pool's order would be arbitrary"
            );
            if sweeping {
                self.sweep();
            }
            self.run_due(serials);
        }
        self.now = to;
    }

    // ---- the supervisor's side ---------------------------------------------

    fn resident_count(&self) -> usize {
        self.keys.values().filter(|k| !k.retiring).count()
    }

    fn evictable(&self, name: &str) -> bool {
        let k = &self.keys[name];
        match k.view {
            View::Ready(serial) if !k.retiring => {
                let held_by_key = usize::from(k.current.as_ref().is_some_and(|c| c.serial == serial));
                held_by_key + self.leases_of(serial) <= 1
            }
            _ => false,
        }
    }

    /// Chooses the least recently used evictable key and sends it a capacity retire.
    fn evict_one(&mut self) -> bool {
        let Some(victim) = self.lru.iter().copied().find(|k| self.evictable(k)) else {
            return false;
        };
        let k = self.keys.get_mut(victim).unwrap();
        let View::Ready(generation) = k.view else {
            unreachable!()
        };
        k.retiring = true;
        k.mailbox.push_back((RetireCause::Capacity, Some(generation)));
        true
    }

    fn enforce(&mut self) {
        while self.resident_count() > self.cfg.max_entries && self.evict_one() {}
    }

    /// Routes a call to `key`: spawns it (at capacity, evicting one key or
    /// counting an overshoot) and marks it most recently used.
    fn route(&mut self, key: &'static str) {
        if !self.keys.contains_key(key) {
            self.keys.insert(
                key,
                Key {
                    current: None,
                    build: None,
                    queued: VecDeque::new(),
                    view: View::New,
                    routed_at: self.now,
                    retiring: false,
                    mailbox: VecDeque::new(),
                },
            );
            self.lru.push(key);
            // The walk re-reads hits it finds recorded on the way.
            self.settle_race();
            self.enforce();
            if self.resident_count() > self.cfg.max_entries {
                self.counts.capacity_overshoot += 1;
            }
            // The victim handles its retire before anything else happens.
            self.pump();
        }
        self.lru.retain(|k| *k != key);
        self.lru.push(key);
        let k = self.keys.get_mut(key).unwrap();
        k.routed_at = self.now;
        if k.retiring {
            // A call to a key being retired keeps it (the actor serves it
            // after the retirement): admitted again, sparing the key.
            self.settle_race();
            while self.resident_count() + 1 > self.cfg.max_entries && self.evict_one() {}
            self.keys.get_mut(key).unwrap().retiring = false;
            if self.resident_count() > self.cfg.max_entries {
                self.counts.capacity_overshoot += 1;
            }
            self.pump();
        }
    }

    /// A key tells the supervisor about a change of state; an empty key is
    /// stopped and forgotten. A report does not enforce capacity.
    fn report(&mut self, key: &'static str) {
        let Some(k) = self.keys.get_mut(key) else { return };
        // A refresh keeps its instance ready (evictable); any other build
        // keeps the key busy.
        let refreshing = k.build.as_ref().is_none_or(|b| b.refresh.is_some());
        let state = match (&k.current, &k.build) {
            (Some(c), _) if refreshing => Some(View::Ready(c.serial)),
            (_, Some(_)) => Some(View::Building),
            (None, None) => None,
            (Some(_), None) => unreachable!("covered above"),
        };
        // Only a dropped refresh in flight: the key is winding down.
        let dropped = k
            .build
            .as_ref()
            .is_some_and(|b| b.refresh.is_some() && b.waiters.is_empty() && b.stale.is_some());
        match state {
            Some(view) if view == k.view => return,
            Some(view) => {
                k.view = view;
                // A fresh report from a key chosen for eviction on an outdated view keeps it.
                if !(view == View::Building && dropped) {
                    k.retiring = false;
                }
            }
            None => {
                if !k.mailbox.is_empty() {
                    return; // it reports again after its last message
                }
                self.keys.remove(key);
                self.lru.retain(|k| *k != key);
            }
        }
        self.pump();
    }

    /// Delivers pending retire messages. If the pool is over capacity while
    /// two or more keys have messages pending, which one reports first (and
    /// so which key the supervisor then evicts) is up to the scheduler.
    fn pump(&mut self) {
        loop {
            let mut pending: Vec<&'static str> = self
                .keys
                .iter()
                .filter(|(_, k)| !k.mailbox.is_empty())
                .map(|(name, _)| *name)
                .collect();
            pending.sort_unstable();
            let Some(&key) = pending.first() else { return };
            if pending.len() > 1 && self.resident_count() > self.cfg.max_entries && self.ambiguous.is_none() {
                self.ambiguous = Some(format!(
                    "over capacity while {pending:?} retire at once at {} ms",
                    self.now
                ));
            }
            while let Some((cause, generation)) = self.keys.get_mut(key).and_then(|k| k.mailbox.pop_front()) {
                self.retire(key, cause, generation);
            }
            self.report(key);
        }
    }

    fn sweep(&mut self) {
        let now = self.now;
        let mut sends: Vec<(&'static str, RetireCause, u64)> = Vec::new();
        for (name, k) in &self.keys {
            if let (View::Ready(generation), Some(cur)) = (k.view, k.current.as_ref())
                && cur.serial == generation
                && cur.expires_at.is_some_and(|at| at < now)
            {
                sends.push((name, RetireCause::Ttl, generation));
            }
        }
        sends.sort_unstable_by_key(|(name, _, _)| *name);
        if self.cfg.idle_ms > 0 {
            for name in &self.lru {
                let k = &self.keys[name];
                if k.routed_at + self.cfg.idle_ms >= now {
                    break;
                }
                if let View::Ready(generation) = k.view {
                    sends.push((name, RetireCause::Idle, generation));
                }
            }
        }
        for (name, cause, generation) in sends {
            self.keys
                .get_mut(name)
                .unwrap()
                .mailbox
                .push_back((cause, Some(generation)));
        }
        // The sweep enforces capacity before any key has handled its retire.
        self.enforce();
        self.pump();
    }

    // ---- the key's side -----------------------------------------------------

    fn request(&mut self, key: &'static str, req: Req) {
        let cur = self.keys[key]
            .current
            .as_ref()
            .map(|c| (c.serial, self.check(c, req.hash)));
        match cur {
            Some((serial, None)) => {
                let now = self.now;
                let refresh_ms = self.cfg.refresh_ms;
                let c = self.keys.get_mut(key).unwrap().current.as_mut().unwrap();
                c.last_used = now;
                if refresh_ms > 0 && now - c.created_at > refresh_ms && !c.claimed {
                    c.claimed = true;
                    self.due_refresh.push((key, serial));
                }
                if !req.counted {
                    self.counts.hits += 1;
                }
                self.serve(req.caller, key, req.hash, serial);
                return;
            }
            Some((_, Some(cause))) => {
                let join = self.keys[key]
                    .build
                    .as_ref()
                    .is_some_and(|b| b.hash == req.hash && b.stale.is_none());
                self.retire_current_keeping(key, cause, join);
            }
            None => {}
        }
        if !req.counted {
            self.counts.misses += 1;
        }
        let k = self.keys.get_mut(key).unwrap();
        match k.build.as_mut() {
            Some(b) if b.hash == req.hash && b.stale.is_none() => b.waiters.push(req),
            Some(_) => k.queued.push_back(req),
            None => self.start_build(key, req),
        }
    }

    fn start_build(&mut self, key: &'static str, req: Req) {
        let call = self.calls.entry(key).or_default();
        let index = *call;
        *call += 1;
        let finish_at = self.now
            + match req.build {
                Build::Ok | Build::Err | Build::Panic => 0,
                Build::OkAfter1s => 1_000,
                Build::OkAfter2s => 2_000,
                Build::Hang => self.cfg.create_timeout_ms,
            };
        self.keys.get_mut(key).unwrap().build = Some(BuildInFlight {
            hash: req.hash,
            build: req.build,
            waiters: vec![req],
            stale: None,
            finish_at,
            call: index,
            refresh: None,
        });
    }

    /// Finishes every build due now (a finished build may start the next at once).
    fn run_due(&mut self, serials: &impl Serials) {
        loop {
            let now = self.now;
            let mut due: Vec<&'static str> = self
                .keys
                .iter()
                .filter(|(_, k)| k.build.as_ref().is_some_and(|b| b.finish_at <= now))
                .map(|(name, _)| *name)
                .collect();
            due.sort_unstable();
            let Some(&key) = due.first() else {
                self.ask_due_refreshes(serials);
                if self.fallbacks.is_empty() {
                    return;
                }
                for (caller, key, hash, build) in std::mem::take(&mut self.fallbacks) {
                    self.route(key);
                    self.request(
                        key,
                        Req {
                            caller,
                            hash,
                            build,
                            counted: true,
                        },
                    );
                    self.report(key);
                }
                continue;
            };
            self.build_done(serials, key);
            self.report(key);
        }
    }

    fn build_done(&mut self, serials: &impl Serials, key: &'static str) {
        let now = self.now;
        let b = self.keys.get_mut(key).unwrap().build.take().unwrap();
        let serial = if b.build.succeeds() {
            self.counts.builds += 1;
            let serial = serials
                .serial_of(key, b.call)
                .unwrap_or_else(|| panic!("the pool never made factory call {} for `{key}`", b.call));
            self.instances.insert(
                serial,
                Instance {
                    key,
                    hash: b.hash,
                    retired: false,
                    refreshed: false,
                    disposed_at: None,
                },
            );
            Some(serial)
        } else {
            self.counts.build_failures += 1;
            None
        };
        let has_caller = b.refresh.as_ref().is_some_and(|r| r.has_caller);
        if let Some(cause) = b.stale {
            if let Some(serial) = serial {
                self.retire_serial(serial, cause);
            }
            if has_caller {
                self.refresher = Refresher::Done(false);
            }
            let k = self.keys.get_mut(key).unwrap();
            for req in b.waiters.into_iter().rev() {
                k.queued.push_front(req);
            }
        } else {
            match serial {
                Some(serial) => {
                    for w in &b.waiters {
                        self.serve(w.caller, key, b.hash, serial);
                    }
                    let expires_at = (self.cfg.ttl_ms > 0).then(|| now + self.cfg.ttl_ms);
                    let k = self.keys.get_mut(key).unwrap();
                    let replaced = match (&b.refresh, &k.current) {
                        (Some(r), Some(c)) if c.serial == r.replaces => k.current.take(),
                        _ => None,
                    };
                    k.current = Some(Current {
                        serial,
                        hash: b.hash,
                        expires_at,
                        last_used: now,
                        build: Some(b.build),
                        created_at: now,
                        claimed: false,
                    });
                    if let Some(old) = replaced {
                        self.retire_serial(old.serial, RetireCause::Refreshed);
                        self.counts.refreshes += 1;
                    }
                    if has_caller {
                        self.refresher = Refresher::Done(true);
                    }
                }
                None => {
                    let kind = match b.build {
                        Build::Err => ErrKind::Factory,
                        Build::Panic => ErrKind::Panicked,
                        Build::Hang => ErrKind::Timeout,
                        _ => unreachable!(),
                    };
                    for w in &b.waiters {
                        self.fail(w.caller, kind);
                    }
                }
            }
        }
        // Drain the queue: each request is handled until one starts a build.
        while self.keys[key].build.is_none() {
            let Some(req) = self.keys.get_mut(key).unwrap().queued.pop_front() else {
                break;
            };
            self.request(key, req);
        }
    }

    /// The key's handling of a retire message; returns whether anything was retired.
    fn retire(&mut self, key: &'static str, cause: RetireCause, generation: Option<u64>) -> bool {
        let mut retired = false;
        if let Some(cur) = self.keys[key].current.as_ref() {
            let same = generation.is_none_or(|g| g == cur.serial);
            let due = match cause {
                RetireCause::Ttl | RetireCause::Idle => self.check(cur, cur.hash).is_some(),
                _ => true,
            };
            if same && due {
                self.retire_current(key, cause);
                retired = true;
            }
        }
        if generation.is_none()
            && let Some(b) = self.keys.get_mut(key).unwrap().build.as_mut()
        {
            b.stale.get_or_insert(cause);
            retired = true;
        }
        retired
    }
}
