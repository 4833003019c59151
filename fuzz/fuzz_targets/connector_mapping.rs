//! The built-in connector mappings on any authenticated webhook body: a vendor (or whoever holds
//! its secret) chooses the body, and the jq filter over it must end in events or an error,
//! never a panic. The first byte picks the mapping; the rest is the body.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ssf_hub::connectors::mapping::{Filter, MappingSpec, BUILTIN};

fn filters() -> &'static Vec<Filter> {
    static FILTERS: OnceLock<Vec<Filter>> = OnceLock::new();
    FILTERS.get_or_init(|| {
        BUILTIN
            .iter()
            .filter_map(|(_, text)| MappingSpec::parse(text).ok())
            .filter_map(|spec| Filter::compile(&spec.filter).ok())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((pick, body)) = data.split_first() else {
        return;
    };
    let filters = filters();
    if filters.is_empty() {
        return;
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let input = serde_json::json!({
        "body": body,
        "headers": {"x-github-event": "secret_scanning_alert"},
        "options": {"issuer": "https://org.example.test", "noncompliant_group": "g"},
        "connector": "fuzz",
    });
    let _ = filters[usize::from(*pick) % filters.len()].run(&input, 100);
});
