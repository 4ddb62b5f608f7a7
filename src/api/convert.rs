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
            let value = match f.value {
                Some(pb::field_value::Value::Text(t)) => {
                    let t = Zeroizing::new(t);
                    check_size(i, "text", t.len(), limits)?;
                    guard::check_text(&format!("fields[{i}].text"), &t)?;
                    Value::Text(t)
                }
                Some(pb::field_value::Value::Binary(b)) => {
                    let b = Zeroizing::new(b);
                    check_size(i, "binary", b.len(), limits)?;
                    guard::check_binary(&format!("fields[{i}].binary"), &b)?;
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
        out.insert(k, v);
    }
    Ok(out)
}

/// A unix time as a protobuf timestamp.
pub fn timestamp(unix: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix,
        nanos: 0,
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
