//! RabbitMQ vhosts for tests, through `rabbitmqctl` on this machine, so tests neither share
//! nor litter the server's vhosts.

use std::process::Command;

/// Runs `rabbitmqctl`; its standard output when it ran and succeeded.
pub fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let out = Command::new("rabbitmqctl").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A vhost made for tests, with every permission for the URL's user; deleted when dropped.
pub struct TestVhost {
    pub name: String,
    /// The base URL moved to this vhost (query kept).
    pub url: String,
}

impl TestVhost {
    /// Creates `name` afresh (a leftover of that name is deleted first) for the user of the
    /// `amqp://` URL `base`; `None` when `rabbitmqctl` cannot do it here.
    pub fn create(base: &str, name: &str) -> Option<TestVhost> {
        let (url, user) = moved_to(base, name)?;
        let _ = rabbitmqctl(&["delete_vhost", name]);
        rabbitmqctl(&["add_vhost", name])?;
        let vhost = TestVhost {
            name: name.to_string(),
            url,
        };
        rabbitmqctl(&["set_permissions", "-p", name, &user, ".*", ".*", ".*"])?;
        Some(vhost)
    }
}

/// The `amqp://` URL `base` with vhost `name` (query kept), and the URL's user (`guest` when
/// it names none).
fn moved_to(base: &str, name: &str) -> Option<(String, String)> {
    let (scheme, rest) = base.split_once("://")?;
    let (before_query, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    let user = match authority.rsplit_once('@') {
        Some((auth, _)) => auth.split(':').next().unwrap_or("guest"),
        None => "guest",
    };
    let name = name.replace('%', "%25").replace('/', "%2f");
    Some((
        format!("{scheme}://{authority}/{name}{query}"),
        user.to_string(),
    ))
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_moves_to_the_vhost_keeping_the_query() {
        assert_eq!(
            moved_to("amqp://u:p@h:5672/%2f?frame_max=131072", "v-1"),
            Some((
                "amqp://u:p@h:5672/v-1?frame_max=131072".to_string(),
                "u".to_string()
            ))
        );
        assert_eq!(
            moved_to("amqps://h", "a/b"),
            Some(("amqps://h/a%2fb".to_string(), "guest".to_string()))
        );
        assert_eq!(moved_to("not a url", "v"), None);
    }
}
