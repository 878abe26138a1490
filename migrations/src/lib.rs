//! Store format versions of Portcullis.
//!
//! Every store records the version of its on-disk format under
//! [`FORMAT_VERSION_KEY`] in the default tree. Opening a store runs the steps
//! from its recorded version up to [`CURRENT`], one module per step, and
//! refuses a store written by a newer build: a downgrade would silently
//! misread data it does not know.
#![forbid(unsafe_code)]

mod v1;

/// The format this build writes.
pub const CURRENT: u32 = 1;

/// Where the format version lives in sled's default tree.
pub const FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// Why a store could not be brought to the current format.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "the data directory was written by a newer Portcullis (store format {found}); \
         this build understands formats up to {CURRENT}: upgrade Portcullis or use another \
         data directory"
    )]
    NewerFormat { found: u32 },
    #[error("the store format version is unreadable ({0:?}); the data directory may be damaged")]
    Unreadable(Vec<u8>),
    #[error("store error during migration: {0}")]
    Store(#[from] sled::Error),
}

/// One step from `from` to `from + 1`.
struct Step {
    from: u32,
    run: fn(&sled::Db) -> Result<(), MigrationError>,
}

/// The steps in order. A new format adds a module and a line here.
const STEPS: &[Step] = &[Step {
    from: 0,
    run: v1::upgrade,
}];

/// The version recorded in `db`, or 0 for a store that has never been
/// stamped (a brand-new, empty one).
pub fn recorded_version(db: &sled::Db) -> Result<u32, MigrationError> {
    match db.get(FORMAT_VERSION_KEY)? {
        None => Ok(0),
        Some(raw) => {
            let bytes: [u8; 4] = raw
                .as_ref()
                .try_into()
                .map_err(|_| MigrationError::Unreadable(raw.to_vec()))?;
            Ok(u32::from_be_bytes(bytes))
        }
    }
}

/// Brings `db` to [`CURRENT`], returning the version it had before.
pub fn migrate(db: &sled::Db) -> Result<u32, MigrationError> {
    let found = recorded_version(db)?;
    if found > CURRENT {
        return Err(MigrationError::NewerFormat { found });
    }
    for step in STEPS.iter().filter(|s| s.from >= found) {
        (step.run)(db)?;
        db.insert(FORMAT_VERSION_KEY, &(step.from + 1).to_be_bytes())?;
        db.flush()?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> sled::Db {
        sled::Config::new()
            .temporary(true)
            .open()
            .expect("temporary sled")
    }

    #[test]
    fn new_store_is_stamped_with_current_version() {
        let db = temp_db();
        assert_eq!(migrate(&db).unwrap(), 0);
        assert_eq!(recorded_version(&db).unwrap(), CURRENT);
        // A second open is a no-op.
        assert_eq!(migrate(&db).unwrap(), CURRENT);
    }

    #[test]
    fn newer_store_is_refused_with_a_clear_message() {
        let db = temp_db();
        db.insert(FORMAT_VERSION_KEY, &(CURRENT + 1).to_be_bytes())
            .unwrap();
        let err = migrate(&db).unwrap_err();
        assert!(matches!(err, MigrationError::NewerFormat { found } if found == CURRENT + 1));
        assert!(err.to_string().contains("newer Portcullis"), "{err}");
    }

    #[test]
    fn damaged_version_is_refused() {
        let db = temp_db();
        db.insert(FORMAT_VERSION_KEY, b"x".as_ref()).unwrap();
        assert!(matches!(
            migrate(&db).unwrap_err(),
            MigrationError::Unreadable(_)
        ));
    }
}
