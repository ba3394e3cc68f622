//! URL → engine. The one place that knows every scheme, and which engines this build was
//! compiled with (the cargo features `sqlite`, `redis`, `amqp`).

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "amqp")]
use celeriac_amqp::AmqpBroker;
use celeriac_core::backend::DisabledBackend;
use celeriac_core::url::redact;
use celeriac_core::{Broker, ResultBackend};
#[cfg(feature = "redis")]
use celeriac_redis::{RedisBackend, RedisBroker};
#[cfg(feature = "sqlite")]
use celeriac_sqlite::SqliteStore;

use crate::config::DEFAULT_URL;
use crate::error::Error;

pub struct Connections {
    pub broker: Arc<dyn Broker>,
    pub backend: Arc<dyn ResultBackend>,
}

/// The result backend value that turns results off.
pub const DISABLED: &str = "disabled";

/// What a result backend learns from the app that opens it (only rpc:// reads it).
#[cfg_attr(not(feature = "amqp"), allow(dead_code))]
pub struct BackendContext<'a> {
    /// The `reply_to` of the tasks this app sends: rpc:// listens on a queue of that name.
    pub reply_queue: &'a str,
    pub result_expires: Option<Duration>,
}

/// An engine celeriac can be built with.
struct Engine {
    /// The cargo feature that compiles it in.
    feature: &'static str,
    compiled: bool,
    schemes: &'static [&'static str],
    /// Its URL forms, as error messages show them.
    forms: &'static str,
    holds_results: bool,
}

const ENGINES: [Engine; 3] = [
    Engine {
        feature: "sqlite",
        compiled: cfg!(feature = "sqlite"),
        schemes: &["sqlite"],
        forms: "sqlite://PATH",
        holds_results: true,
    },
    Engine {
        feature: "redis",
        compiled: cfg!(feature = "redis"),
        schemes: &["redis", "rediss"],
        forms: "redis://[:password@]host:port/db, rediss://...",
        holds_results: true,
    },
    Engine {
        feature: "amqp",
        compiled: cfg!(feature = "amqp"),
        schemes: &["amqp", "amqps", "pyamqp"],
        forms: "amqp://user:pass@host:port/vhost, amqps://... (as result backend: rpc://)",
        holds_results: false,
    },
];

/// What a URL is opened as: the role decides which engines qualify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Broker,
    ResultBackend,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Broker => "broker",
            Role::ResultBackend => "result backend",
        }
    }

    fn fits(self, engine: &Engine) -> bool {
        self == Role::Broker || engine.holds_results
    }

    /// Where a user sets this role's URL.
    fn settings(self) -> &'static str {
        match self {
            Role::Broker => "broker_url, CELERIAC_BROKER_URL or --broker",
            Role::ResultBackend => "result_backend, CELERIAC_RESULT_BACKEND or --result-backend",
        }
    }
}

/// The URL forms this build can open in `role`.
fn supported(role: Role) -> String {
    let forms: Vec<&str> = ENGINES
        .iter()
        .filter(|e| e.compiled && role.fits(e))
        .map(|e| e.forms)
        .collect();
    if forms.is_empty() {
        format!(
            "no {} at all (enable one of celeriac's features: {})",
            role.name(),
            ENGINES
                .iter()
                .filter(|e| role.fits(e))
                .map(|e| e.feature)
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        forms.join(", ")
    }
}

fn scheme(url: &str) -> Result<&str, Error> {
    url.split_once("://")
        .map(|(s, _)| s)
        .ok_or_else(|| Error::Config(format!("{url:?} is not a URL (expected scheme://...)")))
}

/// The error for a URL this build cannot open in `role`: an engine left out of the build
/// is named with its feature, so the fix is one line of Cargo.toml.
fn cannot_open(role: Role, url: &str, scheme: &str) -> Error {
    let shown = redact(url);
    let known = ENGINES
        .iter()
        .find(|e| e.schemes.contains(&scheme) && role.fits(e));
    let message = match known {
        Some(engine) if !engine.compiled => {
            let mut m = format!(
                "{} {shown} needs celeriac's {:?} feature, which this build was compiled without",
                role.name(),
                engine.feature
            );
            if url == DEFAULT_URL {
                m.push_str(&format!(
                    "; it is the default when no {} is configured: configure one ({}) or enable the feature",
                    role.name(),
                    role.settings()
                ));
            }
            m
        }
        _ => format!(
            "unsupported {} URL scheme {scheme:?} in {shown}: this build supports {}",
            role.name(),
            supported(role)
        ),
    };
    Error::Config(message)
}

/// Opens broker and backend; when both name the same SQLite file they share one store, and
/// `rpc://` shares the AMQP broker's connection.
pub async fn open(
    broker_url: &str,
    backend_url: &str,
    context: BackendContext<'_>,
) -> Result<Connections, Error> {
    #[cfg(feature = "sqlite")]
    if backend_url == broker_url && scheme(broker_url)? == "sqlite" {
        let store = SqliteStore::open_url(broker_url)?;
        return Ok(Connections {
            broker: store.clone(),
            backend: store,
        });
    }
    let broker = open_broker(broker_url).await?;
    let backend = open_backend(backend_url, &broker, context).await?;
    Ok(Connections {
        broker: broker.broker,
        backend,
    })
}

/// A broker as opened, with the engine's own handle where a result backend can share it.
struct OpenedBroker {
    broker: Arc<dyn Broker>,
    #[cfg(feature = "amqp")]
    amqp: Option<Arc<AmqpBroker>>,
}

impl OpenedBroker {
    #[cfg(any(feature = "sqlite", feature = "redis"))]
    fn plain(broker: Arc<dyn Broker>) -> OpenedBroker {
        OpenedBroker {
            broker,
            #[cfg(feature = "amqp")]
            amqp: None,
        }
    }

    #[cfg(feature = "amqp")]
    fn amqp(broker: Arc<AmqpBroker>) -> OpenedBroker {
        OpenedBroker {
            broker: broker.clone(),
            amqp: Some(broker),
        }
    }
}

async fn open_broker(url: &str) -> Result<OpenedBroker, Error> {
    match scheme(url)? {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(OpenedBroker::plain(SqliteStore::open_url(url)?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(OpenedBroker::plain(RedisBroker::open(url).await?)),
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => Ok(OpenedBroker::amqp(AmqpBroker::open(url).await?)),
        #[cfg(feature = "amqp")]
        "pyamqp" => Ok(OpenedBroker::amqp(
            AmqpBroker::open(&url.replacen("pyamqp://", "amqp://", 1)).await?,
        )),
        other => Err(cannot_open(Role::Broker, url, other)),
    }
}

async fn open_backend(
    url: &str,
    broker: &OpenedBroker,
    context: BackendContext<'_>,
) -> Result<Arc<dyn ResultBackend>, Error> {
    if url.trim() == DISABLED {
        return Ok(Arc::new(DisabledBackend));
    }
    match scheme(url)? {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(SqliteStore::open_url(url).map_err(|e| Error::Config(e.to_string()))?),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(RedisBackend::open(url).await?),
        "rpc" => open_rpc(broker, context),
        other => Err(cannot_open(Role::ResultBackend, url, other)),
    }
}

/// `rpc://` sends results as messages over the broker, so it needs an AMQP broker.
fn open_rpc(
    broker: &OpenedBroker,
    context: BackendContext<'_>,
) -> Result<Arc<dyn ResultBackend>, Error> {
    #[cfg(feature = "amqp")]
    if let Some(amqp) = &broker.amqp {
        return Ok(amqp.rpc_backend(context.reply_queue, context.result_expires));
    }
    let _ = context;
    Err(Error::Config(format!(
        "result backend rpc:// sends results as messages over the broker, which must be \
         RabbitMQ (amqp://, celeriac's \"amqp\" feature); the broker is {}",
        broker.broker.display_url()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn an_unknown_scheme_lists_what_this_build_supports() {
        let m = message(cannot_open(Role::Broker, "kafka://h", "kafka"));
        assert!(m.contains("unsupported broker URL scheme \"kafka\""), "{m}");
        for engine in &ENGINES {
            assert_eq!(m.contains(engine.forms), engine.compiled, "{m}");
        }
    }

    #[test]
    fn a_known_engine_left_out_names_its_feature() {
        for engine in ENGINES.iter().filter(|e| !e.compiled) {
            let url = format!("{}://user:secret@host/0", engine.schemes[0]);
            let m = message(cannot_open(Role::Broker, &url, engine.schemes[0]));
            let feature = format!("needs celeriac's \"{}\" feature", engine.feature);
            assert!(m.contains(&feature), "{m}");
            assert!(!m.contains("secret"), "the password is hidden: {m}");
        }
    }

    #[test]
    fn amqp_is_no_result_backend_whatever_the_features() {
        let m = message(cannot_open(Role::ResultBackend, "amqp://h", "amqp"));
        assert!(m.contains("unsupported result backend"), "{m}");
        assert!(!m.contains("amqp://user"), "{m}");
    }

    #[cfg(not(feature = "sqlite"))]
    #[tokio::test]
    async fn without_sqlite_the_default_url_says_how_to_fix_it() {
        let context = BackendContext {
            reply_queue: "test",
            result_expires: None,
        };
        let m = message(open(DEFAULT_URL, DEFAULT_URL, context).await.err().unwrap());
        assert!(m.contains("needs celeriac's \"sqlite\" feature"), "{m}");
        assert!(m.contains("CELERIAC_BROKER_URL"), "{m}");
    }
}
