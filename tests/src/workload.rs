//! The client workload of the nemesis suite: concurrent clients reading and
//! writing over HTTP through any member, recording what they saw.
//!
//! Two kinds of keys:
//! - *registers* (`r<epoch>-<k>`): a few keys put, deleted and read
//!   (linearizably) by every client; every operation goes into the
//!   [`History`] that porcupine checks. The key set changes every epoch so
//!   that a write of unknown outcome, which stays open until the end of the
//!   history, keeps only a bounded stretch of it hard to check.
//! - *acknowledged-write keys* (`a/<client>-<seq>`): written once each; at
//!   the end, every one that was acknowledged must be on every member, and
//!   nothing else may be there.
//!
//! Writes carry an idempotency key (`x-raftkv-client-id`,
//! `x-raftkv-sequence`) and are retried a few times, on other nodes, while
//! their outcome is unknown: a retry answered 200 settles the outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::history::{History, Outcome};
use crate::seed::Rng;

/// The HTTP URLs of the current members; the nemesis changes it as members
/// come and go.
#[derive(Clone, Debug, Default)]
pub struct Endpoints(Arc<RwLock<BTreeMap<u64, String>>>);

impl Endpoints {
    pub fn set(&self, id: u64, url: String) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, url);
    }
    pub fn remove(&self, id: u64) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
    pub fn all(&self) -> Vec<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Tunables of the workload.
#[derive(Clone, Debug)]
pub struct Workload {
    pub clients: usize,
    /// Register keys per epoch.
    pub registers: usize,
    pub epoch: Duration,
    /// Attempts per write (the first and the retries).
    pub attempts: usize,
    pub client_timeout: Duration,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            clients: 6,
            registers: 6,
            epoch: Duration::from_secs(10),
            attempts: 3,
            client_timeout: Duration::from_secs(4),
        }
    }
}

/// What the clients did, for the report and the final checks.
#[derive(Debug, Default)]
pub struct Record {
    pub writes: Counts,
    pub reads: Counts,
    /// Acknowledged-write keys: key → value, of the acknowledged writes.
    pub acked: BTreeMap<String, String>,
    /// Acknowledged-write keys whose write's outcome is unknown.
    pub maybe: BTreeMap<String, String>,
    /// Every register key used.
    pub registers: BTreeSet<String>,
}

/// Operations by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

impl Counts {
    fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Ok => self.ok += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }
    pub fn total(&self) -> u64 {
        self.ok + self.failed + self.unknown
    }
}

/// Running clients; [`Running::stop`] ends them and returns the record.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Asks the clients to stop, waits for their last operations.
    pub async fn stop(self) -> Record {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *self.record.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Workload {
    /// Starts the clients. Each draws from its own generator forked from
    /// `rng`.
    pub fn start(&self, rng: &mut Rng, endpoints: Endpoints, history: History) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record::default()));
        let tasks = (0..self.clients)
            .map(|id| {
                let client = Client {
                    id,
                    rng: rng.fork(),
                    cfg: self.clone(),
                    endpoints: endpoints.clone(),
                    history: history.clone(),
                    record: record.clone(),
                    http: reqwest::Client::builder()
                        .timeout(self.client_timeout)
                        .build()
                        .unwrap_or_default(),
                    seq: 0,
                    started: Instant::now(),
                };
                tokio::spawn(client.run(stop.clone()))
            })
            .collect();
        Running {
            stop,
            record,
            tasks,
        }
    }
}

struct Client {
    id: usize,
    rng: Rng,
    cfg: Workload,
    endpoints: Endpoints,
    history: History,
    record: Arc<Mutex<Record>>,
    http: reqwest::Client,
    seq: u64,
    started: Instant,
}

/// What one HTTP attempt at a write came to.
enum Attempt {
    Done,
    /// Never reached a node: it cannot take effect.
    NotSent,
    Unknown(String),
}

impl Client {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            let epoch = self.started.elapsed().as_millis() / self.cfg.epoch.as_millis().max(1);
            let register = format!("r{epoch}-{}", self.rng.below(self.cfg.registers as u64));
            match self.rng.below(100) {
                0..40 => {
                    let value = format!("c{}-{}", self.id, self.seq + 1);
                    let call = self.history.now();
                    let o = self.write(&register, Some(&value)).await;
                    self.history
                        .write(self.id, &register, Some(&value), call, &o);
                    self.note_write(&register, &o);
                }
                40..48 => {
                    let call = self.history.now();
                    let o = self.write(&register, None).await;
                    self.history.write(self.id, &register, None, call, &o);
                    self.note_write(&register, &o);
                }
                48..85 => {
                    let call = self.history.now();
                    let o = match self.read(&register).await {
                        Some(value) => {
                            self.history
                                .read(self.id, &register, value.as_deref(), call);
                            Outcome::Ok
                        }
                        None => Outcome::Failed,
                    };
                    self.lock().reads.add(&o);
                }
                _ => {
                    let key = format!("a/{}-{}", self.id, self.seq + 1);
                    let value = format!("v{}", self.seq + 1);
                    let o = self.write(&key, Some(&value)).await;
                    let mut rec = self.lock();
                    rec.writes.add(&o);
                    match o {
                        Outcome::Ok => rec.acked.insert(key, value),
                        Outcome::Unknown => rec.maybe.insert(key, value),
                        Outcome::Failed => None,
                    };
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_write(&self, register: &str, o: &Outcome) {
        let mut rec = self.lock();
        rec.writes.add(o);
        rec.registers.insert(register.to_string());
    }

    fn endpoint(&mut self) -> Option<String> {
        let all = self.endpoints.all();
        (!all.is_empty()).then(|| all[self.rng.below(all.len() as u64) as usize].clone())
    }

    /// A put (`Some(value)`) or delete, retried with the same idempotency
    /// key while its outcome is unknown.
    async fn write(&mut self, key: &str, value: Option<&str>) -> Outcome {
        self.seq += 1;
        let mut outcome = Outcome::Failed;
        for _ in 0..self.cfg.attempts {
            let Some(node) = self.endpoint() else {
                break;
            };
            match self.attempt(&node, key, value).await {
                Attempt::Done => return Outcome::Ok,
                Attempt::NotSent => {}
                Attempt::Unknown(why) => {
                    if std::env::var_os("RAFTKV_NEMESIS_VERBOSE").is_some() {
                        eprintln!("client {}: {key} via {node}: {why}", self.id);
                    }
                    outcome = Outcome::Unknown;
                }
            }
        }
        outcome
    }

    async fn attempt(&self, node: &str, key: &str, value: Option<&str>) -> Attempt {
        let url = format!("{node}/v1/kv/{key}");
        let req = match value {
            Some(v) => self.http.put(&url).body(v.to_string()),
            None => self.http.delete(&url),
        }
        .header("x-raftkv-client-id", (self.id + 1).to_string())
        .header("x-raftkv-sequence", self.seq.to_string());
        match req.send().await {
            Err(e) if e.is_connect() => Attempt::NotSent,
            Err(e) => Attempt::Unknown(e.to_string()),
            Ok(r) if r.status() == 200 => Attempt::Done,
            Ok(r) => Attempt::Unknown(format!(
                "{} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
        }
    }

    /// A linearizable read: `Some(Some(v))` found, `Some(None)` absent,
    /// `None` failed.
    async fn read(&mut self, key: &str) -> Option<Option<String>> {
        let node = self.endpoint()?;
        let r = self
            .http
            .get(format!("{node}/v1/kv/{key}"))
            .send()
            .await
            .ok()?;
        match r.status().as_u16() {
            200 => Some(Some(
                String::from_utf8_lossy(&r.bytes().await.ok()?).into_owned(),
            )),
            404 => Some(None),
            _ => None,
        }
    }
}
