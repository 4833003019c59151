//! RFC 9493 subject identifiers (and SSF complex subjects): legacy upgrade, parsing,
//! canonicalization and matching, on hostile JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use ssf_hub::set::Subject;
use ssf_hub::streams::subjects_match;

fuzz_target!(|data: &[u8]| {
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    Subject::upgrade_legacy(&mut value);
    let Ok(subject) = Subject::parse(&value) else {
        return;
    };
    let key = subject.canonical_key();
    // What the hub stores is its own parsed form; reading it back must name the same subject.
    let again = Subject::parse(&Value::Object(subject.as_map().clone()))
        .expect("a parsed subject parses again");
    assert_eq!(again.canonical_key(), key, "canonicalization is stable");
    assert!(
        subjects_match(&subject, &subject),
        "a subject matches itself"
    );
    let _ = (subject.format(), subject.is_complex());
});
