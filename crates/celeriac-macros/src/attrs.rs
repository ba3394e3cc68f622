//! Parsing and validating the options of `#[task(...)]`.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, LitStr, Meta, Token, UnOp};

/// Every option `#[task(...)]` accepts, in the order the docs list them.
pub(crate) const OPTIONS: &[&str] = &[
    "name",
    "aliases",
    "queue",
    "max_retries",
    "default_retry_delay",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "autoretry_for",
    "time_limit",
    "soft_time_limit",
    "acks_late",
    "reject_on_worker_lost",
    "ignore_result",
    "track_started",
    "rate_limit",
    "expires",
    "priority",
];

/// A rate limit checked at compile time.
#[derive(Clone)]
pub(crate) struct RateLimitLit {
    pub count: f64,
    pub per: Duration,
}

/// The options given to `#[task(...)]`; `None` means "not given, use the default".
#[derive(Default, Clone)]
pub(crate) struct TaskAttrs {
    pub name: Option<LitStr>,
    pub aliases: Vec<LitStr>,
    pub queue: Option<LitStr>,
    /// `Some(None)`: `max_retries = none`, retry forever.
    pub max_retries: Option<Option<u32>>,
    pub default_retry_delay: Option<Duration>,
    /// `Some(None)`: `retry_backoff = false`.
    pub retry_backoff: Option<Option<Duration>>,
    pub retry_backoff_max: Option<Duration>,
    pub retry_jitter: Option<bool>,
    pub autoretry_for: Option<Vec<LitStr>>,
    pub time_limit: Option<Duration>,
    pub soft_time_limit: Option<Duration>,
    pub acks_late: Option<bool>,
    pub reject_on_worker_lost: Option<bool>,
    pub ignore_result: Option<bool>,
    pub track_started: Option<bool>,
    pub rate_limit: Option<RateLimitLit>,
    pub expires: Option<Duration>,
    pub priority: Option<u8>,
}

/// Collects errors so that one expansion reports all of them at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Parses the tokens inside `#[task(...)]`.
pub(crate) fn parse_attrs(tokens: TokenStream) -> syn::Result<TaskAttrs> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens)?;
    let mut attrs = TaskAttrs::default();
    let mut seen: Vec<(String, Span)> = Vec::new();
    let mut errors = Errors::default();
    for meta in metas {
        let key = meta.path();
        let Some(ident) = key.get_ident() else {
            errors.push(syn::Error::new_spanned(
                key,
                unknown_message(&quote!(#key).to_string()),
            ));
            continue;
        };
        let name = ident.to_string();
        if !OPTIONS.contains(&name.as_str()) {
            errors.push(syn::Error::new_spanned(ident, unknown_message(&name)));
            continue;
        }
        if seen.iter().any(|(n, _)| *n == name) {
            errors.push(syn::Error::new_spanned(
                ident,
                format!("duplicate task option `{name}`"),
            ));
            continue;
        }
        seen.push((name.clone(), ident.span()));
        if let Err(e) = apply(&mut attrs, &name, &meta) {
            errors.push(e);
        }
    }
    if attrs.retry_backoff.flatten().is_none() {
        for (opt, span) in &seen {
            if opt == "retry_backoff_max" || opt == "retry_jitter" {
                errors.push(syn::Error::new(
                    *span,
                    format!("`{opt}` has no effect without `retry_backoff = true` (or a base delay in seconds)"),
                ));
            }
        }
    }
    errors.finish()?;
    Ok(attrs)
}

fn unknown_message(name: &str) -> String {
    format!(
        "unknown task option `{name}`; valid options are: {}",
        OPTIONS.join(", ")
    )
}

/// The value of `key = value`; a bare `key` is allowed only for flags (it means `true`).
enum Value<'a> {
    Bare(&'a syn::Path),
    Expr(&'a Expr),
}

fn value_of<'a>(name: &str, meta: &'a Meta) -> syn::Result<Value<'a>> {
    match meta {
        Meta::Path(p) => Ok(Value::Bare(p)),
        Meta::NameValue(nv) => Ok(Value::Expr(strip(&nv.value))),
        Meta::List(list) => Err(syn::Error::new_spanned(
            list,
            format!("expected `{name} = ...`"),
        )),
    }
}

/// Looks through invisible groups and parentheses (values passed through `macro_rules!`).
fn strip(mut e: &Expr) -> &Expr {
    loop {
        match e {
            Expr::Group(g) => e = &g.expr,
            Expr::Paren(p) => e = &p.expr,
            _ => return e,
        }
    }
}

fn lit(e: &Expr) -> Option<&Lit> {
    match e {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        _ => None,
    }
}

fn apply(attrs: &mut TaskAttrs, name: &str, meta: &Meta) -> syn::Result<()> {
    let value = value_of(name, meta)?;
    let bare_error = |p: &syn::Path, what: &str| {
        syn::Error::new_spanned(p, format!("expected `{name} = {what}`"))
    };
    match name {
        "name" | "queue" => {
            let v = match value {
                Value::Expr(e) => non_empty_str(name, e)?,
                Value::Bare(p) => return Err(bare_error(p, "\"...\"")),
            };
            if name == "name" {
                attrs.name = Some(v);
            } else {
                attrs.queue = Some(v);
            }
        }
        "aliases" | "autoretry_for" => {
            let v = match value {
                Value::Expr(e) => str_array(name, e)?,
                Value::Bare(p) => return Err(bare_error(p, "[\"...\", ...]")),
            };
            if name == "aliases" {
                attrs.aliases = v;
            } else {
                attrs.autoretry_for = Some(v);
            }
        }
        "max_retries" => {
            attrs.max_retries = Some(match value {
                Value::Expr(e) => max_retries(e)?,
                Value::Bare(p) => return Err(bare_error(p, "<count>` or `max_retries = none")),
            });
        }
        "retry_backoff" => {
            attrs.retry_backoff = Some(match value {
                Value::Bare(_) => Some(Duration::from_secs(1)),
                Value::Expr(e) => match lit(e) {
                    Some(Lit::Bool(b)) => b.value.then(|| Duration::from_secs(1)),
                    _ => Some(seconds(name, e).map_err(|_| {
                        syn::Error::new_spanned(
                            e,
                            "`retry_backoff` expects `true`, `false` or a base delay in seconds (e.g. `2` or `0.5`)",
                        )
                    })?),
                },
            });
        }
        "default_retry_delay"
        | "retry_backoff_max"
        | "time_limit"
        | "soft_time_limit"
        | "expires" => {
            let d = match value {
                Value::Expr(e) => seconds(name, e)?,
                Value::Bare(p) => return Err(bare_error(p, "<seconds>")),
            };
            *match name {
                "default_retry_delay" => &mut attrs.default_retry_delay,
                "retry_backoff_max" => &mut attrs.retry_backoff_max,
                "time_limit" => &mut attrs.time_limit,
                "soft_time_limit" => &mut attrs.soft_time_limit,
                _ => &mut attrs.expires,
            } = Some(d);
        }
        "retry_jitter"
        | "acks_late"
        | "reject_on_worker_lost"
        | "ignore_result"
        | "track_started" => {
            let b = match value {
                Value::Bare(_) => true,
                Value::Expr(e) => match lit(e) {
                    Some(Lit::Bool(b)) => b.value,
                    _ => {
                        return Err(syn::Error::new_spanned(
                            e,
                            format!("`{name}` expects a bool (`true` or `false`)"),
                        ))
                    }
                },
            };
            *match name {
                "retry_jitter" => &mut attrs.retry_jitter,
                "acks_late" => &mut attrs.acks_late,
                "reject_on_worker_lost" => &mut attrs.reject_on_worker_lost,
                "ignore_result" => &mut attrs.ignore_result,
                _ => &mut attrs.track_started,
            } = Some(b);
        }
        "rate_limit" => {
            let s = match value {
                Value::Expr(e) => match lit(e) {
                    Some(Lit::Str(s)) => s.clone(),
                    _ => return Err(syn::Error::new_spanned(
                        e,
                        "`rate_limit` expects a string such as \"10/s\", \"100/m\" or \"1000/h\"",
                    )),
                },
                Value::Bare(p) => return Err(bare_error(p, "\"10/s\"")),
            };
            let (count, per) =
                parse_rate_limit(&s.value()).map_err(|m| syn::Error::new(s.span(), m))?;
            attrs.rate_limit = Some(RateLimitLit { count, per });
        }
        "priority" => {
            let e = match value {
                Value::Expr(e) => e,
                Value::Bare(p) => return Err(bare_error(p, "<0..=9>")),
            };
            attrs.priority = Some(priority(e)?);
        }
        _ => unreachable!("option list and match are out of sync: {name}"),
    }
    Ok(())
}

fn non_empty_str(name: &str, e: &Expr) -> syn::Result<LitStr> {
    match lit(e) {
        Some(Lit::Str(s)) if !s.value().trim().is_empty() => Ok(s.clone()),
        Some(Lit::Str(s)) => Err(syn::Error::new_spanned(
            s,
            format!("`{name}` must not be empty"),
        )),
        _ => Err(syn::Error::new_spanned(
            e,
            format!("`{name}` expects a string literal"),
        )),
    }
}

fn str_array(name: &str, e: &Expr) -> syn::Result<Vec<LitStr>> {
    let wrong = || {
        syn::Error::new_spanned(
            e,
            format!("`{name}` expects an array of string literals, e.g. `[\"a\", \"b\"]`"),
        )
    };
    let Expr::Array(array) = e else {
        return Err(wrong());
    };
    let mut out = Vec::new();
    for el in &array.elems {
        match lit(strip(el)) {
            Some(Lit::Str(s)) if !s.value().trim().is_empty() => out.push(s.clone()),
            Some(Lit::Str(s)) => {
                return Err(syn::Error::new_spanned(
                    s,
                    format!("`{name}` entries must not be empty"),
                ))
            }
            _ => {
                return Err(syn::Error::new_spanned(
                    el,
                    format!("`{name}` entries must be string literals"),
                ))
            }
        }
    }
    Ok(out)
}

fn max_retries(e: &Expr) -> syn::Result<Option<u32>> {
    if let Expr::Path(p) = e {
        if p.path.is_ident("none") || p.path.is_ident("None") {
            return Ok(None);
        }
    }
    let wrong = || {
        syn::Error::new_spanned(
            e,
            "`max_retries` expects a non-negative integer, or `none` to retry forever",
        )
    };
    match lit(e) {
        Some(Lit::Int(i)) => i.base10_parse::<u32>().map(Some).map_err(|_| wrong()),
        _ => Err(wrong()),
    }
}

/// A non-negative number of seconds, integer or float.
fn seconds(name: &str, e: &Expr) -> syn::Result<Duration> {
    let wrong = || {
        syn::Error::new_spanned(
            e,
            format!("`{name}` expects a non-negative number of seconds (e.g. `30` or `1.5`)"),
        )
    };
    match lit(e) {
        Some(Lit::Int(i)) => i
            .base10_parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| wrong()),
        Some(Lit::Float(f)) => {
            let v = f.base10_parse::<f64>().map_err(|_| wrong())?;
            Duration::try_from_secs_f64(v).map_err(|_| wrong())
        }
        _ => Err(wrong()),
    }
}

fn priority(e: &Expr) -> syn::Result<u8> {
    let range =
        |span: &dyn ToTokens| syn::Error::new_spanned(span, "`priority` must be between 0 and 9");
    match e {
        Expr::Unary(u)
            if matches!(u.op, UnOp::Neg(_)) && matches!(lit(strip(&u.expr)), Some(Lit::Int(_))) =>
        {
            Err(range(e))
        }
        _ => match lit(e) {
            Some(Lit::Int(i)) => match i.base10_parse::<u64>() {
                Ok(v) if v <= 9 => Ok(v as u8),
                _ => Err(range(i)),
            },
            _ => Err(syn::Error::new_spanned(
                e,
                "`priority` expects an integer between 0 and 9",
            )),
        },
    }
}

/// Checks a rate limit at compile time with the very parser the worker uses at run time.
pub(crate) fn parse_rate_limit(s: &str) -> Result<(f64, Duration), String> {
    celeriac_core::rate::RateLimit::parse(s).map(|r| (r.count, r.per))
}

/// `::core::time::Duration::new(secs, nanos)`, exact.
pub(crate) fn duration_tokens(d: Duration) -> TokenStream {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    quote!(::core::time::Duration::new(#secs, #nanos))
}

impl TaskAttrs {
    /// The body of `fn options()`: a `TaskOptions` literal with the given fields, the rest default.
    pub fn options_tokens(&self, blocking: bool) -> TokenStream {
        let mut fields = Vec::<TokenStream>::new();
        let some_duration = |d: &Option<Duration>| {
            d.map(|d| {
                let d = duration_tokens(d);
                quote!(::core::option::Option::Some(#d))
            })
        };
        if let Some(q) = &self.queue {
            fields
                .push(quote!(queue: ::core::option::Option::Some(::std::string::String::from(#q))));
        }
        if let Some(m) = &self.max_retries {
            fields.push(match m {
                Some(n) => quote!(max_retries: ::core::option::Option::Some(#n)),
                None => quote!(max_retries: ::core::option::Option::None),
            });
        }
        if let Some(d) = self.default_retry_delay {
            let d = duration_tokens(d);
            fields.push(quote!(default_retry_delay: #d));
        }
        if let Some(b) = &self.retry_backoff {
            fields.push(match b {
                Some(base) => {
                    let base = duration_tokens(*base);
                    let max = duration_tokens(self.retry_backoff_max.unwrap_or(Duration::from_secs(600)));
                    let jitter = self.retry_jitter.unwrap_or(true);
                    quote!(retry_backoff: ::core::option::Option::Some(
                        ::celeriac::core::task::RetryBackoff { base: #base, max: #max, jitter: #jitter }
                    ))
                }
                None => quote!(retry_backoff: ::core::option::Option::None),
            });
        }
        if let Some(kinds) = &self.autoretry_for {
            fields
                .push(quote!(autoretry_for: ::std::vec![#(::std::string::String::from(#kinds)),*]));
        }
        if let Some(t) = some_duration(&self.time_limit) {
            fields.push(quote!(time_limit: #t));
        }
        if let Some(t) = some_duration(&self.soft_time_limit) {
            fields.push(quote!(soft_time_limit: #t));
        }
        for (v, f) in [
            (self.acks_late, quote!(acks_late)),
            (self.reject_on_worker_lost, quote!(reject_on_worker_lost)),
            (self.ignore_result, quote!(ignore_result)),
            (self.track_started, quote!(track_started)),
        ] {
            if let Some(v) = v {
                fields.push(quote!(#f: #v));
            }
        }
        if let Some(r) = &self.rate_limit {
            let count = r.count;
            let per = duration_tokens(r.per);
            fields.push(quote!(rate_limit: ::core::option::Option::Some(
                ::celeriac::core::rate::RateLimit { count: #count, per: #per }
            )));
        }
        if let Some(t) = some_duration(&self.expires) {
            fields.push(quote!(expires: #t));
        }
        if let Some(p) = self.priority {
            fields.push(quote!(priority: ::core::option::Option::Some(#p)));
        }
        if blocking {
            fields.push(quote!(blocking: true));
        }
        quote! {
            ::celeriac::core::task::TaskOptions {
                #(#fields,)*
                ..::core::default::Default::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> syn::Result<TaskAttrs> {
        parse_attrs(s.parse().unwrap())
    }

    fn err(s: &str) -> String {
        parse(s).err().unwrap().to_string()
    }

    #[test]
    fn empty_is_all_defaults() {
        let a = parse("").unwrap();
        assert!(a.name.is_none() && a.aliases.is_empty() && a.max_retries.is_none());
        assert!(a.rate_limit.is_none() && a.priority.is_none());
    }

    #[test]
    fn every_option_parses() {
        let a = parse(
            r#"name = "tasks.add", aliases = ["old.add", "older.add"], queue = "math",
               max_retries = 5, default_retry_delay = 1.5, retry_backoff = 2,
               retry_backoff_max = 60, retry_jitter = false,
               autoretry_for = ["KeyError", "IoError"], time_limit = 30,
               soft_time_limit = 25.5, acks_late = true, reject_on_worker_lost,
               ignore_result = true, track_started = false, rate_limit = "10/m",
               expires = 3600, priority = 9,"#,
        )
        .unwrap();
        assert_eq!(a.name.unwrap().value(), "tasks.add");
        let aliases: Vec<_> = a.aliases.iter().map(LitStr::value).collect();
        assert_eq!(aliases, ["old.add", "older.add"]);
        assert_eq!(a.queue.unwrap().value(), "math");
        assert_eq!(a.max_retries, Some(Some(5)));
        assert_eq!(a.default_retry_delay, Some(Duration::from_millis(1500)));
        assert_eq!(a.retry_backoff, Some(Some(Duration::from_secs(2))));
        assert_eq!(a.retry_backoff_max, Some(Duration::from_secs(60)));
        assert_eq!(a.retry_jitter, Some(false));
        let kinds: Vec<_> = a.autoretry_for.unwrap().iter().map(LitStr::value).collect();
        assert_eq!(kinds, ["KeyError", "IoError"]);
        assert_eq!(a.time_limit, Some(Duration::from_secs(30)));
        assert_eq!(a.soft_time_limit, Some(Duration::from_millis(25_500)));
        assert_eq!(a.acks_late, Some(true));
        assert_eq!(a.reject_on_worker_lost, Some(true));
        assert_eq!(a.ignore_result, Some(true));
        assert_eq!(a.track_started, Some(false));
        let r = a.rate_limit.unwrap();
        assert_eq!((r.count, r.per), (10.0, Duration::from_secs(60)));
        assert_eq!(a.expires, Some(Duration::from_secs(3600)));
        assert_eq!(a.priority, Some(9));
    }

    #[test]
    fn special_values() {
        assert_eq!(parse("max_retries = none").unwrap().max_retries, Some(None));
        assert_eq!(parse("max_retries = None").unwrap().max_retries, Some(None));
        assert_eq!(
            parse("retry_backoff = true").unwrap().retry_backoff,
            Some(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            parse("retry_backoff").unwrap().retry_backoff,
            Some(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            parse("retry_backoff = false").unwrap().retry_backoff,
            Some(None)
        );
        assert_eq!(
            parse("retry_backoff = 0.25").unwrap().retry_backoff,
            Some(Some(Duration::from_millis(250)))
        );
        assert_eq!(parse("priority = 0").unwrap().priority, Some(0));
        assert_eq!(parse("acks_late").unwrap().acks_late, Some(true));
        let r = parse(r#"rate_limit = "4""#).unwrap().rate_limit.unwrap();
        assert_eq!((r.count, r.per), (4.0, Duration::from_secs(1)));
        let r = parse(r#"rate_limit = " 2.5 / h ""#)
            .unwrap()
            .rate_limit
            .unwrap();
        assert_eq!((r.count, r.per), (2.5, Duration::from_secs(3600)));
    }

    #[test]
    fn errors() {
        assert!(err("bogus = 1")
            .starts_with("unknown task option `bogus`; valid options are: name, aliases,"));
        assert_eq!(err("name = 1"), "`name` expects a string literal");
        assert_eq!(err(r#"name = """#), "`name` must not be empty");
        assert_eq!(
            err(r#"name = "a", name = "b""#),
            "duplicate task option `name`"
        );
        assert_eq!(
            err(r#"acks_late = "yes""#),
            "`acks_late` expects a bool (`true` or `false`)"
        );
        assert!(err("max_retries = -1").starts_with("`max_retries` expects"));
        assert!(err("time_limit = \"30\"").starts_with("`time_limit` expects a non-negative"));
        assert!(err("time_limit = -3").starts_with("`time_limit` expects a non-negative"));
        assert_eq!(err("priority = 10"), "`priority` must be between 0 and 9");
        assert_eq!(err("priority = -1"), "`priority` must be between 0 and 9");
        assert_eq!(
            err(r#"rate_limit = "10/d""#),
            r#"rate limit "10/d": unit "d" is not s, m or h"#
        );
        assert_eq!(
            err(r#"rate_limit = "0/s""#),
            r#"rate limit "0/s": the count must be positive"#
        );
        assert_eq!(
            err(r#"rate_limit = "x/s""#),
            r#"rate limit "x/s": "x" is not a number"#
        );
        assert!(err("retry_jitter = false").contains("no effect without `retry_backoff"));
        assert!(err(r#"aliases = "a""#).starts_with("`aliases` expects an array"));
        assert_eq!(
            err(r#"aliases = ["a", 1]"#),
            "`aliases` entries must be string literals"
        );
        assert_eq!(err("queue"), "expected `queue = \"...\"`");
        assert_eq!(err("queue(\"a\")"), "expected `queue = ...`");
    }

    #[test]
    fn errors_are_reported_together() {
        let e = parse(r#"bogus = 1, priority = 12"#).err().unwrap();
        assert_eq!(e.into_iter().count(), 2);
    }

    #[test]
    fn rate_limit_rules_match_core() {
        for ok in ["10/s", "100/m", "1000/h", "4", "0.5/s"] {
            assert!(parse_rate_limit(ok).is_ok(), "{ok}");
        }
        for bad in ["10/d", "x/s", "0/s", "-1/s", "inf/s", "NaN", "", "/s"] {
            assert!(parse_rate_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_tokens_only_name_given_fields() {
        let a = parse(r#"queue = "q", max_retries = none, priority = 3"#).unwrap();
        let t = a.options_tokens(true).to_string();
        assert!(t.contains("queue :"), "{t}");
        assert!(
            t.contains("max_retries : :: core :: option :: Option :: None"),
            "{t}"
        );
        assert!(
            t.contains("priority : :: core :: option :: Option :: Some (3u8)"),
            "{t}"
        );
        assert!(t.contains("blocking : true"), "{t}");
        assert!(!t.contains("acks_late"), "{t}");
        syn::parse2::<syn::Expr>(a.options_tokens(false)).unwrap();
    }
}
