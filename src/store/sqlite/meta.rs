//! The SQLite store: the store's metadata, its initialisation and online snapshots.

use super::*;

impl MetaStore for SqliteStore {
    /// One file on this machine.
    fn answers_from_local_files(&self) -> bool {
        true
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map_err(db)?;
        Ok(())
    }

    fn structure_problems(&self) -> Result<Vec<String>, StoreError> {
        // A connection of its own: `integrity_check` reads the whole file, and the writer (which
        // `read` may take) must not wait for it.
        let conn = super::open_connection(&self.path, false)?;
        let schema = super::schema_of(&conn).map_err(db)?;
        let mut problems: Vec<String> =
            super::schema_differences(&schema, super::migrated_schema()?)
                .into_iter()
                .map(|(_, what)| what)
                .collect();
        problems.extend(super::integrity_problems(&conn)?);
        Ok(problems)
    }

    fn replace_meta(&self, key: &str, prev: Option<&[u8]>, next: &[u8]) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let stored: Option<Vec<u8>> = tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(db)?;
        if stored.as_deref() != prev {
            return Err(StoreError::Stale(format!("metadata `{key}`")));
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, next],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn change_epoch(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }

    fn lease(&self, name: &str) -> Result<(Option<LeaseRow>, i64), StoreError> {
        let conn = self.write()?;
        let row = conn
            .query_row(
                "SELECT holder, until, coalesce(mac, x'') FROM leases WHERE name = ?1",
                [name],
                |r| {
                    Ok(LeaseRow {
                        name: name.to_owned(),
                        holder: r.get(0)?,
                        until: r.get(1)?,
                        // A row of a store from before leases were authenticated has none.
                        mac: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(db)?;
        let now = conn
            .query_row("SELECT CAST(strftime('%s', 'now') AS INTEGER)", [], |r| {
                r.get(0)
            })
            .map_err(db)?;
        Ok((row, now))
    }

    fn replace_lease(&self, prev: Option<&LeaseRow>, next: &LeaseRow) -> Result<bool, StoreError> {
        let conn = self.write()?;
        let changed = match prev {
            None => conn.execute(
                "INSERT INTO leases (name, holder, until, mac) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO NOTHING",
                params![next.name, next.holder, next.until, next.mac],
            ),
            // Compared as read (a row of an older store has no MAC).
            Some(prev) => conn.execute(
                "UPDATE leases SET holder = ?2, until = ?3, mac = ?4
                 WHERE name = ?1 AND holder = ?5 AND until = ?6 AND coalesce(mac, x'') = ?7",
                params![
                    next.name,
                    next.holder,
                    next.until,
                    next.mac,
                    prev.holder,
                    prev.until,
                    prev.mac
                ],
            ),
        }
        .map_err(db)?;
        Ok(changed == 1)
    }

    fn clear_leases(&self) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute("DELETE FROM leases", []).map_err(db)?;
        Ok(())
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let conn = self.write()?;
        conn.execute(
            "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
            params![name, holder],
        )
        .map_err(db)?;
        Ok(())
    }

    fn initialize(
        &self,
        meta: &[(&str, Vec<u8>)],
        purpose_keys: &[PurposeKeyRow],
    ) -> Result<(), StoreError> {
        let mut conn = self.write()?;
        let tx = conn.transaction().map_err(db)?;
        let existing: i64 = tx
            .query_row(
                "SELECT count(*) FROM meta WHERE key <> ?1",
                [super::STORE_MARK],
                |r| r.get(0),
            )
            .map_err(db)?;
        if existing > 0 {
            return Err(StoreError::AlreadyInitialized);
        }
        for (key, value) in meta {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map_err(db)?;
        }
        for k in purpose_keys {
            insert_purpose_key(&tx, k)?;
        }
        tx.commit().map_err(db)
    }

    fn snapshot(&self) -> Result<crate::store::Snapshot, StoreError> {
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        let tmp = dir.join(format!(
            ".backup-{}.db",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        create_private(&tmp)?;
        // The files stay while the snapshot copies their segments in: a backup is one file.
        let result = self.files.pinned(|| {
            let source = open_checked(&self.path, self.opened)?;
            let mut target = Connection::open(&tmp).map_err(db)?;
            // One snapshot of both files, the store's taken first: an entry a writer appends
            // with a write is durable before its write, so the trail holds every write the
            // records hold (and perhaps an entry more, for a write that followed it).
            let read = source.unchecked_transaction().map_err(db)?;
            read.query_row("SELECT 1 FROM store.meta LIMIT 1", [], |_| Ok(()))
                .optional()
                .map_err(db)?;
            // The snapshot's last entry, for the head a restore can be checked against.
            let trail_tail: Option<(u64, Vec<u8>)> = read
                .query_row(
                    "SELECT seq, hash FROM main.audit ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), r.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            {
                let backup =
                    rusqlite::backup::Backup::new_with_names(&source, "store", &mut target, "main")
                        .map_err(db)?;
                // All pages in one step, in the snapshot begun above, while writers go on
                // beside it (WAL).
                match backup.step(-1).map_err(db)? {
                    rusqlite::backup::StepResult::Done => {}
                    _ => {
                        return Err(StoreError::Database(
                            "the database was busy; try the backup again".into(),
                        ));
                    }
                }
            }
            // A backup is one file: the trail's tables go into it as they were in the store's
            // file before they had one of their own, and a restore moves them out again.
            super::audit::copy_trail(&read, &target)?;
            read.finish().map_err(db)?;
            self.segments_into(&target)?;
            target.close().map_err(|(_, e)| db(e))?;
            let file =
                std::fs::File::open(&tmp).map_err(|e| StoreError::Database(e.to_string()))?;
            Ok(crate::store::Snapshot { file, trail_tail })
        });
        // The open file stays readable; nothing of it is left behind in the data directory.
        let _ = std::fs::remove_file(&tmp);
        result
    }
}

impl SqliteStore {
    /// Copies into the snapshot `target` the bytes of every segment it names in a file: the
    /// backup holds them in its rows (`files`).
    fn segments_into(&self, target: &Connection) -> Result<(), StoreError> {
        let named: Vec<(String, i64, i64, i64)> = target
            .prepare(
                "SELECT evidence_id, idx, at, len FROM evidence_segments WHERE at IS NOT NULL
                 ORDER BY evidence_id, idx",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    let len: Option<i64> = r.get(3)?;
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, len.unwrap_or(-1)))
                })?
                .collect()
            })
            .map_err(db)?;
        if named.is_empty() {
            return Ok(());
        }
        let tx = target.unchecked_transaction().map_err(db)?;
        let mut damaged = Vec::new();
        {
            let mut put = tx
                .prepare(
                    "UPDATE evidence_segments SET sealed = ?3, at = NULL, len = NULL
                     WHERE evidence_id = ?1 AND idx = ?2",
                )
                .map_err(db)?;
            for (id, index, at, len) in named {
                match self.files.read(&id, at, len) {
                    Ok(bytes) => {
                        put.execute(params![id, index, bytes]).map_err(db)?;
                    }
                    // A segment whose file is damaged is copied as its row names it: the
                    // restored store's `store verify` names it, as this one's does.
                    Err(StoreError::Corrupt(e)) => damaged.push(e),
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(first) = damaged.first() {
            tracing::warn!(
                segments = damaged.len(),
                first = %first,
                "the backup holds evidence segments as damaged as they are here (`store verify`)"
            );
        }
        tx.commit().map_err(db)
    }
}
