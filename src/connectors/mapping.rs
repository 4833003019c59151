//! Connector mapping files: how a vendor's webhook is authenticated (a scheme the hub knows,
//! with the vendor's header names) and a jq filter (the `jaq` implementation) that turns the
//! authenticated payload into events. Parsed and compiled once at start; a filter runs on the
//! blocking pool with a bounded input and a bounded number of outputs.

use std::path::Path;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, Ctx, Vars};
use jaq_json::Val;
use serde::Deserialize;
use serde_json::Value;

/// The mappings that ship with the hub, embedded so the binary needs no folder. An operator's
/// own file (`connectors[].mapping_file`) has the same form.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "github-secret-scanning",
        include_str!("../../connectors/github-secret-scanning.toml"),
    ),
    ("okta", include_str!("../../connectors/okta.toml")),
    ("jamf-pro", include_str!("../../connectors/jamf-pro.toml")),
];

/// A mapping file (or the inline `connectors[].mapping` of a generic connector).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// One line for operators: which vendor and webhook this maps.
    #[serde(default)]
    pub description: String,
    pub auth: AuthSpec,
    /// The vendor's one-time verification handshake (Okta event hooks).
    #[serde(default)]
    pub verification: Option<VerificationSpec>,
    /// Header carrying the vendor's delivery id (GitHub `X-GitHub-Delivery`): required on every
    /// webhook and kept as the events' `txn`, to find a delivery in the vendor's log. Not the
    /// dedupe identity: vendors do not sign it (see `Connectors::record`).
    #[serde(default)]
    pub delivery_id_header: Option<String>,
    /// The jq program. Its input is `{"body", "headers", "options", "connector"}`; it emits
    /// event objects (or arrays of them): `{"type", "subject", "id"?, "claims"?,
    /// "event_timestamp"?, "txn"?}`. `id` is the vendor's id of the event, from the body;
    /// without one, the body's digest and the event's index identify it.
    pub filter: String,
}

/// How a webhook proves where it comes from, checked on the raw body before anything is parsed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "scheme", rename_all = "kebab-case")]
pub enum AuthSpec {
    /// HMAC-SHA256 with the connector's secret, over the raw body (or over
    /// `signed_payload` with `{timestamp}` and `{body}` filled in when the vendor signs a
    /// timestamp), in `header` after `prefix`, hex or base64.
    HmacSha256 {
        header: String,
        #[serde(default)]
        prefix: String,
        #[serde(default)]
        encoding: Encoding,
        #[serde(default)]
        timestamp_header: Option<String>,
        #[serde(default = "default_signed_payload")]
        signed_payload: String,
        #[serde(default = "default_max_skew")]
        max_skew_secs: u64,
    },
    /// The connector's secret, exactly, in `header` (after `prefix`).
    SharedSecret {
        header: String,
        #[serde(default)]
        prefix: String,
    },
}

fn default_signed_payload() -> String {
    "{body}".into()
}

fn default_max_skew() -> u64 {
    300
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

/// A `GET` that carries a challenge in `challenge_header`, answered (after authentication)
/// with `{"<response_member>": challenge}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationSpec {
    pub challenge_header: String,
    pub response_member: String,
}

impl MappingSpec {
    pub fn parse(text: &str) -> Result<MappingSpec, String> {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| e.to_string())
    }

    pub fn builtin(name: &str) -> Option<Result<MappingSpec, String>> {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, text)| MappingSpec::parse(text))
    }

    /// Every header name the mapping reads, for validation at start.
    pub fn header_names(&self) -> Vec<&str> {
        let mut names = match &self.auth {
            AuthSpec::HmacSha256 {
                header,
                timestamp_header,
                ..
            } => vec![header.as_str()]
                .into_iter()
                .chain(timestamp_header.as_deref())
                .collect(),
            AuthSpec::SharedSecret { header, .. } => vec![header.as_str()],
        };
        names.extend(self.delivery_id_header.as_deref());
        names.extend(
            self.verification
                .as_ref()
                .map(|v| v.challenge_header.as_str()),
        );
        names
    }

    pub fn load(path: &Path) -> Result<MappingSpec, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        MappingSpec::parse(&text)
    }
}

type Native = jaq_core::Native<data::JustLut<Val>>;

/// A compiled jq filter.
pub struct Filter(jaq_core::compile::Filter<Native>);

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filter")
    }
}

/// Filters that reach outside the payload (the process environment, stdin) are left out: a
/// mapping sees only the webhook. `halt` stays (the standard definitions use it) and is an
/// error of the webhook in [`Filter::run`], never the end of the process.
const WITHHELD: &[&str] = &["env", "input", "inputs"];

impl Filter {
    pub fn compile(code: &str) -> Result<Filter, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !WITHHELD.contains(name));
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errs| {
                let errs: Vec<_> = errs.into_iter().map(|(_, e)| format!("{e:?}")).collect();
                format!("the filter does not parse: {}", errs.join("; "))
            })?;
        let filter = jaq_core::Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                let errs: Vec<_> = errs
                    .into_iter()
                    .flat_map(|(_, es)| es.into_iter().map(|(name, u)| format!("{name} ({u:?})")))
                    .collect();
                format!("the filter names what is not defined: {}", errs.join(", "))
            })?;
        Ok(Filter(filter))
    }

    /// Runs the filter on `input`, collecting at most `max_outputs` values (one more is an
    /// error: the bound on what one webhook can append). Errors are the filter's own message.
    pub fn run(&self, input: &Value, max_outputs: usize) -> Result<Vec<Value>, String> {
        let text = serde_json::to_vec(input).map_err(|e| e.to_string())?;
        let input = jaq_json::read::parse_single(&text).map_err(|e| format!("{e:?}"))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.0.lut, Vars::new([]));
        let mut out = Vec::new();
        for v in self.0.id.run((ctx, input)) {
            // `halt` is withheld; should an exception still carry one, it is an error here,
            // never the end of the process (`jaq_core::unwrap_valr` would exit).
            let v = v.map_err(|e| match e.get_err() {
                Ok(err) => format!("the filter failed: {err}"),
                Err(_) => "the filter halted".to_owned(),
            })?;
            if out.len() == max_outputs {
                return Err(format!("the filter emitted more than {max_outputs} values"));
            }
            let v: Value = serde_json::from_str(&v.to_string())
                .map_err(|_| "the filter emitted a value that is not JSON".to_owned())?;
            match v {
                Value::Array(items) => {
                    if out.len() + items.len() > max_outputs {
                        return Err(format!("the filter emitted more than {max_outputs} values"));
                    }
                    out.extend(items);
                }
                Value::Null => {}
                v => out.push(v),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtins_parse_and_compile() {
        for (name, _) in BUILTIN {
            let spec = MappingSpec::builtin(name)
                .expect("listed")
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            Filter::compile(&spec.filter).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    /// The deepest body `serde_json` accepts (its recursion limit, 128) does not exhaust the
    /// stack of a blocking-pool thread (tokio's default, 2 MiB) in filters that recurse.
    #[test]
    fn deep_input_fits_a_blocking_thread_stack() {
        let deep: Value = serde_json::from_str(&format!("{}1{}", "[".repeat(127), "]".repeat(127)))
            .expect("within serde_json's limit");
        let f = Filter::compile(
            "[..] | length, (tostring | length), (walk(.) | tojson | length), ([paths] | length)",
        )
        .expect("compiles");
        let out = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || f.run(&json!({"body": deep}), 10))
            .expect("thread")
            .join()
            .expect("no stack overflow");
        assert_eq!(out.expect("runs").len(), 4);
    }

    #[test]
    fn filters_run_bounded_and_fail_cleanly() {
        let f = Filter::compile(".body.items[] | {id: .}").expect("compiles");
        let input = json!({"body": {"items": [1, 2, 3]}});
        assert_eq!(f.run(&input, 3).expect("runs").len(), 3);
        assert!(f.run(&input, 2).is_err());
        assert!(f.run(&json!({"body": 1}), 10).is_err());
        let f = Filter::compile("# a comment\n{id: .x} # another\n").expect("comments");
        assert_eq!(
            f.run(&json!({"x": 1}), 1).expect("runs"),
            vec![json!({"id": 1})]
        );
        let f = Filter::compile("halt_error").expect("compiles");
        assert!(f.run(&json!({}), 10).is_err());
        assert!(Filter::compile("env").is_err());
        assert!(Filter::compile(".[").is_err());
        let f = Filter::compile("error(\"no\")").expect("compiles");
        assert!(f.run(&json!({}), 10).is_err());
        let f = Filter::compile(
            "\"2019-03-27T16:59:53.032Z\" | sub(\"\\\\.[0-9]+Z$\"; \"Z\") | fromdate",
        )
        .expect("compiles");
        assert_eq!(f.run(&json!({}), 1).expect("runs"), vec![json!(1553705993)]);
    }
}
