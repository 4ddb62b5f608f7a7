//! Proto ⇄ domain conversion. Parsing here turns raw strings into typed values (and runs the
//! BSN/MRZ guard), so the core never sees raw input. Errors name the request field and the limit.

use std::collections::{BTreeMap, HashMap};

use zeroize::Zeroizing;

use crate::{
    domain::{
        AccessContext, Channels, FieldName, InputError, Limits, Need, RecordId, SubjectId,
        check_free_text, parse_category,
    },
    pb,
    vault::{
        NewField, Value,
        evidence::{EvidenceStart, EvidenceTarget},
        guard,
    },
};

/// Longest label key in bytes.
pub const MAX_LABEL_KEY: usize = 64;
/// Longest label value in bytes.
pub const MAX_LABEL_VALUE: usize = 256;

/// Parses the access context, which every data call must carry.
pub fn context(
    ctx: Option<pb::AccessContext>,
    channels: &Channels,
) -> Result<AccessContext, InputError> {
    let ctx = ctx.ok_or_else(|| {
        InputError::new(
            "context",
            "an access context is required: declare at least `purpose`",
        )
    })?;
    AccessContext::parse(
        "context",
        &ctx.purpose,
        &ctx.case_ref,
        &ctx.justification,
        &ctx.channel,
        ctx.break_glass,
        channels,
    )
}

/// Parses the fields of a write, checking count, names, categories, sizes and the guard.
pub fn new_fields(
    fields: Vec<pb::FieldValue>,
    limits: &Limits,
) -> Result<Vec<NewField>, InputError> {
    if fields.len() > limits.max_fields {
        return Err(InputError::new(
            "fields",
            format!(
                "{} fields given; at most {} per request",
                fields.len(),
                limits.max_fields
            ),
        ));
    }
    fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let name = FieldName::parse(&format!("fields[{i}].name"), &f.name)?;
            let category = parse_category(&format!("fields[{i}].category"), &f.category)?;
            if f.masked {
                return Err(InputError::new(
                    format!("fields[{i}].masked"),
                    "a masked view is never stored: send the value itself, with `masked` unset",
                ));
            }
            let value = match f.value {
                Some(pb::field_value::Value::Text(t)) => {
                    let t = Zeroizing::new(t);
                    check_size(i, "text", t.len(), limits)?;
                    // A field named for a BSN holds one when its value reads as the number
                    // after a BSN label (`bsn` with `l23456782`, `€ 123456782`).
                    if guard::names_a_bsn(name.as_str()) {
                        guard::check_labelled_text(&format!("fields[{i}].text"), &t)?;
                    } else {
                        guard::check_text(&format!("fields[{i}].text"), &t)?;
                    }
                    Value::Text(t)
                }
                Some(pb::field_value::Value::Binary(b)) => {
                    let b = Zeroizing::new(b);
                    check_size(i, "binary", b.len(), limits)?;
                    // A field named for a BSN: its bytes read as the number after a label.
                    if guard::names_a_bsn(name.as_str()) {
                        guard::check_binary_labelled(&format!("fields[{i}].binary"), &b)?;
                    } else {
                        guard::check_binary(&format!("fields[{i}].binary"), &b)?;
                    }
                    Value::Binary(b)
                }
                None => {
                    return Err(InputError::new(
                        format!("fields[{i}]"),
                        "a value is required: set `text` or `binary`",
                    ));
                }
            };
            Ok(NewField {
                name,
                category,
                value,
            })
        })
        .collect()
}

fn check_size(i: usize, kind: &str, len: usize, limits: &Limits) -> Result<(), InputError> {
    if len > limits.max_value_bytes {
        return Err(InputError::new(
            format!("fields[{i}].{kind}"),
            format!(
                "value is {len} bytes; at most {} bytes per field",
                limits.max_value_bytes
            ),
        ));
    }
    Ok(())
}

/// Parses record labels: few, short, printable (`check_free_text`), and guarded (they are stored
/// in clear).
pub fn labels(
    labels: HashMap<String, String>,
    limits: &Limits,
) -> Result<BTreeMap<String, String>, InputError> {
    if labels.len() > limits.max_labels {
        return Err(InputError::new(
            "labels",
            format!("at most {} labels", limits.max_labels),
        ));
    }
    let mut out = BTreeMap::new();
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY
            && k.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
            });
        if !key_ok {
            return Err(InputError::new(
                "labels",
                format!(
                    "label keys are 1 to {MAX_LABEL_KEY} lowercase letters, digits, `_`, `-` or `.`"
                ),
            ));
        }
        // The key names the value in errors: only once the guard has passed it.
        guard::check_text("labels", &k)?;
        let field = format!("labels[{k:.32}]");
        check_free_text(&field, &v, "label value", MAX_LABEL_VALUE, Need::Optional)?;
        // A label named for a BSN (`bsn`, `klant.bsn`): its value read as the number after one.
        if guard::names_a_bsn(&k) {
            guard::check_labelled_text(&field, &v)?;
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// Where a time in a request may lie, relative to now, and how the error states it.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct TimeBounds {
    /// The earliest time accepted, in seconds from now (negative: before now); `None`: any
    /// time from 1970 on.
    pub earliest: Option<i64>,
    /// The latest time accepted, in seconds from now.
    pub latest: i64,
    /// The rule as the error states it.
    pub rule: &'static str,
}

/// How far ahead of kluis's clock a caller's clock may run: 5 minutes.
pub const CLOCK_SKEW_SECS: i64 = 300;

const DAY: i64 = 86_400;

/// A mandate's end: after now, at most five years (1,827 days) ahead.
pub const MANDATE_VALID_UNTIL: TimeBounds = TimeBounds {
    earliest: Some(1),
    latest: 1_827 * DAY,
    rule: "must lie after now and at most 5 years (1827 days) ahead",
};

/// When a subject request was received: within the past year (366 days), not in the future
/// beyond [`CLOCK_SKEW_SECS`].
pub const REQUEST_RECEIVED_AT: TimeBounds = TimeBounds {
    earliest: Some(-366 * DAY),
    latest: CLOCK_SKEW_SECS,
    rule: "must lie at most a year (366 days) ago and not in the future (5 minutes of clock \
           skew allowed)",
};

/// The start of an audit export: from 1970 on, not in the future beyond [`CLOCK_SKEW_SECS`].
pub const AUDIT_SINCE: TimeBounds = TimeBounds {
    earliest: None,
    latest: CLOCK_SKEW_SECS,
    rule: "must lie between 1970 and now",
};

/// Reads the time `t` of the request field `field` as unix seconds: `nanos` in
/// 0..=999,999,999 (and then dropped: kluis keeps seconds), `seconds` within `bounds` of
/// `now`. The one conversion of a request's timestamps; the error names the field and the
/// limit and does not repeat the time.
pub fn request_time(
    field: &str,
    t: &prost_types::Timestamp,
    now: i64,
    bounds: TimeBounds,
) -> Result<i64, InputError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(InputError::new(
            format!("{field}.nanos"),
            "must lie between 0 and 999999999",
        ));
    }
    let earliest = bounds.earliest.map_or(0, |e| now.saturating_add(e));
    let latest = now.saturating_add(bounds.latest);
    if t.seconds < earliest || t.seconds > latest {
        return Err(InputError::new(field, bounds.rule));
    }
    Ok(t.seconds)
}

/// Most seconds a scheduled key destruction may wait: 366 days (cancel it instead of waiting
/// longer).
pub const MAX_DESTROY_WAIT_SECS: u64 = 366 * 86_400;

/// Checks the waiting period of a key destruction (`wait_seconds`), when given.
pub fn destroy_wait(wait: Option<u64>) -> Result<Option<u64>, InputError> {
    match wait {
        Some(w) if w > MAX_DESTROY_WAIT_SECS => Err(InputError::new(
            "wait_seconds",
            format!("at most {MAX_DESTROY_WAIT_SECS} seconds (366 days)"),
        )),
        w => Ok(w),
    }
}

/// Checks a purpose key version named in a request: versions start at 1.
pub fn key_version(field: &str, version: u32) -> Result<u32, InputError> {
    if version == 0 {
        return Err(InputError::new(
            field,
            "key versions start at 1 (`kluis admin keys list` shows them)",
        ));
    }
    Ok(version)
}

/// Checks the id of something kluis issued (`tok_…`, `hold_…`, `mdt_…`, `req_…`, `root_…`)
/// named `field`: `prefix` and then lowercase ASCII letters, digits or `_`, at most 64 bytes,
/// and no BSN. An id goes onto the audit trail as given, so nothing else may pass; one of the
/// right form that names nothing is `NOT_FOUND`.
pub fn issued_id<'a>(field: &str, prefix: &str, s: &'a str) -> Result<&'a str, InputError> {
    if s.is_empty() {
        return Err(InputError::new(
            field,
            format!("the id is required (`{prefix}…`)"),
        ));
    }
    let ok = s.len() <= 64
        && s.strip_prefix(prefix).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
    if !ok {
        return Err(InputError::new(
            field,
            format!(
                "not an id of this kind: expected `{prefix}` and lowercase letters or digits, at \
                 most 64 bytes"
            ),
        ));
    }
    guard::check_text(field, s)?;
    Ok(s)
}

/// A unix time as a protobuf timestamp.
pub fn timestamp(unix: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix,
        nanos: 0,
    }
}

/// A disclosure register row for the wire.
pub fn disclosure(d: crate::store::DisclosureRow) -> pb::Disclosure {
    pb::Disclosure {
        disclosure_id: d.id,
        subject_id: d.subject,
        record_id: d.record_id,
        purpose: d.purpose.as_str().into(),
        fields: d.fields,
        categories: d.categories,
        recipient: d.recipient,
        recipient_kind: d.recipient_kind.as_str().into(),
        legal_basis: d.legal_basis,
        case_ref: d.case_ref,
        disclosed_at: Some(timestamp(d.disclosed_at)),
        recorded_by: d.recorded_by,
        automatic: d.automatic,
    }
}

/// Converts a decrypted value for the wire.
pub fn value(v: Value) -> pb::field_value::Value {
    match v {
        Value::Text(t) => pb::field_value::Value::Text(t.to_string()),
        Value::Binary(b) => pb::field_value::Value::Binary(b.to_vec()),
    }
}

/// Converts the first message of an upload.
pub fn evidence_start(start: pb::EvidenceStart) -> Result<EvidenceStart, InputError> {
    let target = match (start.subject_id.is_empty(), start.record_id.is_empty()) {
        (false, true) => {
            EvidenceTarget::Subject(SubjectId::parse("start.subject_id", &start.subject_id)?)
        }
        (true, false) => {
            EvidenceTarget::Record(RecordId::parse("start.record_id", &start.record_id)?)
        }
        _ => {
            return Err(InputError::new(
                "start.subject_id",
                "give exactly one of `subject_id` (a new record) and `record_id` (an existing one)",
            ));
        }
    };
    Ok(EvidenceStart {
        target,
        name: FieldName::parse("start.field", &start.field)?,
        category: parse_category("start.category", &start.category)?,
        media_type: start.media_type,
        file_name: start.file_name,
    })
}

/// Checks an evidence id (`ev_` and 32 lowercase hex digits).
pub fn evidence_id(field: &str, s: &str) -> Result<String, InputError> {
    let ok = s.len() == 35
        && s.starts_with("ev_")
        && s.bytes()
            .skip(3)
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(s.to_owned())
    } else if s.is_empty() {
        Err(InputError::new(field, "evidence id is required"))
    } else {
        Err(InputError::new(
            field,
            "not an evidence id: expected `ev_` and 32 lowercase hex digits",
        ))
    }
}
