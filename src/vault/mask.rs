//! Masked views: the form of a value a caller allowed `read-masked` (and not `read`) gets back.
//!
//! A `MaskTable` says which mask applies to which field name (`[masks]` in the configuration,
//! defaults by name); every other field gets `Mask::Full`, a fixed `****`. Each mask parses the
//! value as its type first; a value that does not parse is masked completely, so a malformed
//! value never shows more than a well-formed one would.
//!
//! Invariant: a mask returns only what its type's description below keeps (never more of the
//! value, never the value's length for `Full` and the e-mail's local part); intermediate copies
//! of the value are wiped on drop.
//! Invariant: knows neither gRPC nor SQL; never logs.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::domain::FieldName;

/// What replaces a value that is masked completely.
pub const FULL: &str = "****";

/// How a value is masked.
#[derive(Clone, Copy, Debug, Eq, Ord, PartialEq, PartialOrd)]
pub enum Mask {
    /// An IBAN: the country code and the last four characters, the rest `*`, in groups of four
    /// as printed: `NL** **** **** **43 00`.
    Iban,
    /// A phone number: the last two digits; every other digit `*`, a leading `+` and the
    /// separators (space, `-`, `.`, `(`, `)`) kept where they are: `+** * ******78`.
    Phone,
    /// An e-mail address: the first character of the local part, `***`, and the domain:
    /// `j***@example.nl`.
    Email,
    /// A date (of birth): the year only, `1984`, from `1984-03-07`, `07-03-1984` or
    /// `07/03/1984`.
    Date,
    /// Everything: `****`, whatever the value.
    Full,
}

impl Mask {
    /// Every mask a configuration may name (`Full` is the default, not named).
    pub const NAMED: &'static [Mask] = &[Mask::Iban, Mask::Phone, Mask::Email, Mask::Date];

    /// The mask's name in `[masks]`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mask::Iban => "iban",
            Mask::Phone => "phone",
            Mask::Email => "email",
            Mask::Date => "date",
            Mask::Full => "full",
        }
    }

    /// The field names a mask applies to when the configuration does not name them.
    pub fn default_fields(self) -> &'static [&'static str] {
        match self {
            Mask::Iban => &["iban", "bank_account"],
            Mask::Phone => &["phone", "phone_number", "mobile"],
            Mask::Email => &["email", "email_address"],
            Mask::Date => &["date_of_birth", "birth_date"],
            Mask::Full => &[],
        }
    }

    /// `value` masked. Never returns more of it than the mask keeps.
    pub fn apply(self, value: &str) -> String {
        let masked = match self {
            Mask::Iban => iban(value),
            Mask::Phone => phone(value),
            Mask::Email => email(value),
            Mask::Date => year(value),
            Mask::Full => None,
        };
        masked.unwrap_or_else(|| FULL.to_owned())
    }
}

/// Which mask applies to which field, by name. Built from `[masks]` (or the defaults).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct MaskTable(BTreeMap<String, Mask>);

impl Default for MaskTable {
    fn default() -> Self {
        let mut map = BTreeMap::new();
        for &mask in Mask::NAMED {
            for name in mask.default_fields() {
                map.insert((*name).to_owned(), mask);
            }
        }
        Self(map)
    }
}

impl MaskTable {
    /// The table of `[masks]`: for each mask named, the fields it applies to (replacing that
    /// mask's defaults); masks not named keep their defaults. Every problem is pushed onto
    /// `problems`, naming its key.
    pub fn from_config(raw: &BTreeMap<String, Vec<String>>, problems: &mut Vec<String>) -> Self {
        let mut lists: BTreeMap<Mask, Vec<String>> = Mask::NAMED
            .iter()
            .map(|&m| {
                (
                    m,
                    m.default_fields().iter().map(|s| (*s).to_owned()).collect(),
                )
            })
            .collect();
        for (key, fields) in raw {
            let Some(mask) = Mask::NAMED.iter().copied().find(|m| m.as_str() == key) else {
                problems.push(format!(
                    "`masks.{key}`: not a mask; the masks are {} (any other field a policy \
                     allows `read-masked` is masked completely)",
                    Mask::NAMED
                        .iter()
                        .map(|m| format!("`{}`", m.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                continue;
            };
            let mut names = Vec::with_capacity(fields.len());
            for (i, name) in fields.iter().enumerate() {
                match FieldName::parse(&format!("masks.{key}[{i}]"), name) {
                    Ok(n) => names.push(n.as_str().to_owned()),
                    Err(e) => problems.push(e.to_string()),
                }
            }
            lists.insert(mask, names);
        }
        let mut map: BTreeMap<String, Mask> = BTreeMap::new();
        for (mask, names) in lists {
            for name in names {
                if let Some(other) = map.insert(name.clone(), mask)
                    && other != mask
                {
                    problems.push(format!(
                        "`masks`: field `{name}` is given both mask `{}` and mask `{}`",
                        other.as_str(),
                        mask.as_str()
                    ));
                }
            }
        }
        Self(map)
    }

    /// The mask of field `name`: the configured one, or `Full`.
    pub fn of(&self, name: &str) -> Mask {
        self.0.get(name).copied().unwrap_or(Mask::Full)
    }
}

/// The IBAN mask, or `None` when `value` is no IBAN (length, characters, check digits).
fn iban(value: &str) -> Option<String> {
    let compact: Zeroizing<String> = Zeroizing::new(
        value
            .trim()
            .chars()
            .filter(|c| *c != ' ')
            .map(|c| c.to_ascii_uppercase())
            .collect(),
    );
    let bytes = compact.as_bytes();
    if !(15..=34).contains(&bytes.len())
        || !bytes.iter().all(u8::is_ascii_alphanumeric)
        || !bytes.get(..2)?.iter().all(u8::is_ascii_uppercase)
        || !bytes.get(2..4)?.iter().all(u8::is_ascii_digit)
        || !iban_checks(bytes)
    {
        return None;
    }
    let keep_tail = bytes.len() - 4;
    let masked: String = compact
        .chars()
        .enumerate()
        .map(|(i, c)| if i < 2 || i >= keep_tail { c } else { '*' })
        .collect();
    let mut out = String::with_capacity(masked.len() + masked.len() / 4);
    for (i, c) in masked.chars().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    Some(out)
}

/// ISO 13616 check: the first four characters moved to the end, letters as 10..35, mod 97 = 1.
fn iban_checks(bytes: &[u8]) -> bool {
    let (head, tail) = bytes.split_at(4);
    let mut rest: u32 = 0;
    for &b in tail.iter().chain(head) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rest = if v >= 10 {
            (rest * 100 + v) % 97
        } else {
            (rest * 10 + v) % 97
        };
    }
    rest == 1
}

/// The phone mask, or `None` when `value` is no phone number: digits with at most a leading
/// `+` and the separators space, `-`, `.`, `(`, `)`; 6 to 15 digits.
fn phone(value: &str) -> Option<String> {
    let value = value.trim();
    let digits = value.chars().filter(char::is_ascii_digit).count();
    if !(6..=15).contains(&digits) {
        return None;
    }
    let mut seen = 0;
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        match c {
            '0'..='9' => {
                seen += 1;
                out.push(if seen > digits - 2 { c } else { '*' });
            }
            '+' if i == 0 => out.push('+'),
            ' ' | '-' | '.' | '(' | ')' => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

/// The e-mail mask, or `None` when `value` is no address: one `@`, a local part, a domain of
/// labels (letters, digits, `-`) with at least one dot, no white space or control characters.
fn email(value: &str) -> Option<String> {
    let value = value.trim();
    let (local, domain) = value.split_once('@')?;
    let first = local.chars().next()?;
    if domain.contains('@')
        || local.chars().any(|c| c.is_whitespace() || c.is_control())
        || !domain.contains('.')
        || !domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'))
    {
        return None;
    }
    Some(format!("{first}***@{}", domain.to_lowercase()))
}

/// The year of a date `YYYY-MM-DD`, `DD-MM-YYYY` or `DD/MM/YYYY`, or `None` when `value` is
/// no valid date.
fn year(value: &str) -> Option<String> {
    let value = value.trim();
    let parts: Vec<&str> = value.split(['-', '/']).collect();
    let numeric = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit());
    let (y, m, d) = match parts.as_slice() {
        [y, m, d] if numeric(y, 4) && numeric(m, 2) && numeric(d, 2) && !value.contains('/') => {
            (*y, *m, *d)
        }
        [d, m, y] if numeric(y, 4) && numeric(m, 2) && numeric(d, 2) => {
            let seps: Vec<char> = value.chars().filter(|c| matches!(c, '-' | '/')).collect();
            if seps.first() != seps.get(1) {
                return None;
            }
            (*y, *m, *d)
        }
        _ => return None,
    };
    let date = jiff::civil::Date::new(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?).ok()?;
    Some(date.year().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iban_keeps_country_and_last_four_grouped_as_printed() {
        assert_eq!(
            Mask::Iban.apply("NL91ABNA0417164300"),
            "NL** **** **** **43 00"
        );
        assert_eq!(
            Mask::Iban.apply("  nl91 abna 0417 1643 00 "),
            "NL** **** **** **43 00"
        );
        assert_eq!(
            Mask::Iban.apply("DE89370400440532013000"),
            "DE** **** **** **** **30 00"
        );
        assert_eq!(Mask::Iban.apply("BE68539007547034"), "BE** **** **** 7034");
    }

    #[test]
    fn a_malformed_iban_is_masked_completely() {
        // Wrong check digits, too short, a character outside the alphabet, unicode digits.
        for bad in [
            "NL92ABNA0417164300",
            "NL91ABNA",
            "NL91ABNA04171643€0",
            "NL91ABNA041716430０",
            "",
            "4300",
            "nl91-abna-0417-1643-00",
        ] {
            assert_eq!(Mask::Iban.apply(bad), FULL, "{bad}");
        }
    }

    #[test]
    fn phone_keeps_the_last_two_digits_and_the_shape() {
        assert_eq!(Mask::Phone.apply("+31 6 12345678"), "+** * ******78");
        assert_eq!(Mask::Phone.apply("020-5551234"), "***-*****34");
        assert_eq!(Mask::Phone.apply("(020) 555.12.34"), "(***) ***.**.34");
        assert_eq!(Mask::Phone.apply(" 0612345678 "), "********78");
    }

    #[test]
    fn a_short_or_odd_phone_number_is_masked_completely() {
        for bad in [
            "12345",
            "1234567890123456",
            "06-1234x678",
            "06 1234 5678 ext",
            "0612+345678",
            "٠٦١٢٣٤٥٦٧٨",
            "",
        ] {
            assert_eq!(Mask::Phone.apply(bad), FULL, "{bad}");
        }
    }

    #[test]
    fn email_keeps_the_first_letter_and_the_domain() {
        assert_eq!(
            Mask::Email.apply("jan.jansen@example.nl"),
            "j***@example.nl"
        );
        assert_eq!(Mask::Email.apply("j@Example.NL"), "j***@example.nl");
        assert_eq!(Mask::Email.apply("Émile@voorbeeld.nl"), "É***@voorbeeld.nl");
        assert_eq!(
            Mask::Email.apply(" anna@mail.gemeente.nl "),
            "a***@mail.gemeente.nl"
        );
    }

    #[test]
    fn a_malformed_email_is_masked_completely() {
        for bad in [
            "jan.jansen",
            "@example.nl",
            "jan@localhost",
            "jan@@example.nl",
            "jan@exa mple.nl",
            "j an@example.nl",
            "jan@example..nl",
            "jan@example.nl@x.nl",
            "",
        ] {
            assert_eq!(Mask::Email.apply(bad), FULL, "{bad}");
        }
    }

    #[test]
    fn date_keeps_the_year_only() {
        assert_eq!(Mask::Date.apply("1984-03-07"), "1984");
        assert_eq!(Mask::Date.apply("07-03-1984"), "1984");
        assert_eq!(Mask::Date.apply("07/03/1984"), "1984");
        assert_eq!(Mask::Date.apply(" 2000-02-29 "), "2000");
    }

    #[test]
    fn an_impossible_or_odd_date_is_masked_completely() {
        for bad in [
            "1984-02-30",
            "1983-02-29",
            "1984-13-01",
            "7-3-1984",
            "07-03/1984",
            "1984/03/07",
            "1984",
            "maart 1984",
            "",
        ] {
            assert_eq!(Mask::Date.apply(bad), FULL, "{bad}");
        }
    }

    #[test]
    fn full_shows_nothing_of_the_value_not_even_its_length() {
        for v in [
            "",
            "x",
            "Kastanjelaan 12, 1234 AB Utrecht",
            "NL91ABNA0417164300",
        ] {
            assert_eq!(Mask::Full.apply(v), FULL);
        }
    }

    #[test]
    fn defaults_name_the_usual_fields_and_everything_else_is_full() {
        let t = MaskTable::default();
        assert_eq!(t.of("iban"), Mask::Iban);
        assert_eq!(t.of("phone"), Mask::Phone);
        assert_eq!(t.of("email"), Mask::Email);
        assert_eq!(t.of("date_of_birth"), Mask::Date);
        assert_eq!(t.of("birth_date"), Mask::Date);
        assert_eq!(t.of("debt"), Mask::Full);
    }

    #[test]
    fn configured_masks_replace_that_masks_defaults_and_problems_name_their_key() {
        let raw: BTreeMap<String, Vec<String>> = [
            ("iban".to_owned(), vec!["rekening".to_owned()]),
            ("email".to_owned(), vec!["Bad Name".to_owned()]),
            ("postcode".to_owned(), vec!["postcode".to_owned()]),
            ("phone".to_owned(), vec!["rekening".to_owned()]),
        ]
        .into_iter()
        .collect();
        let mut problems = Vec::new();
        let t = MaskTable::from_config(&raw, &mut problems);
        assert_eq!(t.of("iban"), Mask::Full, "the default list was replaced");
        assert_eq!(t.of("date_of_birth"), Mask::Date, "other defaults stay");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("`masks.postcode`")));
        assert!(problems.iter().any(|p| p.contains("`masks.email[0]`")));
        assert!(problems.iter().any(|p| p.contains("field `rekening`")));
    }
}
