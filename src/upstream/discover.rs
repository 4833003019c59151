//! Transmitter metadata (SSF §7; digest §7): where it lives (`/.well-known/ssf-configuration`
//! inserted between host and path, so path-suffixed issuers work), fetching it, and the checks a
//! receiver must make before using it. Pre-1.0 locations and delivery-method URIs (digest §14.1)
//! are accepted only from a source configured `legacy`.

use reqwest::Url;
use serde_json::Value;

use super::manage::{CallError, Client};
use crate::config::UpstreamConfig;
use crate::set::{DELIVERY_POLL, DELIVERY_PUSH};

/// Pre-1.0 (RISC / SSE ID1) delivery-method URIs and their 1.0 forms.
const LEGACY_METHODS: &[(&str, &str)] = &[
    (
        "https://schemas.openid.net/secevent/risc/delivery-method/push",
        DELIVERY_PUSH,
    ),
    (
        "https://schemas.openid.net/secevent/risc/delivery-method/poll",
        DELIVERY_POLL,
    ),
];

/// Complex-subject members the hub understands (SSF §3.3); a transmitter that marks another one
/// critical (`critical_subject_members`) needs a receiver the hub is not.
const UNDERSTOOD_MEMBERS: &[&str] = &[
    "user",
    "device",
    "session",
    "application",
    "tenant",
    "org_unit",
    "group",
];

/// The checked metadata of a transmitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub jwks_uri: String,
    pub configuration_endpoint: String,
    pub status_endpoint: Option<String>,
    pub verification_endpoint: Option<String>,
    /// The delivery-method URI to request, as the transmitter spells it.
    pub method: String,
}

/// Why metadata was not used: `refused` (it fails a check; an operator must act) or `failed`
/// (the transmitter could not be reached or answered an error; it may recover).
#[derive(Debug)]
pub enum DiscoverError {
    Refused(String),
    Failed(CallError),
}

/// The metadata URL of `issuer` (SSF §7.2): `https://h/t/a` → `https://h/.well-known/<name>/t/a`.
pub fn metadata_url(issuer: &str, name: &str) -> Option<Url> {
    let mut url = Url::parse(issuer).ok()?;
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("/.well-known/{name}{path}"));
    Some(url)
}

/// The 1.0 form of a delivery-method URI (legacy spellings only for a `legacy` source).
pub fn method_1_0(method: &str, legacy: bool) -> String {
    if legacy {
        if let Some((_, new)) = LEGACY_METHODS.iter().find(|(old, _)| *old == method) {
            return (*new).to_owned();
        }
    }
    method.to_owned()
}

/// Fetches and checks the metadata of `config.issuer`.
pub async fn discover(client: &Client, config: &UpstreamConfig) -> Result<Metadata, DiscoverError> {
    let mut names = vec!["ssf-configuration"];
    if config.legacy {
        names.extend(["sse-configuration", "risc-configuration"]);
    }
    let mut last = None;
    for name in names {
        let url = metadata_url(&config.issuer, name)
            .ok_or_else(|| DiscoverError::Refused("the issuer is not a URL".into()))?;
        // The metadata SHOULD be readable without authentication (SSF §7.1).
        match client.get_public(url).await {
            Ok(doc) => return check(&doc, config),
            // Not there (some servers answer 401 or 403 for unknown paths): the next name.
            Err(
                e @ CallError::Status {
                    status: 400..=499, ..
                },
            ) => last = Some(e),
            Err(e) => return Err(DiscoverError::Failed(e)),
        }
    }
    Err(DiscoverError::Failed(last.unwrap_or(CallError::Transport(
        "no metadata location".into(),
    ))))
}

/// The receiver's checks of SSF §7.2.4 and the interop profile, in order.
pub fn check(doc: &Value, config: &UpstreamConfig) -> Result<Metadata, DiscoverError> {
    let refuse = |m: String| Err(DiscoverError::Refused(m));
    let text = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_owned);
    let Some(issuer) = text("issuer") else {
        return refuse("the metadata has no `issuer`".into());
    };
    if issuer != config.issuer {
        return refuse(format!(
            "the metadata `issuer` {:?} is not the configured issuer {:?} (SSF §7.2.4)",
            crate::plain(&issuer, 200),
            config.issuer
        ));
    }
    match text("spec_version") {
        Some(v) if v.starts_with("1_0-ID") || v.is_empty() => {
            if !config.legacy {
                return refuse(format!(
                    "`spec_version` {:?} is a pre-1.0 draft; set legacy = true to accept it",
                    crate::plain(&v, 20)
                ));
            }
        }
        Some(_) => {}
        None if config.legacy => {}
        None => {
            return refuse(
                "the metadata has no `spec_version` (pre-1.0 transmitter); set legacy = true \
                 to accept it"
                    .into(),
            )
        }
    }
    let url_member = |k: &str| -> Result<Option<String>, DiscoverError> {
        match text(k) {
            None => Ok(None),
            Some(u) => match Url::parse(&u) {
                Ok(p) if p.scheme() == "https" || (p.scheme() == "http" && config.allow_http) => {
                    Ok(Some(u))
                }
                _ => Err(DiscoverError::Refused(format!("`{k}` is not an https URL"))),
            },
        }
    };
    let Some(jwks_uri) = url_member("jwks_uri")? else {
        return refuse("the metadata has no `jwks_uri`: the SETs could not be verified".into());
    };
    let Some(configuration_endpoint) = url_member("configuration_endpoint")? else {
        return refuse(
            "the metadata has no `configuration_endpoint`: no stream can be registered".into(),
        );
    };
    let status_endpoint = url_member("status_endpoint")?;
    let verification_endpoint = url_member("verification_endpoint")?;
    let wanted = if config.delivery == "poll" {
        DELIVERY_POLL
    } else {
        DELIVERY_PUSH
    };
    let method = match doc.get("delivery_methods_supported") {
        None => wanted.to_owned(),
        Some(Value::Array(methods)) => {
            let found = methods
                .iter()
                .filter_map(Value::as_str)
                .find(|m| method_1_0(m, config.legacy) == wanted);
            match found {
                Some(m) => m.to_owned(),
                None => {
                    return refuse(format!(
                        "the transmitter does not support {} delivery ({wanted} is not in \
                         `delivery_methods_supported`)",
                        config.delivery
                    ))
                }
            }
        }
        Some(_) => return refuse("`delivery_methods_supported` is not an array".into()),
    };
    if let Some(members) = doc.get("critical_subject_members") {
        let Some(members) = members.as_array() else {
            return refuse("`critical_subject_members` is not an array".into());
        };
        for m in members {
            let m = m.as_str().unwrap_or_default();
            if !UNDERSTOOD_MEMBERS.contains(&m) {
                return refuse(format!(
                    "the transmitter marks the subject member {:?} critical, which the hub does \
                     not understand (SSF §7.1 critical_subject_members)",
                    crate::plain(m, 40)
                ));
            }
        }
    }
    Ok(Metadata {
        jwks_uri,
        configuration_endpoint,
        status_endpoint,
        verification_endpoint,
        method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_insert_the_well_known_path_before_the_issuer_path() {
        let u = |i: &str| metadata_url(i, "ssf-configuration").map(|u| u.to_string());
        assert_eq!(
            u("https://tx.test").as_deref(),
            Some("https://tx.test/.well-known/ssf-configuration")
        );
        assert_eq!(
            u("https://tx.test/").as_deref(),
            Some("https://tx.test/.well-known/ssf-configuration")
        );
        assert_eq!(
            u("https://tx.test/tenants/acme/").as_deref(),
            Some("https://tx.test/.well-known/ssf-configuration/tenants/acme")
        );
    }

    fn config(legacy: bool, delivery: &str) -> UpstreamConfig {
        UpstreamConfig {
            id: "u".into(),
            issuer: "https://tx.test/t".into(),
            delivery: delivery.into(),
            event_types: vec![],
            bearer_token: Some(crate::config::Secret::new("t")),
            oauth: None,
            audiences: vec![],
            ingest_url: None,
            algorithms: vec!["ES256".into()],
            legacy,
            allow_http: false,
            owns: Default::default(),
        }
    }

    #[test]
    fn metadata_is_checked_before_use() {
        let good = serde_json::json!({"spec_version": "1_0", "issuer": "https://tx.test/t",
            "jwks_uri": "https://tx.test/jwks", "configuration_endpoint": "https://tx.test/s",
            "delivery_methods_supported": [DELIVERY_PUSH], "critical_subject_members": ["user"]});
        let m = check(&good, &config(false, "push"))
            .map_err(|_| ())
            .expect("good");
        assert_eq!(m.method, DELIVERY_PUSH);
        let refused = |doc: &Value, c: &UpstreamConfig| match check(doc, c) {
            Err(DiscoverError::Refused(m)) => m,
            _ => String::from("accepted"),
        };
        for (pointer, value, message) in [
            (
                "/issuer",
                serde_json::json!("https://tx.test/t/"),
                "`issuer`",
            ),
            (
                "/jwks_uri",
                serde_json::json!("http://tx.test/jwks"),
                "`jwks_uri`",
            ),
            (
                "/spec_version",
                serde_json::json!("1_0-ID2"),
                "spec_version",
            ),
            (
                "/critical_subject_members",
                serde_json::json!(["user", "x_unknown"]),
                "critical",
            ),
            (
                "/delivery_methods_supported",
                serde_json::json!([DELIVERY_POLL]),
                "push delivery",
            ),
        ] {
            let mut bad = good.clone();
            *bad.pointer_mut(pointer).expect("member") = value;
            let m = refused(&bad, &config(false, "push"));
            assert!(m.contains(message), "{pointer}: {m}");
        }
        let mut old = good.clone();
        let obj = old.as_object_mut().expect("object");
        obj.remove("spec_version");
        obj.insert(
            "delivery_methods_supported".into(),
            serde_json::json!(["https://schemas.openid.net/secevent/risc/delivery-method/push"]),
        );
        assert!(refused(&old, &config(false, "push")).contains("spec_version"));
        let m = check(&old, &config(true, "push"))
            .map_err(|_| ())
            .expect("legacy");
        // Requested as the transmitter spells it.
        assert_eq!(
            m.method,
            "https://schemas.openid.net/secevent/risc/delivery-method/push"
        );
    }

    #[test]
    fn legacy_methods_map_only_for_legacy_sources() {
        let old = "https://schemas.openid.net/secevent/risc/delivery-method/poll";
        assert_eq!(method_1_0(old, true), DELIVERY_POLL);
        assert_eq!(method_1_0(old, false), old);
    }
}
