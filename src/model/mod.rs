//! Resource types of the Admin API, their validation, and where each lives
//! in the store.

pub mod check;
pub mod route;
pub mod service;
pub mod upstream;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

pub use route::Route;
pub use service::Service;
pub use upstream::Upstream;

/// APISIX's id: a string of `[a-zA-Z0-9-_.]{1,64}` or an integer ≥ 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Id {
    Int(u64),
    Str(String),
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Int(n) => write!(f, "{n}"),
            Id::Str(s) => f.write_str(s),
        }
    }
}

/// Connect, send and read timeouts in seconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    pub connect: f64,
    pub send: f64,
    pub read: f64,
}

/// Why an object was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The object itself: reported as `invalid configuration: …`.
    Schema(String),
    /// One plugin's configuration: reported as APISIX does, unprefixed.
    Plugin(String),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Schema(m) => write!(f, "invalid configuration: {m}"),
            Invalid::Plugin(m) => f.write_str(m),
        }
    }
}

/// The resource kinds the Admin API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Route,
    Service,
    Upstream,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Route, Kind::Service, Kind::Upstream];

    /// The path segment: `routes`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Route => "routes",
            Kind::Service => "services",
            Kind::Upstream => "upstreams",
        }
    }

    /// The word used in messages: `route`.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Route => "route",
            Kind::Service => "service",
            Kind::Upstream => "upstream",
        }
    }

    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == s)
    }

    /// The store key prefix: `/apisix/routes/`.
    pub fn prefix(self) -> String {
        format!("/apisix/{}/", self.plural())
    }

    pub fn key(self, id: &str) -> String {
        format!("/apisix/{}/{id}", self.plural())
    }

    /// Validates a whole object of this kind, its plugins included.
    pub fn validate(self, v: &Value) -> Result<(), Invalid> {
        match self {
            Kind::Route => Route::from_value(v).map(drop),
            Kind::Service => Service::from_value(v).map(drop),
            Kind::Upstream => Upstream::from_value(v).map(drop),
        }
        .map_err(Invalid::Schema)?;
        match v.get("plugins") {
            Some(p) => crate::plugins::check_plugins(p).map_err(Invalid::Plugin),
            None => Ok(()),
        }
    }
}
