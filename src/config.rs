//! Gateway settings: defaults, a YAML file, environment variables and
//! command-line flags, merged in that order (later wins).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use serde::Deserialize;

pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_PROXY_LISTEN: &str = "0.0.0.0:9080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9180";
/// Loopback only: the admin plane is never reachable from elsewhere unless
/// the operator lists more networks.
pub const DEFAULT_ALLOW_ADMIN: &[&str] = &["127.0.0.0/8", "::1/128"];
/// Admin keys shorter than this are refused at start.
pub const MIN_ADMIN_KEY_LEN: usize = 16;
/// Keys published in APISIX's documentation and tests; scanners try them.
pub const WELL_KNOWN_ADMIN_KEYS: &[&str] = &[
    "edd1c9f034335f136f87ad84b625c8f1",
    "4054f7cf07e344346cd3f287985e76a2",
];

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "API gateway with OpenID Connect"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// YAML configuration file.
    #[arg(long, env = "PORTCULLIS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory of the embedded store.
    #[arg(long, env = "PORTCULLIS_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Address of the proxy listener.
    #[arg(long, env = "PORTCULLIS_PROXY_LISTEN", global = true)]
    pub proxy_listen: Option<String>,
    /// Address of the admin listener.
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<String>,
    /// Networks allowed to reach the admin listener, comma-separated CIDRs.
    #[arg(
        long,
        env = "PORTCULLIS_ALLOW_ADMIN",
        value_delimiter = ',',
        global = true
    )]
    pub allow_admin: Option<Vec<String>>,
    /// Peers whose X-Forwarded-* headers are trusted, comma-separated CIDRs.
    #[arg(
        long,
        env = "PORTCULLIS_TRUSTED_ADDRESSES",
        value_delimiter = ',',
        global = true
    )]
    pub trusted_addresses: Option<Vec<String>>,
    /// Log format.
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Proxy worker threads (default: one per core).
    #[arg(long, env = "PORTCULLIS_WORKERS", global = true)]
    pub workers: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Print the Admin API's OpenAPI document and exit.
    Openapi,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// The file form; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    proxy_listen: Option<String>,
    admin_listen: Option<String>,
    admin_key: Option<String>,
    allow_admin: Option<Vec<String>>,
    trusted_addresses: Option<Vec<String>>,
    log_format: Option<LogFormat>,
    workers: Option<usize>,
}

/// The merged, validated settings the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub proxy_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Plain admin key from `PORTCULLIS_ADMIN_KEY` or the file; `None` means
    /// use the stored hash, or generate a key on first start.
    pub admin_key: Option<String>,
    pub allow_admin: Vec<IpNet>,
    pub trusted_addresses: Vec<IpNet>,
    pub log_format: LogFormat,
    pub workers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "the admin key is empty; set PORTCULLIS_ADMIN_KEY (or admin_key in the config file) \
         to a secret of at least {MIN_ADMIN_KEY_LEN} characters, or unset it to have one \
         generated"
    )]
    EmptyAdminKey,
    #[error("the admin key is shorter than {MIN_ADMIN_KEY_LEN} characters")]
    ShortAdminKey,
    #[error("the admin key is a well-known published key; choose a secret of your own")]
    WellKnownAdminKey,
}

impl Config {
    /// Merges the file named by `cli.config` under the flags and
    /// environment already parsed into `cli`; `admin_key_env` is the value
    /// of `PORTCULLIS_ADMIN_KEY`, if set.
    pub fn load(cli: &Cli, admin_key_env: Option<String>) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let admin_key = admin_key_env.or(file.admin_key);
        if let Some(key) = &admin_key {
            check_admin_key(key)?;
        }
        let allow_admin = cli.allow_admin.clone().or(file.allow_admin);
        let trusted = cli.trusted_addresses.clone().or(file.trusted_addresses);
        Ok(Config {
            data_dir: cli
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            proxy_listen: parse_addr(
                "proxy_listen",
                cli.proxy_listen.as_deref(),
                file.proxy_listen.as_deref(),
                DEFAULT_PROXY_LISTEN,
            )?,
            admin_listen: parse_addr(
                "admin_listen",
                cli.admin_listen.as_deref(),
                file.admin_listen.as_deref(),
                DEFAULT_ADMIN_LISTEN,
            )?,
            admin_key,
            allow_admin: match allow_admin {
                Some(list) => parse_nets("allow_admin", &list)?,
                None => DEFAULT_ALLOW_ADMIN
                    .iter()
                    .map(|n| n.parse().expect("default network"))
                    .collect(),
            },
            trusted_addresses: parse_nets("trusted_addresses", &trusted.unwrap_or_default())?,
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            workers: cli
                .workers
                .or(file.workers)
                .filter(|w| *w > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

fn check_admin_key(key: &str) -> Result<(), ConfigError> {
    if key.trim().is_empty() {
        return Err(ConfigError::EmptyAdminKey);
    }
    if WELL_KNOWN_ADMIN_KEYS.contains(&key) {
        return Err(ConfigError::WellKnownAdminKey);
    }
    if key.chars().count() < MIN_ADMIN_KEY_LEN {
        return Err(ConfigError::ShortAdminKey);
    }
    Ok(())
}

fn parse_addr(
    field: &'static str,
    flag: Option<&str>,
    file: Option<&str>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let value = flag.or(file).unwrap_or(default);
    value
        .parse()
        .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
            field,
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

/// Parses CIDRs; a bare address means just that host.
pub fn parse_nets(field: &'static str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            parse_net(s).ok_or_else(|| ConfigError::Invalid {
                field,
                value: s.to_owned(),
                reason: "expected an IP address or CIDR".into(),
            })
        })
        .collect()
}

/// `10.0.0.0/8`, `::1/128` or a bare address.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("portcullis").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_loopback_admin_and_public_proxy() {
        let c = Config::load(&cli(&[]), None).unwrap();
        assert_eq!(c.proxy_listen.to_string(), DEFAULT_PROXY_LISTEN);
        assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.allow_admin.len(), 2);
        assert!(c.admin_key.is_none());
    }

    #[test]
    fn weak_keys_are_refused() {
        let c = cli(&[]);
        assert!(matches!(
            Config::load(&c, Some(String::new())),
            Err(ConfigError::EmptyAdminKey)
        ));
        assert!(matches!(
            Config::load(&c, Some("   ".into())),
            Err(ConfigError::EmptyAdminKey)
        ));
        assert!(matches!(
            Config::load(&c, Some("edd1c9f034335f136f87ad84b625c8f1".into())),
            Err(ConfigError::WellKnownAdminKey)
        ));
        assert!(matches!(
            Config::load(&c, Some("short".into())),
            Err(ConfigError::ShortAdminKey)
        ));
    }

    #[test]
    fn flag_beats_file() {
        let dir = std::env::temp_dir().join(format!("pc-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yaml");
        std::fs::write(
            &file,
            "proxy_listen: 127.0.0.1:1\nadmin_listen: 127.0.0.1:2\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = Config::load(
            &cli(&["--config", f, "--proxy-listen", "127.0.0.1:3"]),
            None,
        )
        .unwrap();
        assert_eq!(c.proxy_listen.port(), 3);
        assert_eq!(c.admin_listen.port(), 2);
        std::fs::write(&file, "bogus: 1\n").unwrap();
        let err = Config::load(&cli(&["--config", f]), None).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
