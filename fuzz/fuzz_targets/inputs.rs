//! Request fields as a case app sends them: every parser and the BSN/MRZ guard never panic, and
//! a refusal never repeats the value.
#![no_main]

use kluis::{
    domain::{FieldName, RecordId, SubjectId, parse_category, parse_purpose, parse_role},
    vault::guard,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        let _ = guard::check_binary("f", data);
        return;
    };
    let _ = SubjectId::parse("f", s);
    let _ = RecordId::parse("f", s);
    let _ = FieldName::parse("f", s);
    let _ = parse_purpose("f", s);
    let _ = parse_category("f", s);
    let _ = parse_role("f", s);
    if let Err(e) = guard::check_text("f", s) {
        assert!(s.len() < 9 || !e.to_string().contains(s));
    }
});
