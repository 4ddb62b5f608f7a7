//! The input guard of rule 6 of `DOMAIN.md`: kluis stores no BSN (citizen service number) and no
//! copy of an identity document. Values that are a valid BSN, or text holding a passport/ID-card
//! machine-readable zone (MRZ), are refused before anything is stored.
//!
//! The guard must never echo the value it refused: errors name the field only.

use crate::domain::InputError;

/// Refuses `text` (a field value, label or free text named `field`) when it holds a BSN or an MRZ.
pub fn check_text(field: &str, text: &str) -> Result<(), InputError> {
    if contains_bsn(text) {
        return Err(InputError::new(
            field,
            "value holds a BSN (citizen service number, nine digits passing the eleven-test); \
             kluis stores no BSNs",
        ));
    }
    if contains_mrz(text) {
        return Err(InputError::new(
            field,
            "value holds the machine-readable zone of an identity document; kluis stores no copies \
             of identity documents",
        ));
    }
    Ok(())
}

/// Refuses binary data named `field` when it is UTF-8 text that `check_text` refuses.
pub fn check_binary(field: &str, bytes: &[u8]) -> Result<(), InputError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => check_text(field, text),
        Err(_) => Ok(()),
    }
}

/// True when `s` as a whole is a valid BSN, also written with spaces or dots
/// (`111222333`, `111 222 333`, `1112.22.333`).
///
/// ```
/// use kluis::vault::guard::is_bsn;
/// assert!(is_bsn("111 222 333"));
/// assert!(!is_bsn("123456789")); // fails the eleven-test
/// ```
pub fn is_bsn(s: &str) -> bool {
    let s = s.trim();
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b' ' || b == b'.')
    {
        return false;
    }
    digits_are_bsn(s.bytes().filter(u8::is_ascii_digit))
}

/// True when `text` holds a valid BSN as a standalone number: a run of digits, optionally
/// grouped by single spaces or dots, with no other digit or letter next to it.
pub fn contains_bsn(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start = i == 0 || !bytes.get(i - 1).is_some_and(u8::is_ascii_alphanumeric);
        if bytes.get(i).is_some_and(u8::is_ascii_digit) && at_word_start {
            // Take digits with single separators between them.
            let mut digits = Vec::with_capacity(9);
            let mut j = i;
            while let Some(&b) = bytes.get(j) {
                if b.is_ascii_digit() {
                    digits.push(b);
                    j += 1;
                } else if (b == b' ' || b == b'.')
                    && bytes.get(j + 1).is_some_and(u8::is_ascii_digit)
                {
                    j += 1;
                } else {
                    break;
                }
            }
            let at_word_end = !bytes.get(j).is_some_and(u8::is_ascii_alphanumeric);
            if at_word_end && digits_are_bsn(digits.iter().copied()) {
                return true;
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    false
}

/// The eleven-test: nine digits d1..d9 with 9·d1 + 8·d2 + … + 2·d8 − d9 divisible by 11, and not
/// all zero.
fn digits_are_bsn(digits: impl Iterator<Item = u8>) -> bool {
    let mut sum: i64 = 0;
    let mut count = 0usize;
    let mut all_zero = true;
    for (i, d) in digits.enumerate() {
        if i >= 9 {
            return false;
        }
        let d = i64::from(d - b'0');
        all_zero &= d == 0;
        let weight = if i == 8 {
            -1
        } else {
            9 - i64::try_from(i).unwrap_or(0)
        };
        sum += weight * d;
        count += 1;
    }
    count == 9 && !all_zero && sum.rem_euclid(11) == 0
}

/// True when `text` holds a line of an ICAO 9303 machine-readable zone: 30 (TD1), 36 (TD2) or
/// 44 (TD3, passports) characters of `A-Z`, `0-9` and `<` with at least one filler `<`.
pub fn contains_mrz(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim();
        matches!(line.len(), 30 | 36 | 44)
            && line.contains('<')
            && line
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'<')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eleven_test_accepts_valid_bsn() {
        assert!(is_bsn("111222333"));
        assert!(is_bsn("111 222 333"));
        assert!(is_bsn("1112.22.333"));
        assert!(is_bsn(" 111222333 "));
    }

    #[test]
    fn eleven_test_rejects_invalid_numbers() {
        assert!(!is_bsn("123456789"));
        assert!(!is_bsn("000000000"));
        assert!(!is_bsn("11122233"));
        assert!(!is_bsn("1112223330"));
        assert!(!is_bsn("11122233x"));
        assert!(!is_bsn(""));
    }

    #[test]
    fn bsn_inside_text_is_found() {
        assert!(contains_bsn("bsn: 111222333."));
        assert!(contains_bsn("zie 111.222.333 in dossier"));
        assert!(!contains_bsn("order 123456789"));
        assert!(!contains_bsn("NL91ABNA0417164300"));
        assert!(!contains_bsn("06 12345678"));
        assert!(!contains_bsn("1111222333"));
        assert!(!contains_bsn("X111222333"));
    }

    #[test]
    fn mrz_lines_are_found() {
        let td3 = "P<NLDDE<BRUIJN<<WILLEKE<LISELOTTE<<<<<<<<<<<\nSPECI20142NLD6503101F2401151999999990<<<<<82";
        assert!(contains_mrz(td3));
        let td1 = "I<NLDSPECI20212999999990<<<<<<";
        assert!(contains_mrz(td1));
        assert!(!contains_mrz("Kastanjelaan 12, 1234 AB Utrecht"));
        assert!(!contains_mrz(&"A".repeat(44)));
    }

    #[test]
    fn check_text_names_the_field_not_the_value() {
        let err = check_text("fields[0].text", "111222333").unwrap_err();
        assert_eq!(err.field, "fields[0].text");
        assert!(!err.to_string().contains("111222333"));
    }

    proptest::proptest! {
        #[test]
        fn guard_never_panics(s in "\\PC{0,200}") {
            let _ = check_text("f", &s);
            let _ = is_bsn(&s);
        }

        #[test]
        fn every_valid_bsn_is_refused(d in proptest::collection::vec(0u8..10, 8)) {
            // Complete eight digits to a valid BSN when the check digit is a digit.
            let sum: i64 = d.iter().enumerate().map(|(i, &x)| (9 - i as i64) * i64::from(x)).sum();
            let check = sum.rem_euclid(11);
            proptest::prop_assume!(check < 10 && d.iter().any(|&x| x != 0));
            let s: String = d.iter().chain(std::iter::once(&(check as u8))).map(|x| char::from(b'0' + x)).collect();
            proptest::prop_assert!(is_bsn(&s));
            let text = format!("nummer {} ok", s);
            proptest::prop_assert!(check_text("f", &text).is_err());
        }
    }
}
