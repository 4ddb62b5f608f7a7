//! The PostgreSQL store: the store's metadata and its initialisation. Snapshots are taken with
//! PostgreSQL's own tools (`pg_dump`), which see every node's writes.

use super::*;

impl MetaStore for PgStore {
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_one(|tx| {
            tx.opt("SELECT value FROM meta WHERE key = $1", &[&key])?
                .map(|r| get(&r, 0))
                .transpose()
        })
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let written = self.write_guarded(|tx| {
            tx.exec(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )?;
            let written = meta_as_written(tx, key, value)?;
            bump_epoch(tx)?;
            Ok(written)
        })?;
        self.meta_kept(key, value, &written)
    }

    fn replace_meta(&self, key: &str, prev: Option<&[u8]>, next: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            let stored: Option<Vec<u8>> = tx
                .opt("SELECT value FROM meta WHERE key = $1 FOR UPDATE", &[&key])?
                .map(|r| get(&r, 0))
                .transpose()?;
            if stored.as_deref() != prev {
                return Err(StoreError::Stale(format!("metadata `{key}`")));
            }
            tx.exec(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &next],
            )?;
            let written = meta_as_written(tx, key, next)?;
            bump_epoch(tx)?;
            Ok(written)
        })
        .and_then(|written| self.meta_kept(key, next, &written))
    }

    fn change_epoch(&self) -> Result<Option<i64>, StoreError> {
        self.with_conn(|c| {
            let row = c
                .client
                .query_one("SELECT n FROM kluis_epoch", &[])
                .map_err(db)?;
            Ok(Some(get(&row, 0)?))
        })
    }

    fn shared_state(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        // One statement: the epoch and the rows it announces, as of one snapshot. A row's
        // `xmin` (the transaction that wrote it) moves with every insert or update, so the
        // rows are named by it, not read whole (the token register and the policy set are large).
        self.with_conn(|c| {
            let row = c
                .client
                .query_one(
                    "SELECT (SELECT n FROM kluis_epoch),
                            sha256(convert_to(
                                coalesce((SELECT string_agg(m.key || '@' || m.xmin::TEXT, ';'
                                                            ORDER BY m.key)
                                          FROM meta m), '')
                                || '|' ||
                                coalesce((SELECT string_agg(p.purpose || '/' || p.version
                                                            || '@' || p.xmin::TEXT, ';'
                                                            ORDER BY p.purpose, p.version)
                                          FROM purpose_keys p), ''),
                                'UTF8'))",
                    &[],
                )
                .map_err(db)?;
            Ok(Some((get(&row, 0)?, get(&row, 1)?)))
        })
    }

    fn lease(&self, name: &str) -> Result<(Option<LeaseRow>, i64), StoreError> {
        // The database's clock decides, so nodes with skewed clocks agree on expiry.
        self.with_conn(|c| {
            let row = c
                .client
                .query_one(
                    "SELECT extract(epoch FROM clock_timestamp())::BIGINT, l.holder, l.until,
                            coalesce(l.mac, ''::BYTEA)
                     FROM (SELECT 1) AS one LEFT JOIN leases l ON l.name = $1",
                    &[&name],
                )
                .map_err(db)?;
            let now: i64 = get(&row, 0)?;
            let holder: Option<String> = get(&row, 1)?;
            let lease = match holder {
                Some(holder) => Some(LeaseRow {
                    name: name.to_owned(),
                    holder,
                    until: get(&row, 2)?,
                    // A row of a store from before leases were authenticated has none.
                    mac: get(&row, 3)?,
                }),
                None => None,
            };
            Ok((lease, now))
        })
    }

    fn replace_lease(&self, prev: Option<&LeaseRow>, next: &LeaseRow) -> Result<bool, StoreError> {
        self.write_guarded(|tx| {
            let changed = match prev {
                None => tx.exec(
                    "INSERT INTO leases (name, holder, until, mac) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (name) DO NOTHING",
                    &[&next.name, &next.holder, &next.until, &next.mac],
                )?,
                // Compared as read (a row of an older store has no MAC).
                Some(prev) => tx.exec(
                    "UPDATE leases SET holder = $2, until = $3, mac = $4
                     WHERE name = $1 AND holder = $5 AND until = $6
                       AND coalesce(mac, ''::BYTEA) = $7",
                    &[
                        &next.name,
                        &next.holder,
                        &next.until,
                        &next.mac,
                        &prev.holder,
                        &prev.until,
                        &prev.mac,
                    ],
                )?,
            };
            Ok(changed == 1)
        })
    }

    fn clear_leases(&self) -> Result<(), StoreError> {
        // Other nodes may hold leases: they expire by themselves.
        Err(StoreError::Unsupported(
            "the leases of a shared store expire by themselves".into(),
        ))
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.write_guarded(|tx| {
            tx.exec(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )?;
            Ok(())
        })
    }

    fn initialize(
        &self,
        meta: &[(&str, Vec<u8>)],
        purpose_keys: &[PurposeKeyRow],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            // Two nodes initialising an empty database at once: one waits for the other and
            // then finds it initialised.
            tx.exec("LOCK TABLE meta IN EXCLUSIVE MODE", &[])?;
            if tx.count("SELECT count(*) FROM meta", &[])? > 0 {
                return Err(StoreError::AlreadyInitialized);
            }
            for (key, value) in meta {
                tx.exec(
                    "INSERT INTO meta (key, value) VALUES ($1, $2)",
                    &[key, value],
                )?;
            }
            for k in purpose_keys {
                insert_purpose_key(tx, k)?;
            }
            Ok(())
        })
    }

    fn snapshot(&self) -> Result<crate::store::Snapshot, StoreError> {
        Err(StoreError::Unsupported(format!(
            "a PostgreSQL store is backed up with PostgreSQL's own tools: run `pg_dump \
             --format=custom` against {} (see the README, \"Backup and restore\")",
            self.target
        )))
    }
}

/// The metadata row `key` as this transaction left it: `value`, or `NotKept` when a trigger or
/// rule of the database changed or kept back what was written. Returns the row version's
/// `xmin` (this transaction's id), for `PgStore::meta_kept`.
fn meta_as_written(tx: &mut Tx<'_>, key: &str, value: &[u8]) -> Result<String, StoreError> {
    let row = tx.opt("SELECT value, xmin::TEXT FROM meta WHERE key = $1", &[&key])?;
    match row {
        Some(row) if get::<Vec<u8>>(&row, 0)? == value => get(&row, 1),
        _ => Err(not_kept(key)),
    }
}

fn not_kept(key: &str) -> StoreError {
    tracing::error!(
        key,
        "the database did not keep the metadata kluis wrote (a trigger or rule on `meta`?); \
         the change is refused. Look for them: `SELECT tgname FROM pg_trigger WHERE tgrelid = \
         'meta'::regclass AND NOT tgisinternal` and `SELECT rulename FROM pg_rules WHERE \
         tablename = 'meta'`"
    );
    StoreError::NotKept(format!("the metadata `{key}` as written"))
}

impl PgStore {
    /// After the commit: the row `key` is still `value`, unless a later transaction wrote it
    /// (its `xmin` is not `written`'s). A trigger deferred to the commit that changed it in the
    /// writing transaction itself is caught here.
    fn meta_kept(&self, key: &str, value: &[u8], written: &str) -> Result<(), StoreError> {
        let row = self
            .read_one(|tx| tx.opt("SELECT value, xmin::TEXT FROM meta WHERE key = $1", &[&key]))?;
        match row {
            Some(row) if get::<String>(&row, 1)? != written => Ok(()),
            Some(row) if get::<Vec<u8>>(&row, 0)? == value => Ok(()),
            _ => Err(not_kept(key)),
        }
    }
}
