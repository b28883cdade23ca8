//! The sandbox records, in an embedded SQLite database shared by every process using the same state
//! directory (CLI invocations, SDK programs, the server), so `list` and `get` survive restarts.

use crate::{Result, SandboxInfo, SandboxState};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

pub(crate) struct Store {
    db: Mutex<Connection>,
}

/// A sandbox row: what `SandboxInfo` shows plus the agent's identity.
pub(crate) struct Record {
    pub info: SandboxInfo,
    pub agent_pid: Option<i32>,
    pub agent_start: Option<u64>,
    /// The agent's protocol version (1 for sandboxes recorded before versions were).
    pub agent_protocol: u32,
}

const COLUMNS: &str = "id, state, image, command, tags, cpus, memory_bytes, pids, lifetime_ms, created_at, \
                       ended_at, exit_code, exit_signal, end_reason, error, agent_pid, agent_start, tenant, request_id, progress, agent_protocol, network";

/// Pages the write-ahead log grows to before it is checkpointed (see [`Store::open`]).
const WAL_PAGES: i64 = 64;

impl Store {
    /// Opens the store. Switching to WAL and creating the schema can meet SQLITE_BUSY without the busy
    /// handler being consulted when several processes open a fresh store at once, so that step is retried.
    pub fn open(path: &Path) -> Result<Self> {
        let mut attempt = 0;
        loop {
            match Self::try_open(path) {
                Err(crate::Error::Store(rusqlite::Error::SqliteFailure(e, _)))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && attempt < 200 =>
                {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn try_open(path: &Path) -> Result<Self> {
        let db = Connection::open(path)?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        // The first process to open the store rebuilds its index of the write-ahead log by reading every frame
        // in it, and the CLI, which opens the store anew for each command, is nearly always that first
        // process. At SQLite's default (a checkpoint at 1,000 pages) that cost a command up to 1.2 ms here
        // (900 frames), 0.6 ms on average; a `hangar run` writes ~8 pages, so checkpointing at WAL_PAGES
        // keeps the read under 0.1 ms, for one checkpoint (two fsyncs of the store's own small files, ~2 ms)
        // per ~8 runs.
        db.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)?;
        db.pragma_update(None, "journal_size_limit", WAL_PAGES * 2 * 4096)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS sandboxes (
                id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                image TEXT NOT NULL,
                command TEXT NOT NULL,
                tags TEXT NOT NULL,
                cpus REAL,
                memory_bytes INTEGER,
                pids INTEGER,
                lifetime_ms INTEGER NOT NULL,
                created_at INTEGER NOT NULL,
                ended_at INTEGER,
                exit_code INTEGER,
                exit_signal INTEGER,
                end_reason TEXT,
                error TEXT,
                agent_pid INTEGER,
                agent_start INTEGER,
                tenant TEXT NOT NULL DEFAULT '',
                request_id TEXT,
                progress TEXT,
                agent_protocol INTEGER,
                network TEXT
            );
            CREATE UNIQUE INDEX IF NOT EXISTS sandboxes_request ON sandboxes (tenant, request_id)
                WHERE request_id IS NOT NULL;
            CREATE INDEX IF NOT EXISTS sandboxes_created ON sandboxes (created_at, id);",
        )?;
        // Stores made before protocol versions existed lack the column; their agents speak version 1.
        let has_protocol: bool = db.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('sandboxes') WHERE name = 'agent_protocol'",
            [],
            |r| r.get(0),
        )?;
        if !has_protocol {
            db.execute_batch("ALTER TABLE sandboxes ADD COLUMN agent_protocol INTEGER")?;
        }
        // Stores made before sandboxes had networks lack this one; their sandboxes have loopback only.
        let has_network: bool =
            db.query_row("SELECT COUNT(*) > 0 FROM pragma_table_info('sandboxes') WHERE name = 'network'", [], |r| {
                r.get(0)
            })?;
        if !has_network {
            db.execute_batch("ALTER TABLE sandboxes ADD COLUMN network TEXT")?;
        }
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a statement, parsed once per connection (SQLite's parser was a visible part of every exec's time
    /// in a client: each exec looks its sandbox up).
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
        Ok(self.db().prepare_cached(sql)?.execute(params)?)
    }

    /// The record a query finds, if any (its statement parsed once per connection).
    fn one(&self, sql: &str, params: impl rusqlite::Params) -> Result<Option<Record>> {
        Ok(self.db().prepare_cached(sql)?.query_row(params, row_to_record).optional()?)
    }

    /// Inserts a new record. With a `request_id`, a second insert for the same tenant and request fails with
    /// a constraint violation, which [`Store::by_request`] then resolves to the first sandbox.
    pub fn insert(&self, i: &SandboxInfo, request_id: Option<&str>) -> Result<()> {
        self.exec(
            &format!("INSERT INTO sandboxes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, NULL, NULL, NULL, NULL, NULL, NULL, ?11, ?12, NULL, NULL, ?13)"),
            params![
                i.id,
                i.state.as_str(),
                i.image,
                serde_json::to_string(&i.command).unwrap_or_default(),
                serde_json::to_string(&i.tags).unwrap_or_default(),
                i.cpus,
                i.memory_bytes.map(|v| v as i64),
                i.pids.map(|v| v as i64),
                i.max_lifetime_ms as i64,
                i.created_at_ms as i64,
                i.tenant,
                request_id,
                serde_json::to_string(&i.network).unwrap_or_default(),
            ],
        )?;
        Ok(())
    }

    /// Records pull progress (only while the sandbox is still pulling).
    pub fn set_progress(&self, id: &str, progress: &str) -> Result<()> {
        self.exec("UPDATE sandboxes SET progress = ?2 WHERE id = ?1 AND state = 'pulling'", params![id, progress])?;
        Ok(())
    }

    /// The image is resolved: record what it resolved to and move on to building the sandbox.
    pub fn set_creating(&self, id: &str, image: &str, command: &[String]) -> Result<()> {
        self.exec(
            "UPDATE sandboxes SET state = 'creating', progress = NULL, image = ?2, command = ?3 WHERE id = ?1",
            params![id, image, serde_json::to_string(command).unwrap_or_default()],
        )?;
        Ok(())
    }

    pub fn set_running(&self, id: &str, agent_pid: i32, agent_start: u64, agent_protocol: u32) -> Result<()> {
        self.exec(
            "UPDATE sandboxes SET state = 'running', agent_pid = ?2, agent_start = ?3, agent_protocol = ?4 WHERE id = ?1",
            params![id, agent_pid, agent_start as i64, agent_protocol],
        )?;
        Ok(())
    }

    /// Records a running sandbox's new network policy.
    pub fn set_network(&self, id: &str, policy: &hangar_types::NetworkPolicy) -> Result<()> {
        let json = serde_json::to_string(policy).unwrap_or_default();
        self.exec("UPDATE sandboxes SET network = ?2 WHERE id = ?1", params![id, json])?;
        Ok(())
    }

    /// Records the end of a sandbox once: returns false when another process already did.
    pub fn set_ended(&self, id: &str, end: &crate::SandboxEnding) -> Result<bool> {
        let n = self.exec(
            "UPDATE sandboxes SET state = ?2, ended_at = ?3, exit_code = ?4, exit_signal = ?5, end_reason = ?6, error = ?7
             WHERE id = ?1 AND state IN ('pulling', 'creating', 'running')",
            params![id, end.state.as_str(), crate::now_ms() as i64, end.code, end.signal, end.reason, end.error],
        )?;
        Ok(n == 1)
    }

    pub fn get(&self, id: &str) -> Result<Option<Record>> {
        self.one(&format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"), [id])
    }

    pub fn by_request(&self, tenant: &str, request_id: &str) -> Result<Option<Record>> {
        self.one(
            &format!("SELECT {COLUMNS} FROM sandboxes WHERE tenant = ?1 AND request_id = ?2"),
            [tenant, request_id],
        )
    }

    pub fn list(&self) -> Result<Vec<Record>> {
        let db = self.db();
        let mut stmt = db.prepare_cached(&format!("SELECT {COLUMNS} FROM sandboxes ORDER BY created_at, id"))?;
        let rows = stmt.query_map([], row_to_record)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The ids of sandboxes that ended before `before_ms`.
    pub fn ended_before(&self, before_ms: u64) -> Result<Vec<String>> {
        let db = self.db();
        let finals = "('completed', 'failed', 'terminated')";
        let mut stmt =
            db.prepare_cached(&format!("SELECT id FROM sandboxes WHERE state IN {finals} AND ended_at < ?1"))?;
        let ids = stmt.query_map([before_ms as i64], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    pub fn delete(&self, id: &str) -> Result<bool> {
        Ok(self.exec("DELETE FROM sandboxes WHERE id = ?1", [id])? == 1)
    }
}

fn row_to_record(r: &Row<'_>) -> rusqlite::Result<Record> {
    let json = |i: usize| -> rusqlite::Result<String> { r.get(i) };
    let command: Vec<String> = serde_json::from_str(&json(3)?).unwrap_or_default();
    let tags: BTreeMap<String, String> = serde_json::from_str(&json(4)?).unwrap_or_default();
    let state: String = r.get(1)?;
    Ok(Record {
        info: SandboxInfo {
            id: r.get(0)?,
            state: SandboxState::parse(&state).unwrap_or(SandboxState::Failed),
            image: r.get(2)?,
            command,
            tags,
            cpus: r.get(5)?,
            memory_bytes: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
            pids: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
            max_lifetime_ms: r.get::<_, i64>(8)? as u64,
            created_at_ms: r.get::<_, i64>(9)? as u64,
            ended_at_ms: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
            exit_code: r.get(11)?,
            exit_signal: r.get(12)?,
            end_reason: r.get(13)?,
            error: r.get(14)?,
            tenant: r.get(17)?,
            progress: r.get(19)?,
            network: r.get::<_, Option<String>>(21)?.and_then(|n| serde_json::from_str(&n).ok()).unwrap_or_default(),
        },
        agent_pid: r.get(15)?,
        agent_start: r.get::<_, Option<i64>>(16)?.map(|v| v as u64),
        agent_protocol: r.get::<_, Option<u32>>(20)?.unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command of the CLI is a new process that reads the store's whole write-ahead log when it opens the
    /// store: however many records change, the log stays short.
    #[test]
    fn the_write_ahead_log_stays_short() {
        let dir = std::env::temp_dir().join(format!("hangar-store-wal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hangar.db");
        let store = Store::open(&path).unwrap();
        let c = hangar_types::SandboxConfig::default();
        let mut largest = 0;
        for n in 0..1000 {
            let info = SandboxInfo::new(format!("sb-{n:016x}"), &c, SandboxState::Creating, None, Default::default());
            store.insert(&info, None).unwrap();
            store.set_running(&info.id, 1, 2, 4).unwrap();
            if n % 2 == 0 {
                store.delete(&info.id).unwrap();
            }
            largest = largest.max(std::fs::metadata(dir.join("hangar.db-wal")).unwrap().len());
        }
        // 64 pages and the transaction that crossed the line, with a frame header each (SQLite's default
        // lets it reach 1,000 pages: 4 MB).
        assert!(largest < 80 * (4096 + 24), "the log reached {largest} bytes");
        assert_eq!(store.list().unwrap().len(), 500);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
