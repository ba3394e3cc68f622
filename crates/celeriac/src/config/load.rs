//! Layering: defaults < code < file < environment < flags, merged by figment.
//!
//! Every source is first read into settings (Celery names, file shapes) and checked for
//! unknown names; figment then merges the layers, remembers which layer gave each value and
//! reports values of the wrong type with that layer. Tables (`task_routes`,
//! `broker_transport_options`) go to figment as lists of `[key, value]` pairs: figment's
//! dictionaries are sorted and merged key by key, but a route table is ordered (first match
//! wins) and a higher layer replaces it whole, as in Celery.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::error::Kind as FigmentErrorKind;
use figment::value::{Dict, Map as ProfileMap, Value as FigmentValue};
use figment::{Figment, Metadata, Profile, Provider};
use serde_json::{Map, Value};

use super::settings::{self, closest_setting, kind_of, settings_of, Extracted, Kind};
use super::Config;

/// Environment variables `CELERIAC_<SETTING>` set settings.
pub(super) const ENV_PREFIX: &str = "CELERIAC_";
/// Names the configuration file when no `--config` flag does.
pub(super) const CONFIG_FILE_ENV: &str = "CELERIAC_CONFIG";
/// The file read from the working directory when it exists and nothing names another.
pub(super) const DEFAULT_CONFIG_FILE: &str = "celeriac.toml";

/// `CELERIAC_*` variables that are not settings, so never "unknown": the loader's own, and
/// the test suites' (`CELERIAC_TEST_REDIS_URL`, `CELERIAC_INTEROP_BROKER`, ...).
const NON_SETTING_VARIABLES: &[&str] = &[CONFIG_FILE_ENV, "CELERIAC_PYTHON"];
const NON_SETTING_PREFIXES: &[&str] = &["CELERIAC_TEST_", "CELERIAC_INTEROP_", "CELERIAC_SQLITE_"];

const DEFAULT_LAYER: &str = "default";
const CODE_LAYER: &str = "code";
const FILE_LAYER: &str = "file";
const ENV_LAYER: &str = "environment";
const FLAG_LAYER: &str = "flags";

/// Where settings come from besides code. Build it from the process
/// ([`ConfigSources::from_process`]) or piece by piece, as tests do.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    file: Option<PathBuf>,
    file_if_present: Option<PathBuf>,
    env: Vec<(String, String)>,
    flags: Vec<Flag>,
}

#[derive(Debug, Clone)]
struct Flag {
    setting: String,
    name: String,
    value: Value,
}

impl ConfigSources {
    /// No file, no environment, no flags.
    pub fn new() -> Self {
        ConfigSources::default()
    }

    /// The process's `CELERIAC_*` variables, and `./celeriac.toml` when it exists (unless
    /// `CELERIAC_CONFIG` or [`file`](Self::file) names another).
    pub fn from_process() -> Self {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        ConfigSources::new()
            .env(env)
            .file_if_present(DEFAULT_CONFIG_FILE)
    }

    /// A configuration file that must exist (`--config FILE`).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// A configuration file read only if it exists.
    pub fn file_if_present(mut self, path: impl Into<PathBuf>) -> Self {
        self.file_if_present = Some(path.into());
        self
    }

    /// Environment variables; only `CELERIAC_*` ones are read.
    pub fn env<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// A command-line flag `flag` (e.g. `--broker`) that set `setting`.
    pub fn flag(mut self, setting: &str, flag: &str, value: impl Into<Value>) -> Self {
        self.flags.push(Flag {
            setting: setting.to_string(),
            name: flag.to_string(),
            value: value.into(),
        });
        self
    }

    /// The file to read, and whether it must exist.
    fn config_file(&self) -> Option<(PathBuf, bool)> {
        if let Some(path) = &self.file {
            return Some((path.clone(), true));
        }
        let named = self
            .env
            .iter()
            .rev()
            .find(|(k, v)| k == CONFIG_FILE_ENV && !v.trim().is_empty());
        if let Some((_, path)) = named {
            return Some((PathBuf::from(path.trim()), true));
        }
        self.file_if_present.clone().map(|p| (p, false))
    }

    fn flag_name(&self, setting: &str) -> String {
        self.flags
            .iter()
            .rev()
            .find(|f| f.setting == setting)
            .map_or_else(|| setting.to_string(), |f| f.name.clone())
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    Default,
    /// What the app's code set (`AppBuilder`).
    Code,
    File(PathBuf),
    /// The environment variable that set it.
    Env(String),
    /// The command-line flag that set it.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::Code => f.write_str("code"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A configuration and where each of its settings came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    config: Config,
    origins: Vec<(&'static str, Origin)>,
}

impl LoadedConfig {
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn into_config(self) -> Config {
        self.config
    }

    /// Where `setting` came from (`None` for a name that is not a setting).
    pub fn origin(&self, setting: &str) -> Option<&Origin> {
        self.origins
            .iter()
            .find(|(name, _)| *name == setting)
            .map(|(_, origin)| origin)
    }
}

/// A configuration source could not be read or holds what no setting accepts.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file or environment variable names no known setting.
    UnknownSetting {
        /// As written: `worker_concurency`, or `CELERIAC_WORKER_CONCURENCY`.
        name: String,
        origin: Origin,
        /// The known name closest to it, written the same way.
        suggestion: Option<String>,
    },
    /// A setting's value has the wrong type or makes no sense.
    InvalidValue {
        setting: String,
        origin: Origin,
        expected: String,
        found: String,
    },
    /// The configuration file is missing, unreadable or not TOML.
    File { path: PathBuf, message: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownSetting {
                name,
                origin,
                suggestion,
            } => {
                match origin {
                    Origin::Env(_) => write!(f, "unknown setting `{name}` in the environment")?,
                    other => write!(f, "unknown setting `{name}` in {other}")?,
                }
                match suggestion {
                    Some(s) => write!(f, ": did you mean `{s}`?"),
                    None => f.write_str(": docs/configuration.md lists the settings"),
                }
            }
            ConfigError::InvalidValue {
                setting,
                origin,
                expected,
                found,
            } => write!(
                f,
                "invalid value for `{setting}` ({origin}): expected {expected}, got {found}"
            ),
            ConfigError::File { path, message } => {
                write!(f, "configuration file {}: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for crate::Error {
    fn from(e: ConfigError) -> Self {
        crate::Error::Config(e.to_string())
    }
}

/// The variable that sets `setting`: `worker_concurrency` → `CELERIAC_WORKER_CONCURRENCY`.
pub(super) fn env_name(setting: &str) -> String {
    format!("{ENV_PREFIX}{}", setting.to_ascii_uppercase())
}

pub(super) fn load(code: &Config, sources: &ConfigSources) -> Result<LoadedConfig, ConfigError> {
    let defaults = settings_of(&Config::default());
    let mut code_settings = settings_of(code);
    code_settings.retain(|name, value| defaults.get(name) != Some(value));

    let mut figment = Figment::new()
        .merge(Layer::new(DEFAULT_LAYER, None, defaults)?)
        .merge(Layer::new(CODE_LAYER, None, code_settings)?);
    if let Some((path, required)) = sources.config_file() {
        if required || path.exists() {
            let file = file_settings(&path)?;
            figment = figment.merge(Layer::new(FILE_LAYER, Some(path), file)?);
        }
    }
    figment = figment
        .merge(Layer::new(ENV_LAYER, None, env_settings(&sources.env)?)?)
        .merge(Layer::new(FLAG_LAYER, None, flag_settings(sources)?)?);

    let origin_of = |setting: &str| match figment.find_metadata(setting) {
        Some(metadata) => origin_from(metadata, setting, sources),
        None => Origin::Default,
    };
    let extracted: Extracted = figment.extract().map_err(|e| {
        let setting = e.path.first().cloned().unwrap_or_default();
        ConfigError::InvalidValue {
            origin: origin_of(&setting),
            expected: kind_of(&setting)
                .map_or("a valid value", Kind::expected)
                .to_string(),
            found: match &e.kind {
                FigmentErrorKind::InvalidType(actual, _)
                | FigmentErrorKind::InvalidValue(actual, _) => actual.to_string(),
                other => other.to_string(),
            },
            setting,
        }
    })?;
    let config = extracted
        .into_config()
        .map_err(|invalid| ConfigError::InvalidValue {
            setting: invalid.setting.to_string(),
            origin: origin_of(invalid.setting),
            expected: invalid.expected,
            found: invalid.found,
        })?;
    let origins = settings::setting_names()
        .map(|name| (name, origin_of(name)))
        .collect();
    Ok(LoadedConfig { config, origins })
}

fn origin_from(metadata: &Metadata, setting: &str, sources: &ConfigSources) -> Origin {
    match metadata.name.as_ref() {
        CODE_LAYER => Origin::Code,
        FILE_LAYER => Origin::File(
            metadata
                .source
                .as_ref()
                .and_then(|s| s.file_path())
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        ),
        ENV_LAYER => Origin::Env(env_name(setting)),
        FLAG_LAYER => Origin::Flag(sources.flag_name(setting)),
        _ => Origin::Default,
    }
}

fn file_settings(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| file_error(e.to_string()))?;
    let Ok(Value::Object(settings)) = serde_json::to_value(table) else {
        return Err(file_error("holds values JSON cannot represent".into()));
    };
    let origin = Origin::File(path.to_path_buf());
    for (name, value) in &settings {
        let Some(kind) = kind_of(name) else {
            return Err(ConfigError::UnknownSetting {
                name: name.clone(),
                origin,
                suggestion: closest_setting(name).map(String::from),
            });
        };
        if kind == Kind::Table && !value.is_object() {
            return Err(invalid(name, origin, kind, value.to_string()));
        }
    }
    Ok(settings)
}

fn env_settings(vars: &[(String, String)]) -> Result<Map<String, Value>, ConfigError> {
    let mut settings = Map::new();
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if NON_SETTING_VARIABLES.contains(&var.as_str())
            || NON_SETTING_PREFIXES.iter().any(|p| var.starts_with(p))
        {
            continue;
        }
        let name = rest.to_ascii_lowercase();
        let origin = Origin::Env(var.clone());
        let Some(kind) = kind_of(&name) else {
            return Err(ConfigError::UnknownSetting {
                name: var.clone(),
                origin,
                suggestion: closest_setting(&name).map(env_name),
            });
        };
        let raw = raw.trim();
        // An empty variable is an unset one, as shells make it easy to write.
        if raw.is_empty() {
            continue;
        }
        let value = env_value(kind, raw).ok_or_else(|| invalid(&name, origin, kind, raw.into()))?;
        settings.insert(name, value);
    }
    Ok(settings)
}

/// An environment string as the kind of value its setting takes.
fn env_value(kind: Kind, raw: &str) -> Option<Value> {
    match kind {
        Kind::Text => Some(raw.into()),
        Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true.into()),
            "false" | "0" | "no" | "off" => Some(false.into()),
            _ => None,
        },
        Kind::Count | Kind::Seconds => serde_json::from_str::<serde_json::Number>(raw)
            .ok()
            .map(Value::Number),
        Kind::Table => serde_json::from_str::<Map<String, Value>>(raw)
            .ok()
            .map(Value::Object),
    }
}

fn flag_settings(sources: &ConfigSources) -> Result<Map<String, Value>, ConfigError> {
    let mut settings = Map::new();
    for flag in &sources.flags {
        if kind_of(&flag.setting).is_none() {
            return Err(ConfigError::UnknownSetting {
                name: flag.setting.clone(),
                origin: Origin::Flag(flag.name.clone()),
                suggestion: closest_setting(&flag.setting).map(String::from),
            });
        }
        settings.insert(flag.setting.clone(), flag.value.clone());
    }
    Ok(settings)
}

fn invalid(setting: &str, origin: Origin, kind: Kind, found: String) -> ConfigError {
    ConfigError::InvalidValue {
        setting: setting.to_string(),
        origin,
        expected: kind.expected().to_string(),
        found,
    }
}

/// One layer of settings, named so figment can say where a value came from.
struct Layer {
    name: &'static str,
    file: Option<PathBuf>,
    dict: Dict,
}

impl Layer {
    fn new(
        name: &'static str,
        file: Option<PathBuf>,
        settings: Map<String, Value>,
    ) -> Result<Layer, ConfigError> {
        let mut dict = Dict::new();
        for (setting, value) in settings {
            let value = match value {
                Value::Object(table) if kind_of(&setting) == Some(Kind::Table) => Value::Array(
                    table
                        .into_iter()
                        .map(|(k, v)| Value::Array(vec![k.into(), v]))
                        .collect(),
                ),
                other => other,
            };
            let value = FigmentValue::serialize(&value).map_err(|e| ConfigError::InvalidValue {
                setting: setting.clone(),
                origin: Origin::Default,
                expected: "a value figment can hold".into(),
                found: e.to_string(),
            })?;
            dict.insert(setting, value);
        }
        Ok(Layer { name, file, dict })
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let metadata = Metadata::named(self.name);
        match &self.file {
            Some(path) => metadata.source(path.as_path()),
            None => metadata,
        }
    }

    fn data(&self) -> Result<ProfileMap<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    const FILE: &str = r#"
broker_url = "redis://file:6379/0"
result_backend = "redis://file:6379/1"
worker_concurrency = 3
worker_prefetch_multiplier = 8
task_default_queue = "from-file"
"#;

    #[test]
    fn flags_beat_env_beat_file_beat_code_beat_defaults() {
        let file = file_with(FILE);
        let code = Config {
            broker_url: Some("redis://code:6379/0".into()),
            result_backend: Some("redis://code:6379/1".into()),
            worker_concurrency: Some(2),
            worker_prefetch_multiplier: 6,
            task_default_queue: "from-code".into(),
            timezone: "Europe/Paris".into(),
            ..Config::default()
        };
        let sources = ConfigSources::new()
            .file(file.path())
            .env([
                ("CELERIAC_BROKER_URL", "redis://env:6379/0"),
                ("CELERIAC_RESULT_BACKEND", "redis://env:6379/1"),
                ("CELERIAC_WORKER_CONCURRENCY", "5"),
                ("PATH", "/bin"),
            ])
            .flag("broker_url", "--broker", "redis://flag:6379/0");
        let loaded = code.load(&sources).unwrap();
        let c = loaded.config();
        assert_eq!(c.broker_url.as_deref(), Some("redis://flag:6379/0"));
        assert_eq!(c.result_backend.as_deref(), Some("redis://env:6379/1"));
        assert_eq!(c.worker_concurrency, Some(5));
        assert_eq!(c.worker_prefetch_multiplier, 8);
        assert_eq!(c.task_default_queue, "from-file");
        assert_eq!(c.timezone, "Europe/Paris");
        assert_eq!(c.worker_shutdown_timeout, Duration::from_secs(30));

        let origin = |s| loaded.origin(s).unwrap().clone();
        assert_eq!(origin("broker_url"), Origin::Flag("--broker".into()));
        assert_eq!(
            origin("result_backend"),
            Origin::Env("CELERIAC_RESULT_BACKEND".into())
        );
        assert_eq!(
            origin("worker_concurrency"),
            Origin::Env("CELERIAC_WORKER_CONCURRENCY".into())
        );
        assert_eq!(
            origin("task_default_queue"),
            Origin::File(file.path().to_path_buf())
        );
        assert_eq!(origin("timezone"), Origin::Code);
        assert_eq!(origin("worker_shutdown_timeout"), Origin::Default);
    }

    #[test]
    fn event_and_remote_control_settings_load_from_the_environment() {
        let sources = ConfigSources::new().env([
            ("CELERIAC_WORKER_SEND_TASK_EVENTS", "true"),
            ("CELERIAC_TASK_SEND_SENT_EVENT", "true"),
            ("CELERIAC_WORKER_ENABLE_REMOTE_CONTROL", "false"),
        ]);
        let loaded = Config::default().load(&sources).unwrap();
        let c = loaded.config();
        assert!(c.worker_send_task_events && c.task_send_sent_event);
        assert!(!c.worker_enable_remote_control);
        let defaults = Config::default();
        assert!(!defaults.worker_send_task_events && defaults.worker_enable_remote_control);
    }

    #[test]
    fn nothing_but_code_leaves_the_code_as_it_is() {
        let code = Config {
            task_routes: vec![("tasks.*".into(), "q".into())],
            result_expires: None,
            worker_concurrency: Some(7),
            ..Config::default()
        };
        let loaded = code.load(&ConfigSources::new()).unwrap();
        assert_eq!(loaded.config(), &code);
        assert_eq!(loaded.origin("task_routes"), Some(&Origin::Code));
        assert_eq!(loaded.origin("broker_url"), Some(&Origin::Default));
        assert_eq!(loaded.origin("no_such_setting"), None);
    }

    #[test]
    fn tables_keep_their_order_and_a_higher_layer_replaces_them() {
        let file = file_with(
            r#"
[task_routes]
"tasks.sleep" = { queue = "slow" }
"tasks.*" = "fast"
"a.first" = "z"

[broker_transport_options]
visibility_timeout = 60
"#,
        );
        let sources = ConfigSources::new().file(file.path());
        let c = Config::default().load(&sources).unwrap().into_config();
        let routes: Vec<_> = c
            .task_routes
            .iter()
            .map(|(p, q)| (p.as_str(), q.as_str()))
            .collect();
        assert_eq!(
            routes,
            [
                ("tasks.sleep", "slow"),
                ("tasks.*", "fast"),
                ("a.first", "z")
            ]
        );
        assert_eq!(c.route("tasks.sleep"), Some("slow"));
        assert_eq!(c.broker_transport_options["visibility_timeout"], 60);

        let env = sources.env([
            (
                "CELERIAC_TASK_ROUTES",
                r#"{"tasks.add": {"queue": "adds"}}"#,
            ),
            ("CELERIAC_BROKER_TRANSPORT_OPTIONS", r#"{"max_retries": 2}"#),
        ]);
        let c = Config::default().load(&env).unwrap().into_config();
        assert_eq!(c.task_routes, vec![("tasks.add".into(), "adds".into())]);
        assert_eq!(
            Value::Object(c.broker_transport_options),
            serde_json::json!({"max_retries": 2})
        );
    }

    #[test]
    fn environment_values_parse_by_the_settings_type() {
        let sources = ConfigSources::new().env([
            ("CELERIAC_TASK_ACKS_LATE", "true"),
            ("CELERIAC_TASK_IGNORE_RESULT", "yes"),
            ("CELERIAC_RESULT_EXPIRES", "0"),
            ("CELERIAC_WORKER_SHUTDOWN_TIMEOUT", "2.5"),
            ("CELERIAC_TASK_DEFAULT_QUEUE", "123"),
            ("CELERIAC_TIMEZONE", ""),
        ]);
        let c = Config::default().load(&sources).unwrap().into_config();
        assert!(c.task_acks_late);
        assert!(c.task_ignore_result());
        assert_eq!(c.result_expires, None);
        assert_eq!(c.worker_shutdown_timeout, Duration::from_millis(2500));
        assert_eq!(c.task_default_queue, "123");
        assert_eq!(c.timezone, "UTC");
    }

    #[test]
    fn unknown_names_are_errors_that_suggest_the_known_one() {
        let file = file_with("worker_concurency = 4\n");
        let err = Config::default()
            .load(&ConfigSources::new().file(file.path()))
            .unwrap_err();
        assert_eq!(
            err,
            ConfigError::UnknownSetting {
                name: "worker_concurency".into(),
                origin: Origin::File(file.path().to_path_buf()),
                suggestion: Some("worker_concurrency".into()),
            }
        );
        assert!(err
            .to_string()
            .contains("did you mean `worker_concurrency`?"));

        let env = ConfigSources::new().env([("CELERIAC_BROKER_URI", "redis://h")]);
        let err = Config::default().load(&env).unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown setting `CELERIAC_BROKER_URI` in the environment: \
             did you mean `CELERIAC_BROKER_URL`?"
        );
    }

    #[test]
    fn the_test_suites_variables_are_not_settings() {
        let sources = ConfigSources::new().env([
            ("CELERIAC_TEST_REDIS_URL", "redis://h"),
            ("CELERIAC_TEST_AMQP_URL", "amqp://h"),
            ("CELERIAC_PYTHON", "/usr/bin/python3"),
            ("CELERIAC_INTEROP_BROKER", "redis://h"),
            ("CELERIAC_SQLITE_CHILD_DB", "/tmp/x.db"),
        ]);
        assert!(Config::default().load(&sources).is_ok());
    }

    #[test]
    fn bad_values_name_the_setting_the_source_and_what_was_expected() {
        let env = ConfigSources::new().env([("CELERIAC_WORKER_CONCURRENCY", "many")]);
        let err = Config::default().load(&env).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid value for `worker_concurrency` (env CELERIAC_WORKER_CONCURRENCY): \
             expected a whole number, got many"
        );

        let file = file_with("result_extended = \"sure\"\n");
        let err = Config::default()
            .load(&ConfigSources::new().file(file.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`result_extended`"), "{err}");
        assert!(
            err.contains(&format!("file {}", file.path().display())),
            "{err}"
        );
        assert!(
            err.ends_with("expected true or false, got string \"sure\""),
            "{err}"
        );

        let file = file_with("task_routes = \"fast\"\n");
        let err = Config::default()
            .load(&ConfigSources::new().file(file.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`task_routes`"), "{err}");
        assert!(err.contains("expected a table"), "{err}");

        let env = ConfigSources::new().env([("CELERIAC_WORKER_PREFETCH_MULTIPLIER", "0")]);
        let err = Config::default().load(&env).unwrap_err().to_string();
        assert!(err.contains("CELERIAC_WORKER_PREFETCH_MULTIPLIER"), "{err}");
        assert!(err.contains("at least 1"), "{err}");
    }

    #[test]
    fn the_file_is_found_by_flag_then_variable_then_working_directory() {
        let named = file_with("task_default_queue = \"named\"\n");
        let present = file_with("task_default_queue = \"present\"\n");
        let queue = |sources: ConfigSources| {
            Config::default()
                .load(&sources)
                .unwrap()
                .into_config()
                .task_default_queue
        };
        let base = || ConfigSources::new().file_if_present(present.path());
        assert_eq!(queue(base()), "present");
        assert_eq!(
            queue(base().env([(CONFIG_FILE_ENV, named.path().to_str().unwrap())])),
            "named"
        );
        assert_eq!(queue(base().file(named.path())), "named");
        assert_eq!(
            queue(ConfigSources::new().file_if_present("/nonexistent/celeriac.toml")),
            "celery"
        );
        let missing = Config::default().load(&ConfigSources::new().file("/nonexistent/c.toml"));
        assert!(
            matches!(missing, Err(ConfigError::File { .. })),
            "{missing:?}"
        );
    }
}
