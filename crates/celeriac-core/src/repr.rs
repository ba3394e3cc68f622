//! Python `repr()`-style display strings (`argsrepr`, `kwargsrepr`, event fields), §1.4.
//! Only people read these (Flower, logs); they are truncated like Celery's.

use serde_json::{Map, Value};

const MAX_LEN: usize = 1024;

/// `(2, 3)`, `(2,)`, `()`.
pub fn args_repr(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        value_repr(a, &mut out);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    truncate(out)
}

/// `{'y': 3}`, `{}`.
pub fn kwargs_repr(kwargs: &Map<String, Value>) -> String {
    let mut out = String::new();
    map_repr(kwargs, &mut out);
    truncate(out)
}

/// One value as Python would show it.
pub fn repr(v: &Value) -> String {
    let mut out = String::new();
    value_repr(v, &mut out);
    truncate(out)
}

/// `ValueError('boom')`.
pub fn exception_repr(exc_type: &str, message: &str) -> String {
    let mut out = String::from(exc_type);
    out.push('(');
    str_repr(message, &mut out);
    out.push(')');
    out
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_LEN {
        let mut cut = MAX_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn map_repr(map: &Map<String, Value>, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        str_repr(k, out);
        out.push_str(": ");
        value_repr(v, out);
    }
    out.push('}');
}

fn value_repr(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => crate::json::write_python_number(n, out),
        Value::String(s) => str_repr(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                value_repr(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => map_repr(map, out),
    }
}

fn str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = c as u32;
                if n <= 0xff {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Approximates Python's `str.isprintable()`: control and format characters, separators other
/// than the space, and a few invisible characters are escaped by `repr()`.
fn is_printable(c: char) -> bool {
    !(c.is_control()
        || matches!(
            c,
            '\u{a0}'
                | '\u{ad}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{feff}'
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_display() {
        assert_eq!(args_repr(&[json!(2)]), "(2,)");
        assert_eq!(
            args_repr(&[json!(2), json!("a"), json!(null)]),
            "(2, 'a', None)"
        );
        assert_eq!(args_repr(&[]), "()");
        let kw = json!({"y": 3, "ok": true});
        assert_eq!(kwargs_repr(kw.as_object().unwrap()), "{'y': 3, 'ok': True}");
        assert_eq!(exception_repr("ValueError", "boom"), "ValueError('boom')");
    }
}
