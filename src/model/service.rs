//! Services: settings shared by several routes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::check::{self, opt, Checked};
use super::upstream::Upstream;
use super::Id;

/// A service (APISIX's service object). Route fields win over the
/// service's; plugins merge with the route's taking precedence; a route
/// without hosts inherits the service's `hosts`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::admin::openapi::Plugins>)]
    pub plugins: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_websocket: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

const FIELDS: &[&str] = &[
    "id",
    "name",
    "desc",
    "labels",
    "plugins",
    "upstream",
    "upstream_id",
    "enable_websocket",
    "hosts",
    "create_time",
    "update_time",
];

impl Service {
    /// Validates `v` with APISIX's messages and builds the typed form.
    pub fn from_value(v: &Value) -> Checked<Service> {
        let obj = check::object(v)?;
        check::known_fields(obj, FIELDS)?;
        opt(obj, "id", check::id)?;
        opt(obj, "name", |v| check::string(v, 1, 256))?;
        opt(obj, "desc", |v| check::string(v, 0, 256))?;
        opt(obj, "labels", check::labels)?;
        opt(obj, "plugins", check::object)?;
        opt(obj, "upstream", Upstream::from_value)?;
        opt(obj, "upstream_id", check::id)?;
        opt(obj, "enable_websocket", check::boolean)?;
        opt(obj, "hosts", |v| check::array(v, 1, true, check::host))?;
        opt(obj, "create_time", check::integer)?;
        opt(obj, "update_time", check::integer)?;
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())
    }
}
