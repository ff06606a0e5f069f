//! Tool-call metering, last-used times and audit rows, aggregated in memory and written
//! in batches by a background task, so that a tool call never waits on a write it does
//! not need. Also answers "how many tool calls has this organization made today" for
//! quotas: the database's count (re-read every few seconds, so other instances' calls
//! are seen) plus this instance's calls not yet written.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::auth::{CredentialKind, Principal};
use crate::storage::{AuditEntry, StorageError, Store, UsageRecord};

const DAY: i64 = 86_400;
/// How stale the database's daily count may get before it is read again.
const QUOTA_REFRESH: Duration = Duration::from_secs(5);
/// Last-used times are kept to the minute: a credential in constant use is written once
/// a minute, not at every flush (10,000 live tokens would otherwise mean 10,000 writes
/// a second).
const LAST_USED_RESOLUTION: i64 = 60;

#[derive(Debug, Clone, PartialEq, Eq)]
struct UsageKey {
    org_id: String,
    user_id: String,
    client_id: String,
    tool: String,
    day: i64,
}

/// A [`UsageKey`] made of borrowed parts: counting a call under a key already pending
/// allocates nothing (the owned key is made only for a new one).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct UsageRef<'a> {
    org_id: &'a str,
    user_id: &'a str,
    client_id: &'a str,
    tool: &'a str,
    day: i64,
}

trait AsUsageRef {
    fn usage_ref(&self) -> UsageRef<'_>;
}

impl AsUsageRef for UsageKey {
    fn usage_ref(&self) -> UsageRef<'_> {
        UsageRef {
            org_id: &self.org_id,
            user_id: &self.user_id,
            client_id: &self.client_id,
            tool: &self.tool,
            day: self.day,
        }
    }
}

impl AsUsageRef for UsageRef<'_> {
    fn usage_ref(&self) -> UsageRef<'_> {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn AsUsageRef + 'a> for UsageKey {
    fn borrow(&self) -> &(dyn AsUsageRef + 'a) {
        self
    }
}

// Owned and borrowed keys hash and compare through the same view, as `Borrow` requires.
impl std::hash::Hash for UsageKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.usage_ref().hash(state);
    }
}

impl std::hash::Hash for dyn AsUsageRef + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.usage_ref().hash(state);
    }
}

impl PartialEq for dyn AsUsageRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.usage_ref() == other.usage_ref()
    }
}

impl Eq for dyn AsUsageRef + '_ {}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    calls: i64,
    errors: i64,
    latency_us: i64,
}

struct QuotaDay {
    day: i64,
    /// The database's count when last read, plus what this instance wrote since.
    base: i64,
    refreshed: Instant,
}

#[derive(Default)]
struct Pending {
    usage: HashMap<UsageKey, Counts>,
    pats: HashMap<String, i64>,
    access_tokens: HashMap<String, i64>,
    audit: Vec<AuditEntry>,
    /// When each credential's last use was last queued; kept across flushes.
    noted: HashMap<String, i64>,
}

/// Queues `credential`'s last use unless one was queued within the resolution.
fn note_use(
    queue: &mut HashMap<String, i64>,
    noted: &mut HashMap<String, i64>,
    credential: &str,
    now: i64,
) {
    if noted
        .get(credential)
        .is_some_and(|at| now - at < LAST_USED_RESOLUTION)
    {
        return;
    }
    noted.insert(credential.to_owned(), now);
    queue.insert(credential.to_owned(), now);
}

#[derive(Default)]
pub struct Meter {
    pending: Mutex<Pending>,
    /// Calls per (organization, day) taken by a flush that has not finished yet: counted
    /// for quotas until the database's count is read again after the write.
    inflight: Mutex<HashMap<(String, i64), i64>>,
    quota: Mutex<HashMap<String, QuotaDay>>,
    /// Bumped after every write, so that a count read from the database while a write
    /// was under way is not cached.
    writes: std::sync::atomic::AtomicU64,
}

/// What one flush wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub usage_rows: usize,
    pub last_used: usize,
    pub audit_rows: usize,
}

impl Meter {
    /// Counts one finished call. Cheap: one short lock, no I/O.
    pub fn record_call(
        &self,
        caller: &Principal,
        tool: &str,
        now: i64,
        is_error: bool,
        latency: Duration,
    ) {
        let day = now.div_euclid(DAY);
        let key = UsageRef {
            org_id: &caller.org_id,
            user_id: &caller.user_id,
            client_id: caller.client_id.as_deref().unwrap_or_default(),
            tool,
            day,
        };
        let latency_us = i64::try_from(latency.as_micros()).unwrap_or(i64::MAX);
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        // Looked up once in the common case (a key already counted in this batch).
        let counts = match p.usage.get_mut(&key as &dyn AsUsageRef) {
            Some(c) => c,
            None => {
                let owned = UsageKey {
                    org_id: key.org_id.to_owned(),
                    user_id: key.user_id.to_owned(),
                    client_id: key.client_id.to_owned(),
                    tool: key.tool.to_owned(),
                    day,
                };
                p.usage.entry(owned).or_default()
            }
        };
        counts.calls += 1;
        counts.errors += i64::from(is_error);
        counts.latency_us = counts.latency_us.saturating_add(latency_us);
        let p = &mut *p;
        match caller.kind {
            CredentialKind::Pat => note_use(&mut p.pats, &mut p.noted, &caller.credential, now),
            CredentialKind::AccessToken => {
                note_use(&mut p.access_tokens, &mut p.noted, &caller.credential, now);
            }
            CredentialKind::Anonymous => {}
        }
    }

    /// Queues an audit row for the next flush.
    pub fn audit(&self, entry: AuditEntry) {
        if let Ok(mut p) = self.pending.lock() {
            p.audit.push(entry);
        }
    }

    /// Tool calls the organization has made today, across instances (other
    /// instances' calls show up within a few seconds of being written).
    pub async fn calls_today(
        &self,
        store: &Store,
        org_id: &str,
        now: i64,
    ) -> Result<i64, StorageError> {
        let day = now.div_euclid(DAY);
        let key = (org_id.to_owned(), day);
        // Pending, then in flight: the same lock order as `flush`, so a call moving from
        // one to the other is counted exactly once.
        let unwritten = |m: &Self| {
            let Ok(p) = m.pending.lock() else { return 0 };
            let pending: i64 = p
                .usage
                .iter()
                .filter(|(k, _)| k.org_id == org_id && k.day == day)
                .map(|(_, c)| c.calls)
                .sum();
            let inflight = m
                .inflight
                .lock()
                .ok()
                .and_then(|f| f.get(&key).copied())
                .unwrap_or(0);
            pending + inflight
        };
        let cached = self.quota.lock().ok().and_then(|q| {
            q.get(org_id)
                .filter(|d| d.day == day && d.refreshed.elapsed() < QUOTA_REFRESH)
                .map(|d| d.base)
        });
        if let Some(base) = cached {
            return Ok(base + unwritten(self));
        }
        let writes = self.writes.load(std::sync::atomic::Ordering::SeqCst);
        let base = store.tool_calls_on_day(org_id, day).await?;
        let unchanged = writes == self.writes.load(std::sync::atomic::Ordering::SeqCst);
        if unchanged && let Ok(mut q) = self.quota.lock() {
            q.insert(
                org_id.to_owned(),
                QuotaDay {
                    day,
                    base,
                    refreshed: Instant::now(),
                },
            );
        }
        Ok(base + unwritten(self))
    }

    /// Writes everything pending. On failure the batch is put back for the next try.
    pub async fn flush(&self, store: &Store) -> Result<Flushed, StorageError> {
        let (taken, unwritten) = match self.pending.lock() {
            Ok(mut p) => {
                let mut taken = std::mem::take(&mut *p);
                let newest = taken.noted.values().copied().max().unwrap_or(0);
                taken
                    .noted
                    .retain(|_, at| newest - *at < LAST_USED_RESOLUTION);
                p.noted = std::mem::take(&mut taken.noted);
                let unwritten = calls_by_org_day(&taken.usage);
                if let Ok(mut f) = self.inflight.lock() {
                    for (k, n) in &unwritten {
                        *f.entry(k.clone()).or_default() += n;
                    }
                }
                (taken, unwritten)
            }
            Err(_) => return Ok(Flushed::default()),
        };
        let mut written = Written::default();
        let result = write(store, &taken, &mut written).await;
        if written.usage {
            self.written(&unwritten);
        }
        match result {
            Ok(done) => Ok(done),
            Err(e) => {
                // Only what did not reach the database goes back, so nothing is counted twice.
                let mut rest = taken;
                if written.usage {
                    rest.usage.clear();
                } else if let Ok(mut f) = self.inflight.lock() {
                    for (k, n) in &unwritten {
                        if let Some(v) = f.get_mut(k) {
                            *v -= n;
                        }
                    }
                    f.retain(|_, v| *v > 0);
                }
                if written.last_used {
                    rest.pats.clear();
                    rest.access_tokens.clear();
                }
                self.put_back(rest);
                Err(e)
            }
        }
    }

    /// These calls are now in the database's count: the cached counts are read again
    /// (before the calls leave `inflight`, so they are never missing from a count).
    fn written(&self, calls: &HashMap<(String, i64), i64>) {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut q) = self.quota.lock() {
            for (org, _) in calls.keys() {
                q.remove(org);
            }
        }
        if let Ok(mut f) = self.inflight.lock() {
            for (k, n) in calls {
                if let Some(v) = f.get_mut(k) {
                    *v -= n;
                }
            }
            f.retain(|_, v| *v > 0);
        }
    }

    fn put_back(&self, taken: Pending) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        for (k, c) in taken.usage {
            let e = p.usage.entry(k).or_default();
            e.calls += c.calls;
            e.errors += c.errors;
            e.latency_us = e.latency_us.saturating_add(c.latency_us);
        }
        for (k, at) in taken.pats {
            let e = p.pats.entry(k).or_insert(at);
            *e = (*e).max(at);
        }
        for (k, at) in taken.access_tokens {
            let e = p.access_tokens.entry(k).or_insert(at);
            *e = (*e).max(at);
        }
        let mut audit = taken.audit;
        audit.append(&mut p.audit);
        p.audit = audit;
    }
}

/// Calls per (organization, day) in a batch of usage, for quotas.
fn calls_by_org_day(usage: &HashMap<UsageKey, Counts>) -> HashMap<(String, i64), i64> {
    let mut out = HashMap::new();
    for (k, c) in usage {
        *out.entry((k.org_id.clone(), k.day)).or_default() += c.calls;
    }
    out
}

#[derive(Default)]
struct Written {
    usage: bool,
    last_used: bool,
}

async fn write(store: &Store, p: &Pending, written: &mut Written) -> Result<Flushed, StorageError> {
    let usage: Vec<UsageRecord> = p
        .usage
        .iter()
        .map(|(k, c)| UsageRecord {
            org_id: k.org_id.clone(),
            user_id: k.user_id.clone(),
            client_id: k.client_id.clone(),
            tool: k.tool.clone(),
            day: k.day,
            calls: c.calls,
            errors: c.errors,
            total_latency_us: c.latency_us,
        })
        .collect();
    if !usage.is_empty() {
        store.record_usage(&usage).await?;
    }
    written.usage = true;
    let pats: Vec<(String, i64)> = p.pats.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let mut families: HashMap<String, i64> = HashMap::new();
    let jtis: Vec<&str> = p.access_tokens.keys().map(String::as_str).collect();
    for (jti, family) in store.families_of_access_tokens(&jtis).await? {
        if let Some(at) = p.access_tokens.get(&jti) {
            let e = families.entry(family).or_insert(*at);
            *e = (*e).max(*at);
        }
    }
    let families: Vec<(String, i64)> = families.into_iter().collect();
    if !pats.is_empty() || !families.is_empty() {
        store.touch_last_used(&pats, &families).await?;
    }
    written.last_used = true;
    if !p.audit.is_empty() {
        store.append_audit_batch(&p.audit).await?;
    }
    Ok(Flushed {
        usage_rows: usage.len(),
        last_used: pats.len() + families.len(),
        audit_rows: p.audit.len(),
    })
}
