//! What every engine's URL parsing shares: percent-decoding and hiding passwords.

/// The URL with any password replaced by `***` (`scheme://user:***@host...`).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // Credentials end at the last `@` before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((auth, _)) => {
            let host_and_path = &rest[auth.len() + 1..];
            match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host_and_path}"),
                None => format!("{scheme}://{auth}@{host_and_path}"),
            }
        }
        None => url.to_string(),
    }
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits is kept as is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_keeps_the_rest() {
        assert_eq!(percent_decode("p%40ss%2f"), "p@ss/");
        assert_eq!(percent_decode("%aé%zz%"), "%aé%zz%");
        assert_eq!(percent_decode("%e2%98%83"), "\u{2603}");
    }

    #[test]
    fn hides_passwords_only() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("amqp://guest:guest@h/%2f"), "amqp://guest:***@h/%2f");
        assert_eq!(redact("amqp://h/vhost@x"), "amqp://h/vhost@x");
        assert_eq!(redact("redis://user@h"), "redis://user@h");
        assert_eq!(redact("not a url"), "not a url");
    }
}
