//! Format 1: the first one.
//!
//! Layout: the default tree holds store metadata (format version, the admin
//! key's argon2 hash). The `config` tree holds one entry per resource under
//! its APISIX key (`/apisix/routes/1`), valued as JSON
//! `{"value":{…},"createdIndex":N,"modifiedIndex":M}`, and the store
//! revision as a big-endian u64 under `#revision`.
//!
//! Nothing existed before format 1, so the step only creates the tree.

use crate::MigrationError;

/// Name of the tree that holds the resources.
pub const CONFIG_TREE: &str = "config";

pub(crate) fn upgrade(db: &sled::Db) -> Result<(), MigrationError> {
    db.open_tree(CONFIG_TREE)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_from_nothing_creates_the_config_tree() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        crate::migrate(&db).unwrap();
        assert!(db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == CONFIG_TREE.as_bytes()));
    }
}
