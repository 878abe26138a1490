//! The plugin registry: each plugin's name, configuration check and
//! constructor. Routes and services carry `"plugins": {"<name>": {…}}`;
//! configurations are checked at write time so the proxy only ever builds
//! plugins from valid ones.

use serde_json::Value;

use crate::model::check::{self, Checked};

/// One registered plugin kind.
pub struct PluginKind {
    pub name: &'static str,
    /// Checks a configuration, answering in APISIX's words.
    pub check: fn(&Value) -> Checked,
}

/// Every plugin this build knows.
// TODO: no plugin is registered yet; openid-connect and cors come next.
pub const REGISTRY: &[PluginKind] = &[];

pub fn find(name: &str) -> Option<&'static PluginKind> {
    REGISTRY.iter().find(|p| p.name == name)
}

/// Checks a `plugins` object: every name known, every configuration valid.
pub fn check_plugins(v: &Value) -> Checked {
    for (name, conf) in check::object(v)? {
        let kind = find(name).ok_or_else(|| format!("unknown plugin [{name}]"))?;
        (kind.check)(conf)
            .map_err(|e| format!("failed to check the configuration of plugin {name} err: {e}"))?;
    }
    Ok(())
}
