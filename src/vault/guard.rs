//! The input guard of rule 6 of `DOMAIN.md`: kluis stores no BSN (citizen service number) and no
//! copy of an identity document. Values that hold a valid BSN, text holding a passport/ID-card
//! machine-readable zone (MRZ), and file names that say they are an identity document are
//! refused before anything is stored.
//!
//! The guard reads text the way a person does, not byte by byte. Before it looks for a BSN it
//! folds the text to Unicode compatibility form (NFKC: full-width `１１１` becomes `111`), reads
//! every Unicode decimal digit by its value (Arabic-Indic `١١١`, Devanagari `१११`, ...), drops
//! invisible characters ([`INVISIBLE`] and every other format character: zero-width spaces and
//! joiners, word joiner, byte order mark, soft hyphen, direction marks, variation selectors,
//! tags) and treats every kind of space, dots, dashes, the minus sign,
//! slashes and underscores as separators between groups of digits, up to
//! [`MAX_SEPARATOR_RUN`] of them in a row (`111 - 222 - 333`).
//!
//! What counts as a BSN in text (README.md, "What the BSN guard refuses", says why):
//!
//! - a run of nine digits that passes the eleven-test, standing on its own;
//! - nine digits in the usual groupings `3-3-3` and `4-2-3` anywhere in a row of numbers, and
//!   any grouping of nine digits when that is the whole row (`1 1 1 2 2 2 3 3 3`);
//! - eight digits that pass the eleven-test with a leading zero put back (a BSN that lost its
//!   zero in a spreadsheet), when they stand alone as one run and are not a date
//!   (`ddmmyyyy`, `yyyymmdd`), or in any grouping after a BSN label (`bsn: 1234 5672`).
//!
//! Letters touching the digits make them part of a code, not a number (`X111222333`, an IBAN's
//! `ABNA0417164300`), except letters that say "BSN" (`BSN111222333`, `bsn-nummer111222333`,
//! `burgerservicenummer`, `sofinummer`) and the country prefix `NL` of an old VAT number that
//! held the BSN (`NL111222333B01`). Letters across a separator hide nothing:
//! `REL-111222333` is refused. Numbers that are plainly something else are left alone: a row
//! of numbers after `+` or after an area code in brackets (phone numbers), after a currency
//! sign (amounts), digits continued by `,` or `:` and a digit (`123.456.789,00`, `9:30`), and
//! dates `dd-mm-yyyy` / `yyyy-mm-dd` inside a row of numbers.
//!
//! The guard must never echo the value it refused: errors name the field only.

use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::domain::InputError;

/// Most separator characters in a row between two groups of digits of one number.
pub const MAX_SEPARATOR_RUN: usize = 3;

/// Refuses `text` (a field value, label or free text named `field`) when it holds a BSN or an MRZ.
pub fn check_text(field: &str, text: &str) -> Result<(), InputError> {
    if contains_bsn(text) {
        return Err(InputError::new(
            field,
            "value holds a BSN (citizen service number, nine digits passing the eleven-test, or \
             eight with the leading zero left off); kluis stores no BSNs",
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

/// Refuses binary data named `field` when it is text that `check_text` refuses: UTF-8, or
/// UTF-16 (little- or big-endian) recognised by its byte order mark or by the zero bytes of
/// mostly ASCII-range text.
pub fn check_binary(field: &str, bytes: &[u8]) -> Result<(), InputError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        check_text(field, text)?;
    }
    if let Some(text) = decode_utf16(bytes) {
        check_text(field, &text)?;
    }
    Ok(())
}

/// Refuses a file name named `field` that says the file is an identity document: Dutch and
/// English names of passports, identity cards, driving licences and residence permits, also
/// with "kopie", "scan" or "copy" glued on (`paspoortkopie.pdf`).
///
/// The name is read as words: accents are stripped (NFKD), case is ignored, and everything but
/// letters (`-`, `_`, `.`, spaces, digits) separates words; up to four consecutive words are
/// also read together, so `id-kaart`, `ID card`, `id_card` and `driver's license` are found.
/// Only whole words count: `rapid.jpg`, `idee.txt` and `video.mp4` pass, and so do compounds
/// that name something other than the document itself (`paspoortfoto-beleid.pdf`, a policy on
/// passport photos). A bare `id` says nothing and passes.
///
/// ```
/// use kluis::vault::guard::check_file_name;
/// assert!(check_file_name("file_name", "Kopie ID kaart.png").is_err());
/// assert!(check_file_name("file_name", "rapid.jpg").is_ok());
/// ```
pub fn check_file_name(field: &str, name: &str) -> Result<(), InputError> {
    if names_identity_document(name) {
        return Err(InputError::new(
            field,
            "the file name says the file is an identity document; kluis stores no copies of \
             identity documents",
        ));
    }
    Ok(())
}

/// True when `s` as a whole is a valid BSN in any of the spellings [`contains_bsn`] finds,
/// optionally after a BSN label (`111222333`, `111 222 333`, `1112.22.333`, `１１１２２２３３３`,
/// `BSN111222333`, `bsn: 111-222-333`, `12345672`). A code such as `REL-111222333` is not a
/// BSN as a whole (but [`contains_bsn`] finds one in it).
///
/// ```
/// use kluis::vault::guard::is_bsn;
/// assert!(is_bsn("111 222 333"));
/// assert!(!is_bsn("123456789")); // fails the eleven-test
/// ```
pub fn is_bsn(s: &str) -> bool {
    let u = units(s);
    let (Some(first), Some(last)) = (
        u.iter().position(|x| matches!(x, Unit::Digit(_))),
        u.iter().rposition(|x| matches!(x, Unit::Digit(_))),
    ) else {
        return false;
    };
    // Before the digits: nothing but separators, label punctuation and one BSN label.
    let head = u.get(..first).unwrap_or_default();
    let label = head
        .iter()
        .rposition(|x| matches!(x, Unit::Letter(_)))
        .map(|end| word_before(&u, end + 1));
    let label_start = match &label {
        Some(Word { marker: None, .. }) => return false,
        Some(word) => word.start,
        None => first,
    };
    let head_ok = head
        .iter()
        .enumerate()
        .all(|(i, x)| i >= label_start || x.is_separator() || matches!(x, Unit::Other(':' | '#')));
    let tail_ok = u
        .get(last + 1..)
        .unwrap_or_default()
        .iter()
        .all(Unit::is_separator);
    // An old VAT number ends in `B` and two digits after the BSN.
    let vat = matches!(
        label,
        Some(Word {
            marker: Some(Marker::Nl),
            ..
        })
    ) && tail_ok
        && last >= 3
        && matches!(u.get(last - 2), Some(Unit::Letter('b')))
        && matches!(u.get(last - 1), Some(Unit::Digit(_)));
    let digits_end = if vat { last - 2 } else { last + 1 };
    head_ok && tail_ok && find_bsns(&u, |start, end| start == first && end == digits_end)
}

/// True when `text` holds a valid BSN in any of the spellings described in the module
/// documentation: nine digits passing the eleven-test (or eight, the leading zero left off),
/// in any Unicode digits, grouped by any separators, possibly after a BSN label.
pub fn contains_bsn(text: &str) -> bool {
    find_bsns(&units(text), |_, _| true)
}

/// True when `text` holds part of an ICAO 9303 machine-readable zone: the data line of a
/// passport (TD3) or TD2 card with its three check digits, the data line of an ID card (TD1)
/// with its two check digits, the first line of an ID card with the check digit of its
/// document number, or a name line (`P<NLDDE<BRUIJN<<WILLEKE<<<<…`). Case, spaces and line
/// breaks are ignored, so the lines may be joined, split or lower-cased.
pub fn contains_mrz(text: &str) -> bool {
    let mut run: Vec<u8> = Vec::new();
    for c in text.nfkc() {
        if c.is_whitespace() || is_invisible(c) {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '<' {
            run.push(c.to_ascii_uppercase() as u8);
        } else {
            if mrz_run(&run) {
                return true;
            }
            run.clear();
        }
    }
    mrz_run(&run)
}

// ---------------------------------------------------------------------------------------------
// Reading text as units.

/// One character of normalised text as the BSN scanner sees it.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Unit {
    /// A decimal digit of any script, by value.
    Digit(u8),
    /// Any white space.
    Space,
    /// `-`, the dashes U+2010..U+2015, the minus sign, `_` and slashes.
    Joiner,
    /// A dot or a middle dot.
    Dot,
    /// A letter, ASCII letters lower-cased.
    Letter(char),
    /// Anything else.
    Other(char),
}

impl Unit {
    fn is_separator(&self) -> bool {
        matches!(self, Unit::Space | Unit::Joiner | Unit::Dot)
    }

    fn is_digit(&self) -> bool {
        matches!(self, Unit::Digit(_))
    }

    fn is_letter(&self) -> bool {
        matches!(self, Unit::Letter(_))
    }
}

/// `text` in NFKC, without invisible characters, as units.
fn units(text: &str) -> Vec<Unit> {
    text.nfkc()
        .filter(|&c| !is_invisible(c))
        .map(classify)
        .collect()
}

/// Characters that show nothing, or change how the text around them shows, as ranges: the one
/// table of them in kluis. The guard reads text without them (a BSN with a zero-width space
/// between its digits is still a BSN), and `domain::check_free_text` refuses every free text
/// kept in clear that holds one, so that nothing on the trail or in a rule hides a value or
/// displays otherwise than it reads.
///
/// Besides every other format character (general category Cf, which `is_invisible` also asks
/// Unicode about) these are: format and direction controls, and characters of other categories
/// that render as nothing (fillers, joiners, variation selectors, the blank braille pattern).
pub const INVISIBLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),   // soft hyphen
    ('\u{034F}', '\u{034F}'),   // combining grapheme joiner
    ('\u{061C}', '\u{061C}'),   // Arabic letter mark
    ('\u{115F}', '\u{1160}'),   // Hangul choseong and jungseong fillers
    ('\u{17B4}', '\u{17B5}'),   // Khmer inherent vowels
    ('\u{180B}', '\u{180F}'),   // Mongolian free variation selectors, vowel separator
    ('\u{200B}', '\u{200F}'),   // zero-width space, non-joiner, joiner; LRM, RLM
    ('\u{202A}', '\u{202E}'),   // direction embeddings, pop, overrides (LRO, RLO)
    ('\u{2060}', '\u{2064}'),   // word joiner, invisible operators
    ('\u{2066}', '\u{2069}'),   // direction isolates
    ('\u{206A}', '\u{206F}'),   // deprecated format characters
    ('\u{2800}', '\u{2800}'),   // braille pattern blank
    ('\u{3164}', '\u{3164}'),   // Hangul filler
    ('\u{FE00}', '\u{FE0F}'),   // variation selectors
    ('\u{FEFF}', '\u{FEFF}'),   // zero-width no-break space, byte order mark
    ('\u{FFA0}', '\u{FFA0}'),   // half-width Hangul filler
    ('\u{FFF9}', '\u{FFFB}'),   // interlinear annotation controls
    ('\u{1BCA0}', '\u{1BCA3}'), // shorthand format controls
    ('\u{1D173}', '\u{1D17A}'), // musical symbol format controls
    ('\u{E0000}', '\u{E007F}'), // tag characters
    ('\u{E0100}', '\u{E01EF}'), // variation selectors supplement
];

/// Whether `c` shows nothing or changes how the text around it shows: in [`INVISIBLE`], or a
/// format character (general category Cf).
pub fn is_invisible(c: char) -> bool {
    // No ASCII character is one; field values are mostly ASCII and read whole.
    !c.is_ascii() && INVISIBLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
        || c.general_category() == GeneralCategory::Format
}

fn classify(c: char) -> Unit {
    if let Some(d) = decimal_digit(c) {
        return Unit::Digit(d);
    }
    if c.is_whitespace() {
        return Unit::Space;
    }
    match c {
        '.' | '\u{00B7}' | '\u{2027}' | '\u{2219}' | '\u{22C5}' => Unit::Dot,
        '-' | '_' | '/' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{2215}' => Unit::Joiner,
        c if c.is_alphabetic() => Unit::Letter(c.to_ascii_lowercase()),
        c => Unit::Other(c),
    }
}

/// The value of a Unicode decimal digit (general category Nd) of any script.
///
/// Unicode assigns decimal digits only in contiguous runs of ten, ascending from zero (a
/// stability guarantee), so the value is the number of digits before `c` in its run, modulo
/// ten (a few runs, such as the mathematical digits, follow each other directly).
fn decimal_digit(c: char) -> Option<u8> {
    if c.is_ascii_digit() {
        return Some(c as u8 - b'0');
    }
    if c.is_ascii() || c.general_category() != GeneralCategory::DecimalNumber {
        return None;
    }
    let mut code = u32::from(c);
    let mut before = 0u32;
    while before < 100 {
        match code.checked_sub(1).and_then(char::from_u32) {
            Some(p) if p.general_category() == GeneralCategory::DecimalNumber => {
                before += 1;
                code -= 1;
            }
            _ => break,
        }
    }
    u8::try_from(before % 10).ok()
}

// ---------------------------------------------------------------------------------------------
// BSNs.

/// A label in front of a number that says what it is.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Marker {
    /// `BSN`, `bsn-nummer`, `burgerservicenummer`, `sofinummer`, ...
    Bsn,
    /// The country prefix of an old VAT number, `NL` + BSN + `B01`.
    Nl,
}

/// A word of letters (with joiners inside) that ends where a number starts.
struct Word {
    /// Index of its first unit.
    start: usize,
    /// Whether it is a label saying "BSN".
    marker: Option<Marker>,
}

/// The word of letters and inner joiners that ends just before `end`.
fn word_before(u: &[Unit], end: usize) -> Word {
    let mut start = end;
    let mut letters = String::new();
    let mut last_segment = None;
    while start > 0 && end - start < 48 {
        match u.get(start - 1) {
            Some(Unit::Letter(c)) => {
                letters.insert(0, *c);
                start -= 1;
            }
            Some(Unit::Joiner)
                if start >= 2 && u.get(start - 2).is_some_and(Unit::is_letter) && start < end =>
            {
                last_segment.get_or_insert_with(|| letters.clone());
                start -= 1;
            }
            _ => break,
        }
    }
    let last_segment = last_segment.unwrap_or_else(|| letters.clone());
    let marker = if last_segment == "nl" {
        Some(Marker::Nl)
    } else if letters.contains("bsn")
        || letters.contains("burgerservicenummer")
        || letters.starts_with("sofi")
    {
        Some(Marker::Bsn)
    } else {
        None
    };
    Word { start, marker }
}

/// A run of digits.
#[derive(Clone, Debug)]
struct Group {
    /// Index of its first unit.
    start: usize,
    /// Index just past its last unit.
    end: usize,
    /// The digit values.
    digits: Vec<u8>,
}

/// How a row of numbers meets what stands before or after it.
enum Edge {
    /// The row is a number of its own; `Some` when a BSN label stands before it.
    Free(Option<Marker>),
    /// The outer group belongs to a code or a longer numeral (letters touch it, or `,`/`:` and
    /// a digit continue it): that group is left out.
    Bound,
    /// The row is a phone number or an amount: all of it is left out.
    Drop,
}

fn is_currency(c: char) -> bool {
    c.general_category() == GeneralCategory::CurrencySymbol
}

/// How the row whose first digit is at `s` meets what stands before it.
fn left_edge(u: &[Unit], s: usize) -> Edge {
    let before = |i: usize| s.checked_sub(i).and_then(|j| u.get(j)).copied();
    match before(1) {
        Some(Unit::Letter(_)) => match word_before(u, s).marker {
            Some(m) => return Edge::Free(Some(m)),
            None => return Edge::Bound,
        },
        Some(Unit::Other(',' | ':')) if before(2).is_some_and(|x| x.is_digit()) => {
            return Edge::Bound;
        }
        _ => {}
    }
    // Look back over a few separators and label punctuation.
    let mut i = s;
    while i > 0 && s - i < 4 {
        match u.get(i - 1) {
            Some(x) if x.is_separator() || matches!(x, Unit::Other(':' | '#')) => i -= 1,
            _ => break,
        }
    }
    let at = |k: usize| i.checked_sub(k).and_then(|j| u.get(j)).copied();
    match at(1) {
        Some(Unit::Other('+')) => Edge::Drop,
        Some(Unit::Other(')')) if at(2).is_some_and(|x| x.is_digit()) => Edge::Drop,
        Some(Unit::Other(c)) if is_currency(c) => Edge::Drop,
        Some(Unit::Letter(_)) => Edge::Free(word_before(u, i).marker),
        _ => Edge::Free(None),
    }
}

/// How the row whose last digit ends at `e` meets what stands after it; `marker` is the label
/// before the row.
fn right_edge(u: &[Unit], e: usize, marker: Option<Marker>) -> Edge {
    let after = |k: usize| u.get(e + k).copied();
    match after(0) {
        Some(Unit::Letter('b'))
            if marker == Some(Marker::Nl)
                && after(1).is_some_and(|x| x.is_digit())
                && after(2).is_some_and(|x| x.is_digit())
                && !after(3).is_some_and(|x| x.is_digit() || x.is_letter()) =>
        {
            Edge::Free(marker)
        }
        Some(Unit::Letter(_)) => Edge::Bound,
        Some(Unit::Other(',' | ':')) if after(1).is_some_and(|x| x.is_digit()) => Edge::Bound,
        Some(Unit::Other(c)) if is_currency(c) => Edge::Drop,
        Some(Unit::Space) if matches!(after(1), Some(Unit::Other(c)) if is_currency(c)) => {
            Edge::Drop
        }
        _ => Edge::Free(marker),
    }
}

/// Calls `found(start, end)` with the unit range of every BSN in `u` until it returns true;
/// returns whether it did.
fn find_bsns(u: &[Unit], mut found: impl FnMut(usize, usize) -> bool) -> bool {
    let mut groups: Vec<Group> = Vec::new();
    let mut i = 0;
    while i < u.len() {
        // Collect one row of digit groups joined by short runs of separators.
        if !u.get(i).is_some_and(Unit::is_digit) {
            i += 1;
            continue;
        }
        groups.clear();
        loop {
            let start = i;
            let mut digits = Vec::new();
            while let Some(Unit::Digit(d)) = u.get(i) {
                digits.push(*d);
                i += 1;
            }
            groups.push(Group {
                start,
                end: i,
                digits,
            });
            let mut j = i;
            while u.get(j).is_some_and(Unit::is_separator) && j - i < MAX_SEPARATOR_RUN {
                j += 1;
            }
            if j > i && u.get(j).is_some_and(Unit::is_digit) {
                i = j;
            } else {
                break;
            }
        }
        if row_has_bsn(u, &groups, &mut found) {
            return true;
        }
    }
    false
}

/// Whether the row `groups` holds a BSN that `found` accepts.
fn row_has_bsn(u: &[Unit], groups: &[Group], found: &mut impl FnMut(usize, usize) -> bool) -> bool {
    let (Some(first), Some(last)) = (groups.first(), groups.last()) else {
        return false;
    };
    let whole_row_is_one_group = groups.len() == 1;
    let mut lo = 0;
    let mut hi = groups.len();
    let marker = match left_edge(u, first.start) {
        Edge::Drop => return false,
        Edge::Bound => {
            lo = 1;
            None
        }
        Edge::Free(m) => m,
    };
    match right_edge(u, last.end, marker) {
        Edge::Drop => return false,
        Edge::Bound => hi -= 1,
        Edge::Free(_) => {}
    }
    let Some(row) = groups.get(lo..hi).filter(|r| !r.is_empty()) else {
        return false;
    };
    let span = |w: &[Group]| {
        w.first()
            .zip(w.last())
            .map_or((0, 0), |(a, b)| (a.start, b.end))
    };
    let mut test = |w: &[Group], eight_ok: bool| {
        let digits: Vec<u8> = w.iter().flat_map(|g| g.digits.iter().copied()).collect();
        let (start, end) = span(w);
        let bsn = match digits.len() {
            9 => eleven_test(&digits),
            8 if eight_ok => {
                eleven_test_with_zero(&digits) && (marker.is_some() || !is_date8(&digits))
            }
            _ => false,
        };
        bsn && found(start, end)
    };
    // Nine digits as one run, anywhere in the row.
    for g in row {
        if g.digits.len() == 9 && test(std::slice::from_ref(g), false) {
            return true;
        }
    }
    // The usual groupings 3-3-3 and 4-2-3, anywhere in the row.
    for w in row.windows(3) {
        let lens: Vec<usize> = w.iter().map(|g| g.digits.len()).collect();
        if matches!(lens.as_slice(), [3, 3, 3] | [4, 2, 3]) && test(w, false) {
            return true;
        }
    }
    // Any grouping when it is the whole row, with dates in it set apart.
    let mut k = 0;
    let mut segment_start = 0;
    while k <= row.len() {
        let date = row.get(k..k + 3).is_some_and(|w| is_date_triple(u, w));
        if date || k == row.len() {
            if let Some(seg) = row.get(segment_start..k).filter(|s| !s.is_empty()) {
                let whole = seg.len() == row.len();
                let eight_ok = (whole && whole_row_is_one_group && lo == 0 && hi == groups.len())
                    || (whole && marker == Some(Marker::Bsn));
                if test(seg, eight_ok) {
                    return true;
                }
            }
            segment_start = k + 3;
            k += 3;
        } else {
            k += 1;
        }
    }
    false
}

/// The eleven-test: nine digits d1..d9 with 9·d1 + 8·d2 + … + 2·d8 − d9 divisible by 11, and not
/// all zero.
fn eleven_test(digits: &[u8]) -> bool {
    if digits.len() != 9 || digits.iter().all(|&d| d == 0) {
        return false;
    }
    let sum: i64 = digits
        .iter()
        .zip([9i64, 8, 7, 6, 5, 4, 3, 2, -1])
        .map(|(&d, w)| w * i64::from(d))
        .sum();
    sum.rem_euclid(11) == 0
}

/// The eleven-test of eight digits with the leading zero put back.
fn eleven_test_with_zero(digits: &[u8]) -> bool {
    let mut nine = Vec::with_capacity(9);
    nine.push(0);
    nine.extend_from_slice(digits);
    eleven_test(&nine)
}

fn number(digits: &[u8]) -> u32 {
    digits.iter().fold(0u32, |n, &d| {
        n.saturating_mul(10).saturating_add(u32::from(d))
    })
}

fn is_date(day: u32, month: u32, year: u32) -> bool {
    (1..=31).contains(&day) && (1..=12).contains(&month) && (1900..=2099).contains(&year)
}

/// Eight digits that read as a date `ddmmyyyy` or `yyyymmdd`.
fn is_date8(d: &[u8]) -> bool {
    let part = |a: usize, b: usize| d.get(a..b).map_or(0, number);
    d.len() == 8
        && (is_date(part(0, 2), part(2, 4), part(4, 8))
            || is_date(part(6, 8), part(4, 6), part(0, 4)))
}

/// Three groups that read as a date `d-m-yyyy`, `m/d/yyyy` or `yyyy-mm-dd`, with one and the
/// same dash, slash or dot between them.
fn is_date_triple(u: &[Unit], w: &[Group]) -> bool {
    let [a, b, c] = w else {
        return false;
    };
    let one_separator = |x: &Group, y: &Group| {
        (y.start == x.end + 1)
            .then(|| u.get(x.end).copied())
            .flatten()
            .filter(|s| matches!(s, Unit::Joiner | Unit::Dot))
    };
    let (Some(s1), Some(s2)) = (one_separator(a, b), one_separator(b, c)) else {
        return false;
    };
    if s1 != s2 {
        return false;
    }
    let (x, y, z) = (number(&a.digits), number(&b.digits), number(&c.digits));
    match (a.digits.len(), b.digits.len(), c.digits.len()) {
        (1..=2, 1..=2, 4) => is_date(x, y, z) || is_date(y, x, z),
        (4, 2, 2) => is_date(z, y, x),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Machine-readable zones (ICAO 9303).

/// The value of an MRZ character in a check-digit computation.
fn mrz_value(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'A'..=b'Z' => Some(u32::from(b - b'A') + 10),
        b'<' => Some(0),
        _ => None,
    }
}

/// Whether `check` is the check digit of `field` (weights 7, 3, 1).
fn check_digit_ok(field: &[u8], check: Option<&u8>) -> bool {
    let Some(&check) = check.filter(|c| c.is_ascii_digit()) else {
        return false;
    };
    let mut sum = 0u32;
    for (b, w) in field.iter().zip([7u32, 3, 1].into_iter().cycle()) {
        match mrz_value(*b) {
            Some(v) => sum += v * w,
            None => return false,
        }
    }
    sum % 10 == u32::from(check - b'0')
}

/// Bytes `a..b` of `l`, empty when out of range.
fn part(l: &[u8], a: usize, b: usize) -> &[u8] {
    l.get(a..b).unwrap_or_default()
}

fn is_letter_or_filler(b: &u8) -> bool {
    b.is_ascii_uppercase() || *b == b'<'
}

/// A field of `n` letters or fillers with at least one letter (a country code).
fn country(f: &[u8]) -> bool {
    f.len() == 3 && f.iter().all(is_letter_or_filler) && f.iter().any(u8::is_ascii_uppercase)
}

/// Six digits `yymmdd` of a plausible date.
fn yymmdd(f: &[u8]) -> bool {
    f.len() == 6
        && f.iter().all(u8::is_ascii_digit)
        && (1..=12).contains(&number_of(part(f, 2, 4)))
        && (1..=31).contains(&number_of(part(f, 4, 6)))
}

/// The number that ASCII digits `f` write.
fn number_of(f: &[u8]) -> u32 {
    f.iter().fold(0u32, |n, b| {
        n.saturating_mul(10)
            .saturating_add(u32::from(b.saturating_sub(b'0')))
    })
}

/// Whether a run of MRZ characters holds an MRZ line at any position.
fn mrz_run(run: &[u8]) -> bool {
    run.len() >= 28
        && (0..=run.len() - 28).any(|p| {
            let l = part(run, p, run.len());
            passport_data_line(l)
                || card_data_line(l)
                || card_first_line(l)
                || name_line(l, b"P", 44)
                || name_line(l, b"ACIV", 36)
        })
}

/// The second line of a TD3 passport or TD2 card: document number and check digit,
/// nationality, birth date and check digit, sex, expiry date and check digit.
fn passport_data_line(l: &[u8]) -> bool {
    l.len() >= 28
        && part(l, 0, 9).iter().all(|b| mrz_value(*b).is_some())
        && check_digit_ok(part(l, 0, 9), l.get(9))
        && country(part(l, 10, 13))
        && yymmdd(part(l, 13, 19))
        && check_digit_ok(part(l, 13, 19), l.get(19))
        && matches!(l.get(20), Some(b'M' | b'F' | b'X' | b'<'))
        && yymmdd(part(l, 21, 27))
        && check_digit_ok(part(l, 21, 27), l.get(27))
}

/// The second line of a TD1 card: birth date and check digit, sex, expiry date and check digit,
/// nationality.
fn card_data_line(l: &[u8]) -> bool {
    l.len() >= 18
        && yymmdd(part(l, 0, 6))
        && check_digit_ok(part(l, 0, 6), l.get(6))
        && matches!(l.get(7), Some(b'M' | b'F' | b'X' | b'<'))
        && yymmdd(part(l, 8, 14))
        && check_digit_ok(part(l, 8, 14), l.get(14))
        && country(part(l, 15, 18))
}

/// The first line of a TD1 card: document code, issuing state, document number (with a digit)
/// and its check digit, optional data, and fillers to the end of the line.
fn card_first_line(l: &[u8]) -> bool {
    let line = part(l, 0, 30);
    line.len() == 30
        && matches!(l.first(), Some(b'A' | b'C' | b'I'))
        && l.get(1).is_some_and(is_letter_or_filler)
        && country(part(l, 2, 5))
        && part(l, 5, 14).iter().any(u8::is_ascii_digit)
        && check_digit_ok(part(l, 5, 14), l.get(14))
        && line.iter().filter(|&&b| b == b'<').count() >= 2
        && line.last() == Some(&b'<')
}

/// The name line of a TD3 passport (`P`, 44 characters) or TD2 card (36): document code,
/// issuing state, then surname `<<` given names (single `<` between the parts of a name),
/// padded with at least three fillers to the end of the line.
fn name_line(l: &[u8], codes: &[u8], len: usize) -> bool {
    let line = part(l, 0, len);
    if line.len() != len
        || !l.first().is_some_and(|c| codes.contains(c))
        || !l.get(1).is_some_and(is_letter_or_filler)
        || !country(part(l, 2, 5))
    {
        return false;
    }
    let name = part(line, 5, len);
    let Some(last_letter) = name.iter().rposition(u8::is_ascii_uppercase) else {
        return false;
    };
    let core = part(name, 0, last_letter + 1);
    let fillers = name.len() - core.len();
    let separators = core.windows(2).filter(|w| w == b"<<").count();
    fillers >= 3
        && core.first().is_some_and(u8::is_ascii_uppercase)
        && core.iter().all(is_letter_or_filler)
        && separators == 1
        && !core.windows(3).any(|w| w == b"<<<")
}

// ---------------------------------------------------------------------------------------------
// UTF-16.

/// `bytes` decoded as UTF-16 when they look like it: a byte order mark, or (without one) at
/// least eight code units of which at least half have a zero high byte while the low bytes are
/// mostly not zero, as ASCII-range text has.
fn decode_utf16(bytes: &[u8]) -> Option<String> {
    let (body, big_endian) = match bytes {
        [0xFF, 0xFE, rest @ ..] => (rest, false),
        [0xFE, 0xFF, rest @ ..] => (rest, true),
        _ => {
            let pairs = bytes.len() / 2;
            if pairs < 8 {
                return None;
            }
            let zeros = |offset: usize| {
                bytes
                    .iter()
                    .skip(offset)
                    .step_by(2)
                    .take(pairs)
                    .filter(|&&b| b == 0)
                    .count()
            };
            let (even, odd) = (zeros(0), zeros(1));
            if odd * 2 >= pairs && even * 2 < odd {
                (bytes, false)
            } else if even * 2 >= pairs && odd * 2 < even {
                (bytes, true)
            } else {
                return None;
            }
        }
    };
    let units = body.chunks_exact(2).map(|p| match p {
        [a, b] if big_endian => u16::from_be_bytes([*a, *b]),
        [a, b] => u16::from_le_bytes([*a, *b]),
        _ => 0,
    });
    Some(
        char::decode_utf16(units)
            .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// File names.

/// Names of identity documents, lower case, accents and separators removed.
const IDENTITY_DOCUMENT_NAMES: &[&str] = &[
    // Dutch
    "paspoort",
    "paspoorten",
    "idkaart",
    "idkaarten",
    "identiteitskaart",
    "identiteitskaarten",
    "identiteitsbewijs",
    "identiteitsbewijzen",
    "identiteitsdocument",
    "identiteitsdocumenten",
    "idbewijs",
    "legitimatiebewijs",
    "rijbewijs",
    "rijbewijzen",
    "verblijfsvergunning",
    "verblijfsvergunningen",
    "verblijfsdocument",
    "verblijfspas",
    "reisdocument",
    "kopieid",
    "idkopie",
    "idscan",
    // English
    "passport",
    "passports",
    "idcard",
    "idcards",
    "identitycard",
    "identitycards",
    "identitydocument",
    "drivinglicence",
    "drivinglicense",
    "driverslicence",
    "driverslicense",
    "driverlicence",
    "driverlicense",
    "residencepermit",
    "residencepermits",
    "copyid",
    "idcopy",
];

/// Words glued to a document's name that still make it a copy of the document.
const COPY_WORDS: &[&str] = &["kopie", "scan", "copy"];

/// Whether `name` names an identity document, as [`check_file_name`] describes.
fn names_identity_document(name: &str) -> bool {
    let folded: String = name
        .nfkd()
        .filter(|&c| !is_combining_mark(c))
        .flat_map(char::to_lowercase)
        .collect();
    let words: Vec<&str> = folded
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let is_document = |w: &str| {
        IDENTITY_DOCUMENT_NAMES.contains(&w)
            || COPY_WORDS.iter().any(|copy| {
                let glued = |rest: Option<&str>| {
                    rest.is_some_and(|r| !r.is_empty() && IDENTITY_DOCUMENT_NAMES.contains(&r))
                };
                glued(w.strip_prefix(*copy)) || glued(w.strip_suffix(*copy))
            })
    };
    (0..words.len()).any(|i| {
        let mut joined = String::new();
        words.iter().skip(i).take(4).any(|w| {
            joined.push_str(w);
            is_document(&joined)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every nine-digit string (leading zeros included) with the first eight digits given,
    /// completed to pass the eleven-test, or `None` when no check digit fits.
    fn complete(prefix: &[u8]) -> Option<Vec<u8>> {
        let sum: i64 = prefix
            .iter()
            .zip([9i64, 8, 7, 6, 5, 4, 3, 2])
            .map(|(&d, w)| w * i64::from(d))
            .sum();
        let check = u8::try_from(sum.rem_euclid(11)).ok().filter(|&c| c < 10)?;
        let mut v = prefix.to_vec();
        v.push(check);
        eleven_test(&v).then_some(v)
    }

    #[test]
    fn eleven_test_accepts_valid_bsn() {
        assert!(is_bsn("111222333"));
        assert!(is_bsn("111 222 333"));
        assert!(is_bsn("1112.22.333"));
        assert!(is_bsn(" 111222333 "));
        assert!(is_bsn("012345672"));
    }

    #[test]
    fn eleven_test_rejects_invalid_numbers() {
        assert!(!is_bsn("123456789"));
        assert!(!is_bsn("000000000"));
        assert!(!is_bsn("11122233"));
        assert!(!is_bsn("1112223330"));
        assert!(!is_bsn("11122233x"));
        assert!(!is_bsn(""));
        assert!(!is_bsn("bsn"));
        assert!(!is_bsn("--- ..."));
    }

    /// The false-positive rate stated in README.md: of the 10^9 nine-digit strings, exactly
    /// 90 909 090 pass the eleven-test (1 in 11.0000001), counted by the distribution of the
    /// weighted sum of the first eight digits modulo 11 (one check digit fits each residue but
    /// 10), and checked against brute force over every string starting with `123`.
    #[test]
    fn eleven_test_passes_one_in_eleven_nine_digit_numbers() {
        fn residues(weights: &[i64]) -> [u64; 11] {
            let mut dist = [0u64; 11];
            dist[0] = 1;
            for &w in weights {
                let mut next = [0u64; 11];
                for (r, &count) in dist.iter().enumerate() {
                    for d in 0..10i64 {
                        next[(r as i64 + w * d).rem_euclid(11) as usize] += count;
                    }
                }
                dist = next;
            }
            dist
        }
        let all = residues(&[9, 8, 7, 6, 5, 4, 3, 2]);
        let passing: u64 = all.iter().take(10).sum::<u64>() - 1; // not 000000000
        assert_eq!(passing, 90_909_090);
        // The leading zero left off: of the 10^8 eight-digit strings, 9 090 908 pass.
        let eight = residues(&[8, 7, 6, 5, 4, 3, 2]);
        assert_eq!(eight.iter().take(10).sum::<u64>() - 1, 9_090_908);

        // Brute force over 123000000..=123999999 agrees with the distribution.
        let brute = (0..1_000_000u32)
            .filter(|n| {
                let mut d = vec![1, 2, 3];
                d.extend(format!("{n:06}").bytes().map(|b| b - b'0'));
                eleven_test(&d)
            })
            .count() as u64;
        let mut dist = [0u64; 11];
        dist[(9 + 16 + 21) % 11] = 1;
        for &w in &[6i64, 5, 4, 3, 2] {
            let mut next = [0u64; 11];
            for (r, &count) in dist.iter().enumerate() {
                for d in 0..10i64 {
                    next[(r as i64 + w * d).rem_euclid(11) as usize] += count;
                }
            }
            dist = next;
        }
        assert_eq!(brute, dist.iter().take(10).sum::<u64>());
        assert!((90_000..92_000).contains(&brute));
    }

    #[test]
    fn decimal_digits_of_every_script_are_read_by_value() {
        for (zero, name) in [
            ('0', "ASCII"),
            ('\u{0660}', "Arabic-Indic"),
            ('\u{06F0}', "Extended Arabic-Indic"),
            ('\u{0966}', "Devanagari"),
            ('\u{09E6}', "Bengali"),
            ('\u{0E50}', "Thai"),
            ('\u{1040}', "Myanmar"),
            ('\u{FF10}', "full-width"),
            ('\u{1D7CE}', "mathematical bold"),
            ('\u{1D7EC}', "mathematical sans-serif bold"),
        ] {
            for v in 0..10u32 {
                let c = char::from_u32(u32::from(zero) + v).unwrap();
                let folded: Vec<Unit> = units(&c.to_string());
                assert_eq!(folded, vec![Unit::Digit(v as u8)], "{name} {v}");
            }
        }
        assert_eq!(decimal_digit('a'), None);
        assert_eq!(decimal_digit('\u{00BD}'), None); // ½ is a number, not a digit
        assert_eq!(decimal_digit('\u{2167}'), None); // Roman numeral eight
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

    /// Every spelling the guard must see through, around the valid BSN 111222333 (and
    /// 012345672 / 12345672 for the eight-digit form).
    #[test]
    fn bsn_is_found_through_spelling() {
        let cases = [
            "111222333",
            // Unicode digits
            "\u{FF11}\u{FF11}\u{FF11}\u{FF12}\u{FF12}\u{FF12}\u{FF13}\u{FF13}\u{FF13}",
            "\u{0661}\u{0661}\u{0661}\u{0662}\u{0662}\u{0662}\u{0663}\u{0663}\u{0663}",
            "\u{06F1}\u{06F1}\u{06F1}\u{06F2}\u{06F2}\u{06F2}\u{06F3}\u{06F3}\u{06F3}",
            "\u{0967}\u{0967}\u{0967} \u{0968}\u{0968}\u{0968} \u{0969}\u{0969}\u{0969}",
            "111\u{0662}22333",
            "\u{1D7CF}11222333",
            // Spaces of every kind
            "111\u{00A0}222\u{00A0}333",
            "111\u{2009}222\u{2009}333",
            "111\u{202F}222\u{202F}333",
            "111\u{3000}222\u{3000}333",
            "111\t222\t333",
            "111\n222\n333",
            // Invisible characters
            "111\u{200B}222\u{200C}333",
            "1\u{200D}11222333",
            "111\u{2060}222\u{FEFF}333",
            "111\u{00AD}222333",
            // Dots, dashes, slashes, underscores, several in a row
            "111.222.333",
            "1112.22.333",
            "111-222-333",
            "111\u{2010}222\u{2011}333",
            "111\u{2013}222\u{2014}333",
            "111\u{2212}222\u{2015}333",
            "111/222/333",
            "111_222_333",
            "111 - 222 - 333",
            "111 --222.. 333",
            "1 1 1 2 2 2 3 3 3",
            "11-12-22-33-3",
            "111\u{00B7}222\u{00B7}333",
            "\u{FF11}\u{FF11}\u{FF11}\u{FF0D}\u{FF12}\u{FF12}\u{FF12}\u{FF0E}333",
            // Labels, glued or not
            "BSN111222333",
            "bsn:111222333",
            "bsn: 111222333",
            "BSN-nummer111222333",
            "BSN-nummer: 111 222 333",
            "bsnnr111222333",
            "burgerservicenummer111222333",
            "sofinummer111222333",
            "\u{FF22}\u{FF33}\u{FF2E}111222333",
            "NL111222333",
            "NL111222333B01",
            "btw NL111222333B01.",
            "REL-111222333",
            "scan_111222333.pdf",
            "klant 111222333",
            "(111222333)",
            "\"111222333\"",
            "nr.111222333",
            // Among other numbers
            "111222333 444555666",
            "zie 111 222 333 4 keer",
            "12 111222333",
            "111 222 333 4444",
            "op 12-03-2024 111222333",
            "12-03-2024 1112 22 333",
            // Eight digits, the leading zero left off
            "12 03 2024 1",
            "12345672",
            "nummer 12345672.",
            "bsn: 1234 5672",
            "BSN 1234-56-72",
            "BSN12345672",
        ];
        for case in cases {
            assert!(contains_bsn(case), "not found: {case:?}");
            assert!(check_text("f", case).is_err(), "not refused: {case:?}");
        }
    }

    #[test]
    fn is_bsn_sees_through_spelling_of_a_whole_value() {
        for s in [
            "\u{FF11}\u{FF11}\u{FF11}\u{FF12}\u{FF12}\u{FF12}\u{FF13}\u{FF13}\u{FF13}",
            "111\u{00A0}222\u{00A0}333",
            "111\u{200B}222333",
            "111-222-333",
            "111 - 222 - 333",
            "BSN111222333",
            "bsn: 111222333",
            "BSN-nummer 111.222.333",
            "NL111222333",
            "NL111222333B01",
            "12345672",
            "\u{0661}\u{0662}\u{0663}\u{0664}\u{0665}\u{0666}\u{0667}\u{0662}",
        ] {
            assert!(is_bsn(s), "not a BSN: {s:?}");
        }
        for s in [
            "REL-111222333",
            "X111222333",
            "111222333 en meer",
            "klant 111222333",
            "NL111222333B01X",
            "111222333B01",
            "12032024",
            "REL-0001",
        ] {
            assert!(!is_bsn(s), "a BSN: {s:?}");
        }
    }

    /// Ordinary text holding numbers that are not a BSN is accepted. The numbers are chosen so
    /// that their digits would pass the eleven-test if the guard took them for one number:
    /// each case shows a rule that sets them apart.
    #[test]
    fn ordinary_numbers_are_not_taken_for_a_bsn() {
        // 612345671 and 0 12345672 pass; the phone numbers around them are ten or eleven
        // digits, or follow `+` or an area code in brackets.
        assert!(eleven_test(&[6, 1, 2, 3, 4, 5, 6, 7, 1]));
        assert!(eleven_test_with_zero(&[1, 2, 3, 4, 5, 6, 7, 2]));
        let accepted = [
            "bel 06-12345672",
            "bel 0612345672",
            "bel 06 1234 5672",
            "bel 06 12 34 56 72",
            "06 12345672",
            "+31 612345671",
            "+31612345671",
            "+31 (0)6 12345671",
            "(06) 12345672",
            "tel. 020-1234567",
            // IBANs and postcodes
            "NL91ABNA0417164300",
            "NL91 ABNA 0417 1643 00",
            "NL02ABNA0123456789",
            "1234 AB Utrecht",
            "Kastanjelaan 12, 1234 AB Utrecht",
            // Dates and times
            "12-03-2024",
            "op 12-03-2024 1:30 uur",
            "op 12-03-2024 1 keer",
            "2024-03-12 9 meldingen",
            "15032024",
            "20240314",
            "15.03.2024",
            "om 14.30 uur",
            // Amounts
            "1.234.567,89",
            "\u{20AC} 111.222.333",
            "\u{20AC}111222333",
            "EUR 111.222.333,00",
            "111.222.333,00 euro",
            // Codes: letters touching the digits
            "X111222333",
            "111222333X",
            "rec_ad4c2da8b24dea891fc650499ef82157",
            "REL-0001",
            // Other lengths
            "order 123456789",
            "1111222333",
            "11122233",
            "1112223334",
            "kamer 111, 222 en 333",
            "",
            "geen cijfers hier",
        ];
        for case in accepted {
            assert!(!contains_bsn(case), "taken for a BSN: {case:?}");
        }
        // Each of these holds digits that pass when read as one number.
        for digits in [
            "120320241",
            "20240312 9",
            "015032024",
            "020240314",
            "111222333",
        ] {
            let d: Vec<u8> = digits
                .bytes()
                .filter(u8::is_ascii_digit)
                .map(|b| b - b'0')
                .collect();
            assert!(eleven_test(&d), "{digits}");
        }
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

    const TD3_NAME: &str = "P<NLDDE<BRUIJN<<WILLEKE<LISELOTTE<<<<<<<<<<<";
    const TD3_DATA: &str = "SPECI20142NLD6503101F2403096999999990<<<<<84";
    const TD1: [&str; 3] = [
        "I<NLDSPECI20212999999990<<<<<<",
        "6503101F2403096NLD<<<<<<<<<<<8",
        "DE<BRUIJN<<WILLEKE<LISELOTTE<<",
    ];
    const TD2: [&str; 2] = [
        "I<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<",
        "D231458907UTO7408122F1204159<<<<<<<6",
    ];

    #[test]
    fn mrz_is_found_in_every_layout_and_spelling() {
        let cases = [
            format!("{TD3_NAME}\n{TD3_DATA}"),
            format!("{TD3_NAME}{TD3_DATA}"),
            format!("{TD3_NAME} {TD3_DATA}"),
            format!("{TD3_NAME}\r\n{TD3_DATA}").to_lowercase(),
            TD3_DATA.to_owned(),
            TD3_DATA.to_lowercase(),
            TD3_NAME.to_owned(),
            TD3_NAME.to_lowercase(),
            format!("scan: {TD3_DATA}, zie bijlage"),
            // Spaces inside, as OCR reads it
            "P < NLD DE < BRUIJN << WILLEKE < LISELOTTE <<<<<<<<<<<".to_owned(),
            "SPECI2014 2 NLD 650310 1 F 240309 6 999999990 <<<<< 84".to_owned(),
            // Full-width
            TD3_DATA
                .chars()
                .map(|c| char::from_u32(u32::from(c) + 0xFEE0).unwrap())
                .collect(),
            TD1.join("\n"),
            TD1.concat(),
            TD1.join(" ").to_lowercase(),
            TD1[0].to_owned(),
            TD1[1].to_owned(),
            TD2.join("\n"),
            TD2.concat().to_lowercase(),
            TD2[0].to_owned(),
            TD2[1].to_owned(),
        ];
        for case in &cases {
            assert!(contains_mrz(case), "not found: {case:?}");
            assert!(check_text("f", case).is_err(), "not refused: {case:?}");
        }
    }

    #[test]
    fn ordinary_text_is_not_taken_for_an_mrz() {
        let prose = "De huurder meldt dat de buren sinds maart elke nacht harde muziek draaien en \
                     dat de politie twee keer is langs geweest op nummer 12 in blok C";
        let cases = [
            prose.to_owned(),
            prose.to_uppercase(),
            "std::cout << naam << std::endl; pas << waarde << einde".to_owned(),
            format!(
                "{}\n<<<<<<< HEAD\nregel\n=======\nandere\n>>>>>>> main",
                prose
            ),
            format!("{} <<<<< zie boven <<<<<", prose.to_uppercase()),
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ".to_owned(),
            "A".repeat(200),
            "<".repeat(200),
            "1".repeat(200),
            "0".repeat(88),
            "P<".repeat(50),
            "SPECI20141NLD6503101F2403096".to_owned(), // wrong document check digit
            "SPECI20142NLD6503102F2403096".to_owned(), // wrong birth check digit
            "PDP<NLDWILLEKE<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<".to_owned(), // no << in the name
            "ad4c2da8b24dea891fc650499ef82157ad4c2da8b24dea891fc650499ef82157".to_owned(),
        ];
        for case in &cases {
            assert!(!contains_mrz(case), "taken for an MRZ: {case:?}");
        }
    }

    #[test]
    fn utf16_text_is_decoded_and_checked() {
        let le = |s: &str| {
            s.encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<u8>>()
        };
        let be = |s: &str| {
            s.encode_utf16()
                .flat_map(u16::to_be_bytes)
                .collect::<Vec<u8>>()
        };
        let with_bom = |bom: [u8; 2], mut b: Vec<u8>| {
            b.splice(0..0, bom);
            b
        };
        let bsn = "burgerservicenummer 111 222 333";
        let mrz = format!("{TD3_NAME}\n{TD3_DATA}");
        let arabic = "\u{0661}\u{0661}\u{0661}\u{0662}\u{0662}\u{0662}\u{0663}\u{0663}\u{0663}";
        for text in [bsn, mrz.as_str(), "111222333"] {
            for bytes in [
                le(text),
                be(text),
                with_bom([0xFF, 0xFE], le(text)),
                with_bom([0xFE, 0xFF], be(text)),
            ] {
                assert!(check_binary("f", &bytes).is_err(), "{text:?} {bytes:?}");
            }
        }
        // Non-ASCII digits are found with a byte order mark.
        assert!(check_binary("f", &with_bom([0xFF, 0xFE], le(arabic))).is_err());
        assert!(check_binary("f", &with_bom([0xFE, 0xFF], be(arabic))).is_err());
        // Harmless UTF-16 text, odd lengths and binary data pass.
        assert!(check_binary("f", &with_bom([0xFF, 0xFE], le("geen nummer 123456789"))).is_ok());
        assert!(check_binary("f", &le("geen nummer")).is_ok());
        let mut odd = le("111222333");
        odd.push(0x31);
        assert!(check_binary("f", &odd).is_err());
        assert!(check_binary("f", &[0xFF, 0xFE, 0x31]).is_ok());
        assert!(check_binary("f", &[0u8; 4096]).is_ok());
        let noise: Vec<u8> = (0..65_536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(check_binary("f", &noise).is_ok());
    }

    #[test]
    fn identity_document_file_names_are_refused() {
        for name in [
            "paspoort.jpg",
            "Paspoort.JPG",
            "kopie-id.pdf",
            "Kopie ID kaart.png",
            "id-kaart_voorkant.jpg",
            "ID-kaart2.jpg",
            "identiteitskaart.pdf",
            "Identiteitsbewijs huurder.pdf",
            "rijbewijs.jpeg",
            "passport scan.png",
            "ID card.jpg",
            "id_card.pdf",
            "identity-card",
            "driving licence",
            "driver's license.png",
            "driver\u{2019}s licence.png",
            "Drivers_License_front.jpg",
            "verblijfsvergunning",
            "residence permit.pdf",
            "2024-03-12_paspoort_1.jpg",
            "paspoortkopie.pdf",
            "kopiepaspoort.pdf",
            "rijbewijsscan.png",
            "scan-rijbewijs.png",
            "PASPOORT.PDF",
            "p\u{00E1}spoort.jpg",
            "pa\u{0073}\u{0301}poort.jpg",
            "\u{FF50}\u{FF41}\u{FF53}\u{FF50}\u{FF4F}\u{FF4F}\u{FF52}\u{FF54}.jpg",
            "kopie id.pdf",
            "id kopie.pdf",
            "pass port.png",
        ] {
            let err = check_file_name("start.file_name", name)
                .err()
                .unwrap_or_else(|| panic!("accepted: {name:?}"));
            assert_eq!(err.field, "start.file_name");
            assert!(!err.problem.contains(name));
        }
    }

    #[test]
    fn ordinary_file_names_are_accepted() {
        for name in [
            "rapid.jpg",
            "video.mp4",
            "idee.txt",
            "paspoortfoto-beleid.pdf",
            "pasfoto.jpg",
            "id.png",
            "photo_id_3.jpg",
            "kid card.jpg",
            "grid-card.png",
            "geluidsoverlast-2024-03-12.mp3",
            "huurcontract.pdf",
            "identiteit.txt",
            "rijbewijsplicht-uitleg.pdf",
            "",
            "...",
        ] {
            assert!(
                check_file_name("start.file_name", name).is_ok(),
                "refused: {name:?}"
            );
        }
    }

    #[test]
    fn check_text_names_the_field_not_the_value() {
        for value in ["111222333", "BSN111222333", "12345672", TD3_DATA] {
            let err = check_text("fields[0].text", value).unwrap_err();
            assert_eq!(err.field, "fields[0].text");
            assert!(!err.to_string().contains(value));
            assert!(!err.problem.contains(value));
        }
    }

    /// Whether `s` shows a date (`d-m-yyyy`, `yyyy-mm-dd`, one and the same dash, slash or dot
    /// between the parts): such a rendering of a BSN reads as a date and a number, and is
    /// accepted as documented.
    fn reads_as_date(s: &str) -> bool {
        let folded: String = units(s)
            .iter()
            .map(|x| match x {
                Unit::Digit(d) => char::from(b'0' + d),
                Unit::Joiner => '-',
                Unit::Dot => '.',
                _ => ' ',
            })
            .collect();
        // Maximal digit runs and what stands between each and the next.
        let mut runs: Vec<(String, String)> = Vec::new();
        for c in folded.chars() {
            match (c.is_ascii_digit(), runs.last_mut()) {
                (true, Some((digits, between))) if between.is_empty() => digits.push(c),
                (true, _) => runs.push((c.to_string(), String::new())),
                (false, Some((_, between))) => between.push(c),
                (false, None) => {}
            }
        }
        runs.windows(3).any(|w| {
            let (a, b, c) = (&w[0], &w[1], &w[2]);
            let same = a.1 == b.1 && (a.1 == "-" || a.1 == ".");
            let n = |x: &str| x.parse::<u32>().unwrap_or(0);
            let dmy = (1..=2).contains(&a.0.len())
                && (1..=2).contains(&b.0.len())
                && c.0.len() == 4
                && (is_date(n(&a.0), n(&b.0), n(&c.0)) || is_date(n(&b.0), n(&a.0), n(&c.0)));
            let ymd = a.0.len() == 4
                && b.0.len() == 2
                && c.0.len() == 2
                && is_date(n(&c.0), n(&b.0), n(&a.0));
            same && (dmy || ymd)
        })
    }

    /// A way of writing one digit.
    fn render_digit(d: u8, script: u8) -> char {
        let zero = match script % 6 {
            0 => '0',
            1 => '\u{FF10}',
            2 => '\u{0660}',
            3 => '\u{06F0}',
            4 => '\u{0966}',
            _ => '\u{1D7CE}',
        };
        char::from_u32(u32::from(zero) + u32::from(d)).unwrap_or('0')
    }

    const SEPARATORS: &[&str] = &[
        " ", ".", "-", "/", "_", "\u{00A0}", "\u{2009}", "\u{202F}", "\u{3000}", "\t", "\u{200B}",
        "\u{200C}", "\u{200D}", "\u{2060}", "\u{FEFF}", "\u{2010}", "\u{2013}", "\u{2014}",
        "\u{2212}", " - ", "..", "\u{FF0D}",
    ];
    const PREFIXES: &[&str] = &[
        "",
        "BSN",
        "bsn:",
        "bsn: ",
        "BSN-nummer",
        "BSN-nummer: ",
        "NL",
        "nr. ",
        "REL-",
        "zie ",
        "(",
        "\u{FF22}\u{FF33}\u{FF2E}",
    ];
    const SUFFIXES: &[&str] = &["", ".", " ok", ")", "\n", ", verder"];

    proptest::proptest! {
        #[test]
        fn guard_never_panics(s in "\\PC{0,200}") {
            let _ = check_text("f", &s);
            let _ = is_bsn(&s);
            let _ = check_file_name("f", &s);
            let _ = check_binary("f", s.as_bytes());
        }

        #[test]
        fn guard_never_panics_on_bytes(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = check_binary("f", &b);
        }

        #[test]
        fn every_valid_bsn_is_refused(d in proptest::collection::vec(0u8..10, 8)) {
            let Some(bsn) = complete(&d) else {
                return Ok(());
            };
            let s: String = bsn.iter().map(|x| char::from(b'0' + x)).collect();
            proptest::prop_assert!(is_bsn(&s));
            let text = format!("nummer {s} ok");
            proptest::prop_assert!(check_text("f", &text).is_err());
        }

        /// Any valid BSN, in random digit scripts, split at random places by random
        /// separators, after a random label and before random text, is refused.
        #[test]
        fn every_valid_bsn_is_refused_however_it_is_written(
            d in proptest::collection::vec(0u8..10, 8),
            scripts in proptest::collection::vec(0u8..6, 9),
            splits in proptest::collection::vec(proptest::bool::ANY, 8),
            seps in proptest::collection::vec(0usize..SEPARATORS.len(), 8),
            prefix in 0usize..PREFIXES.len(),
            suffix in 0usize..SUFFIXES.len(),
        ) {
            let Some(bsn) = complete(&d) else {
                return Ok(());
            };
            let mut s = String::from(PREFIXES[prefix]);
            for (i, &digit) in bsn.iter().enumerate() {
                s.push(render_digit(digit, scripts[i]));
                if i < 8 && splits[i] {
                    s.push_str(SEPARATORS[seps[i]]);
                }
            }
            s.push_str(SUFFIXES[suffix]);
            proptest::prop_assert!(contains_bsn(&s) || reads_as_date(&s), "not found: {:?}", s);
            if reads_as_date(&s) {
                return Ok(());
            }
            let err = check_text("f", &s).unwrap_err();
            proptest::prop_assert!(!err.problem.contains(&s));
        }

        /// The eight-digit form: a BSN starting with 0, written without it, is refused unless
        /// the eight digits read as a date.
        #[test]
        fn a_bsn_without_its_leading_zero_is_refused(d in proptest::collection::vec(0u8..10, 7)) {
            let mut prefix = vec![0u8];
            prefix.extend(&d);
            let Some(bsn) = complete(&prefix) else {
                return Ok(());
            };
            let eight = bsn.get(1..).unwrap_or_default();
            let s: String = eight.iter().map(|x| char::from(b'0' + x)).collect();
            let plain = format!("nr {s}");
            let labelled = format!("BSN {s}");
            proptest::prop_assert_eq!(contains_bsn(&plain), !is_date8(eight));
            proptest::prop_assert!(contains_bsn(&labelled));
        }
    }
}
