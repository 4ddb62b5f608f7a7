//! Equality search on encrypted fields: which fields of which purpose are searchable, and how a
//! value is brought to one spelling before it is tagged (`keys::IndexKeys::tags`).
//!
//! A searchable field's value gets a blind-index tag: the first `tag_bits` bits of an
//! HMAC-SHA-256 of its normalised value under a key of its own (purpose, field). Tags are short
//! on purpose, so that values collide: a tag narrows a search to candidates, and the vault
//! decides, opens and compares each candidate before anything is answered.
//!
//! Invariant: knows neither gRPC nor SQL; normalising never logs a value.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::domain::{FieldName, InputError, Purpose};

/// The tag width when `[search.<purpose>] tag_bits` is not set: with N tagged values, a search
/// opens about N / 2^16 candidates besides the hits.
pub const DEFAULT_TAG_BITS: u8 = 16;

/// The narrowest and widest tags allowed.
pub const TAG_BITS: std::ops::RangeInclusive<u8> = 8..=32;

/// How many values sharing a tag the width planner aims at when asked for no other number: a
/// search then compares about two records besides its hits, and each tag still stands for
/// about two values.
pub const DEFAULT_PLAN_CANDIDATES: u32 = 2;

/// The narrowest width (within `TAG_BITS`) at which `values` tagged values share each tag with
/// at most about `candidates` others: the smallest `bits` with `values / 2^bits <= candidates`
/// (CipherSweet's planner, by row count). Narrower leaks less and costs more candidates per
/// search; it pays to plan for the number of values the field will hold, as a change of width
/// takes a reindex.
pub fn planned_tag_bits(values: u64, candidates: u32) -> u8 {
    let candidates = u64::from(candidates.max(1));
    let mut bits = *TAG_BITS.start();
    while bits < *TAG_BITS.end() && values > candidates << bits {
        bits += 1;
    }
    bits
}

/// About how many other values share a value's tag among `values` tagged at `bits`: what a
/// search decides, opens and compares besides its hits.
pub fn candidates_per_search(values: u64, bits: u8) -> f64 {
    values as f64 / 2f64.powi(i32::from(bits))
}

/// The longest search value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;

/// How a searchable field's value is normalised.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum FieldType {
    /// An e-mail address: surrounding spaces dropped, lower case.
    Email,
    /// A phone number: digits only, with the country code (`+31` for a number written with a
    /// leading `0`, `00` read as `+`).
    Phone,
    /// An IBAN: spaces and dashes dropped, upper case.
    Iban,
    /// A postcode: spaces dropped, upper case (`1234 ab` is `1234AB`).
    Postcode,
    /// Any other text: surrounding spaces dropped, inner runs of white space one space, lower
    /// case.
    Text,
}

impl FieldType {
    /// Every type, by its name in the configuration.
    pub const ALL: &'static [(&'static str, FieldType)] = &[
        ("email", FieldType::Email),
        ("phone", FieldType::Phone),
        ("iban", FieldType::Iban),
        ("postcode", FieldType::Postcode),
        ("text", FieldType::Text),
    ];

    /// The type named `s`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, t)| *t)
    }

    /// The name of this type.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("text", |(n, _)| n)
    }

    /// The type a field gets by its name when none is configured: `email`, `phone`, `iban`
    /// and `postcode` (also as the end of a name, `contact_email`), else `text`.
    pub fn by_field_name(name: &str) -> Self {
        let last = name.rsplit(['_', '-', '.']).next().unwrap_or(name);
        for candidate in [name, last] {
            match candidate {
                "email" | "e-mail" | "mail" => return FieldType::Email,
                "phone" | "mobile" | "telephone" => return FieldType::Phone,
                "iban" => return FieldType::Iban,
                "postcode" | "zipcode" | "postal_code" => return FieldType::Postcode,
                _ => {}
            }
        }
        FieldType::Text
    }

    /// `value` in its one spelling. Fails (naming `field`, never the value) when nothing is
    /// left to search for.
    pub fn normalise(self, field: &str, value: &str) -> Result<Zeroizing<String>, InputError> {
        let out = Zeroizing::new(match self {
            FieldType::Email => value.trim().to_lowercase(),
            FieldType::Iban | FieldType::Postcode => value
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .flat_map(char::to_uppercase)
                .collect(),
            FieldType::Phone => {
                let trimmed = value.trim();
                let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
                if trimmed.starts_with('+') {
                    format!("+{digits}")
                } else if let Some(rest) = digits.strip_prefix("00") {
                    format!("+{rest}")
                } else if let Some(rest) = digits.strip_prefix('0') {
                    format!("+31{rest}")
                } else {
                    digits
                }
            }
            FieldType::Text => value
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase(),
        });
        if out.is_empty() || out.as_str() == "+" {
            return Err(InputError::new(
                field,
                format!(
                    "nothing is left to search for once the value is normalised as {}",
                    self.as_str()
                ),
            ));
        }
        Ok(out)
    }
}

/// The searchable fields of one purpose.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct PurposeSearch {
    /// Field name → how its values are normalised.
    pub fields: BTreeMap<String, FieldType>,
    /// The tag width in bits.
    pub tag_bits: u8,
}

/// Which fields of which purposes are searchable (`[search.<purpose>]`). Empty by default: a
/// tag tells which records share a value, so nothing is tagged that nobody chose to make
/// searchable.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct SearchConfig {
    purposes: BTreeMap<Purpose, PurposeSearch>,
}

impl SearchConfig {
    /// A configuration with `fields` of `purpose` searchable (types by field name).
    pub fn with(mut self, purpose: Purpose, fields: &[&str], tag_bits: u8) -> Self {
        self.purposes.insert(
            purpose,
            PurposeSearch {
                fields: fields
                    .iter()
                    .map(|f| ((*f).to_owned(), FieldType::by_field_name(f)))
                    .collect(),
                tag_bits,
            },
        );
        self
    }

    /// Sets the searchable fields of a purpose.
    pub fn set(&mut self, purpose: Purpose, search: PurposeSearch) {
        self.purposes.insert(purpose, search);
    }

    /// The searchable fields of `purpose`, if any.
    pub fn of(&self, purpose: Purpose) -> Option<&PurposeSearch> {
        self.purposes.get(&purpose)
    }

    /// How `field` of `purpose` is searched: its type and the tag width; `None` when it is not
    /// searchable.
    pub fn field(&self, purpose: Purpose, field: &str) -> Option<(FieldType, u8)> {
        let p = self.purposes.get(&purpose)?;
        p.fields.get(field).map(|t| (*t, p.tag_bits))
    }

    /// Every (purpose, field, type, width) that is searchable.
    pub fn all(&self) -> impl Iterator<Item = (Purpose, &str, FieldType, u8)> + '_ {
        self.purposes.iter().flat_map(|(purpose, p)| {
            p.fields
                .iter()
                .map(move |(f, t)| (*purpose, f.as_str(), *t, p.tag_bits))
        })
    }

    /// Validates `[search.<purpose>]` tables: purposes, field names, types and widths, every
    /// problem named by its key.
    pub fn from_raw(
        raw: impl IntoIterator<Item = (String, RawSearch)>,
        problems: &mut Vec<String>,
    ) -> Self {
        let mut out = SearchConfig::default();
        for (purpose_name, raw) in raw {
            let purpose = match purpose_name.parse::<Purpose>() {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("`search.{purpose_name}`: {e}"));
                    continue;
                }
            };
            let tag_bits = raw.tag_bits.unwrap_or(DEFAULT_TAG_BITS);
            if !TAG_BITS.contains(&tag_bits) {
                problems.push(format!(
                    "`search.{purpose_name}.tag_bits`: {tag_bits} is outside {}..={}",
                    TAG_BITS.start(),
                    TAG_BITS.end()
                ));
            }
            let mut fields = BTreeMap::new();
            for name in &raw.fields {
                if let Err(e) = FieldName::parse("fields", name) {
                    problems.push(format!("`search.{purpose_name}.fields`: {e}"));
                    continue;
                }
                fields.insert(name.clone(), FieldType::by_field_name(name));
            }
            for (name, type_name) in raw.types.unwrap_or_default() {
                let Some(t) = FieldType::from_name(&type_name) else {
                    problems.push(format!(
                        "`search.{purpose_name}.types.{name}`: `{type_name}` is not a type; types \
                         are {}",
                        FieldType::ALL
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    continue;
                };
                match fields.get_mut(&name) {
                    Some(slot) => *slot = t,
                    None => problems.push(format!(
                        "`search.{purpose_name}.types.{name}`: `{name}` is not in `fields`"
                    )),
                }
            }
            if fields.is_empty() {
                problems.push(format!(
                    "`search.{purpose_name}.fields`: name at least one field, or leave the table \
                     out"
                ));
            }
            out.set(purpose, PurposeSearch { fields, tag_bits });
        }
        out
    }
}

/// `[search.<purpose>]` as written.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSearch {
    /// The searchable fields.
    #[serde(default)]
    pub fields: Vec<String>,
    /// The tag width in bits (8 to 32; default 16).
    pub tag_bits: Option<u8>,
    /// A field's type where its name does not say it: `field = "email"`.
    pub types: Option<BTreeMap<String, String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_planner_picks_the_narrowest_width_that_keeps_the_candidates() {
        // A housing association's 30,000 addresses, two candidates per search: 14 bits
        // (30,000 / 16,384 = 1.8), as 13 bits would give 3.7.
        assert_eq!(planned_tag_bits(30_000, 2), 14);
        assert!(candidates_per_search(30_000, 14) <= 2.0);
        assert!(candidates_per_search(30_000, 13) > 2.0);
        // A million values: 19 bits for two, 18 for four, 20 for one.
        assert_eq!(planned_tag_bits(1_000_000, 2), 19);
        assert_eq!(planned_tag_bits(1_000_000, 4), 18);
        assert_eq!(planned_tag_bits(1_000_000, 1), 20);
        // Exactly on the edge: 2 * 2^16 values at two candidates is 16 bits, one more is 17.
        assert_eq!(planned_tag_bits(2 << 16, 2), 16);
        assert_eq!(planned_tag_bits((2 << 16) + 1, 2), 17);
        // Never outside the widths kluis accepts; zero candidates is read as one.
        assert_eq!(planned_tag_bits(0, 2), 8);
        assert_eq!(planned_tag_bits(u64::MAX, 2), 32);
        assert_eq!(planned_tag_bits(1_000_000, 0), 20);
        assert!((candidates_per_search(1_000_000, 16) - 15.26).abs() < 0.01);
    }

    fn n(t: FieldType, v: &str) -> String {
        t.normalise("f", v).unwrap().to_string()
    }

    #[test]
    fn values_get_one_spelling_per_type() {
        assert_eq!(
            n(FieldType::Email, "  J.Jansen@Example.NL "),
            "j.jansen@example.nl"
        );
        assert_eq!(n(FieldType::Phone, "06-12 34 56 78"), "+31612345678");
        assert_eq!(n(FieldType::Phone, "+31 6 1234 5678"), "+31612345678");
        assert_eq!(n(FieldType::Phone, "0031612345678"), "+31612345678");
        assert_eq!(
            n(FieldType::Iban, "nl91 abna 0417-1643 00"),
            "NL91ABNA0417164300"
        );
        assert_eq!(n(FieldType::Postcode, "1234 ab"), "1234AB");
        assert_eq!(n(FieldType::Text, "  Jan \t de  Vries "), "jan de vries");
        // The twin: another value stays another value.
        assert_ne!(
            n(FieldType::Phone, "0612345679"),
            n(FieldType::Phone, "0612345678")
        );
        assert_ne!(n(FieldType::Postcode, "1234 AC"), "1234AB");
    }

    #[test]
    fn nothing_left_to_search_for_is_refused_without_the_value() {
        for (t, v) in [
            (FieldType::Email, "   "),
            (FieldType::Phone, "+ -- "),
            (FieldType::Iban, " - "),
            (FieldType::Text, "\t"),
        ] {
            let e = t.normalise("phone", v).unwrap_err().to_string();
            assert!(e.contains("phone"), "{e}");
        }
    }

    #[test]
    fn types_follow_field_names_unless_configured() {
        assert_eq!(FieldType::by_field_name("email"), FieldType::Email);
        assert_eq!(FieldType::by_field_name("contact_email"), FieldType::Email);
        assert_eq!(FieldType::by_field_name("iban"), FieldType::Iban);
        assert_eq!(FieldType::by_field_name("phone"), FieldType::Phone);
        assert_eq!(FieldType::by_field_name("postcode"), FieldType::Postcode);
        assert_eq!(FieldType::by_field_name("surname"), FieldType::Text);
    }

    #[test]
    fn configuration_problems_are_named_by_key() {
        let mut problems = Vec::new();
        let raw = vec![
            (
                "gossip".to_owned(),
                RawSearch {
                    fields: vec!["email".into()],
                    ..RawSearch::default()
                },
            ),
            (
                "contract".to_owned(),
                RawSearch {
                    fields: vec!["email".into(), "Bad Name".into()],
                    tag_bits: Some(64),
                    types: Some(BTreeMap::from([
                        ("email".to_owned(), "telepathy".to_owned()),
                        ("other".to_owned(), "text".to_owned()),
                    ])),
                },
            ),
        ];
        SearchConfig::from_raw(raw, &mut problems);
        let all = problems.join("\n");
        for key in [
            "`search.gossip`",
            "`search.contract.tag_bits`",
            "`search.contract.fields`",
            "`search.contract.types.email`",
            "`search.contract.types.other`",
        ] {
            assert!(all.contains(key), "{key} missing in:\n{all}");
        }
        let mut none = Vec::new();
        let ok = SearchConfig::from_raw(
            vec![(
                "contract".to_owned(),
                RawSearch {
                    fields: vec!["email".into(), "mail_address".into()],
                    tag_bits: Some(12),
                    types: Some(BTreeMap::from([(
                        "mail_address".to_owned(),
                        "email".to_owned(),
                    )])),
                },
            )],
            &mut none,
        );
        assert!(none.is_empty(), "{none:?}");
        assert_eq!(
            ok.field(Purpose::Contract, "mail_address"),
            Some((FieldType::Email, 12))
        );
        assert_eq!(ok.field(Purpose::Contract, "phone"), None);
    }
}
