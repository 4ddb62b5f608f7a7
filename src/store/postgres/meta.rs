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
        self.write_guarded(|tx| {
            tx.exec(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )?;
            bump_epoch(tx)
        })
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
            bump_epoch(tx)
        })
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

    fn take_lease(&self, name: &str, holder: &str, ttl_secs: i64) -> Result<bool, StoreError> {
        // The database's clock decides, so nodes with skewed clocks agree on expiry.
        self.write_guarded(|tx| {
            let held = tx.opt(
                "INSERT INTO leases (name, holder, until)
                 VALUES ($1, $2, extract(epoch FROM clock_timestamp())::BIGINT + $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                 WHERE leases.until < extract(epoch FROM clock_timestamp())::BIGINT
                    OR leases.holder = excluded.holder
                    OR leases.until > extract(epoch FROM clock_timestamp())::BIGINT + $4
                 RETURNING holder",
                &[&name, &holder, &ttl_secs, &crate::store::MAX_LEASE_SECS],
            )?;
            Ok(held.is_some())
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

    fn snapshot(&self) -> Result<std::fs::File, StoreError> {
        Err(StoreError::Unsupported(format!(
            "a PostgreSQL store is backed up with PostgreSQL's own tools: run `pg_dump \
             --format=custom` against {} (see the README, \"Backup and restore\")",
            self.target
        )))
    }
}
