//! The input guard of rule 6 of `DOMAIN.md`: kluis stores no BSN (citizen service number) and no
//! copy of an identity document. Values that hold a valid BSN, text or binary data holding a
//! passport/ID-card machine-readable zone (MRZ), and file names that say they are an identity
//! document are refused before anything is stored.
//!
//! The guard reads text the way a person does, not byte by byte. Every character is folded to
//! its compatibility decomposition (NFKD: full-width `１１１` becomes `111`, `1́` becomes `1` and a
//! combining accent), combining marks and default-ignorable code points (zero-width spaces and
//! joiners, variation selectors, tag characters, Hangul fillers, the combining grapheme joiner,
//! soft hyphen, direction marks) are dropped, and every Unicode decimal digit is read by its
//! value (Arabic-Indic `١١١`, Devanagari `१११`, ...). Any run of up to [`MAX_SEPARATOR_RUN`]
//! characters that are neither letters nor digits separates groups of digits of one number
//! (`111 - 222 - 333`, `111|222|333`, `111 -- 222`): spaces, punctuation, symbols, control
//! characters. A markup tag (`111<b>222</b>333`) or a character reference (`&nbsp;`) counts as
//! one separator, and so does one `x` between two groups (`111x222x333`, written like the `×` of
//! dimensions).
//!
//! What counts as a BSN in text (README.md, "What the BSN guard refuses", says why):
//!
//! - a run of nine digits that passes the eleven-test, standing on its own;
//! - nine digits in the usual groupings `3-3-3` and `4-2-3`, the same separators between the
//!   groups, anywhere in a row of numbers, and any grouping of nine digits when that is the
//!   whole row (`1 1 1 2 2 2 3 3 3`);
//! - eight digits that pass the eleven-test with a leading zero put back (a BSN that lost its
//!   zero in a spreadsheet), when they stand alone as one run and are not a date
//!   (`ddmmyyyy`, `yyyymmdd`), or in any grouping after a BSN label (`bsn: 1234 5672`);
//! - after a BSN label, nine digits in a row passing the eleven-test among the digits within
//!   [`LABEL_REACH`] units, whatever stands between them (`labelled_bsn`: `bsn nr123456782`,
//!   `BSN € 123 456 782`, `BSN: l23456782`); a Latin word ends the label's reach.
//!
//! Latin letters touching the digits make them part of a code, not a number (`X111222333`, an
//! IBAN's `ABNA0417164300`), except letters that say "BSN" (`BSN111222333`,
//! `bsn-nummer111222333`, `burgerservicenummer`, `sofinummer`) and the country prefix `NL` of an
//! old VAT number that held the BSN (`NL111222333B01`). A letter that looks like a Latin one
//! is read as it (`Х111222333` with a Cyrillic `Х` is a code, `BЅN111222333` a label), and a
//! sign that decomposes to letters (`№`, `™`, `Ⓜ`, a superscript `ᵃ`) is no letter. A letter
//! of another script does not make a code (`111222333ꂸ`, `Ж111222333`): in binary data read as UTF-16, the unit after a number is such
//! a letter more often than not. Between groups of digits such a letter separates them like
//! punctuation (`111ǀ222ǀ333`, `111一222一333`). Letters across a separator hide nothing:
//! `REL-111222333` is refused. Numbers that are plainly something else are left alone: a row
//! of numbers after `+` or after an area code in brackets (phone numbers), a row that starts or
//! ends at a currency sign (amounts), and dates `dd-mm-yyyy` / `yyyy-mm-dd` inside a row of
//! numbers. Digits joined to more digits by a single `,` or `:` are one numeral: in a number
//! with thousands separators (`111,222,333`) the marks separate groups like any separator, any
//! other numeral (a decimal `123.456.789,00`, an amount `123,456,789.00`, a time `9:30`) is set
//! apart.
//!
//! Binary data (binary values and evidence files) is read as text five ways at once, whatever
//! media type its sender declares: as UTF-8 (a byte that is not part of UTF-8 ends a number, as
//! it is not a character), and as UTF-16 little- and big-endian, each from an even and from an
//! odd byte. [`Scanner`] reads it as it streams in and comes to the same answer wherever the
//! chunks are cut.
//!
//! The guard must never echo the value it refused: errors name the field only.

use std::sync::OnceLock;
use std::sync::mpsc;

use unicode_normalization::char::{decompose_compatible, is_combining_mark};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use zeroize::{Zeroize, Zeroizing};

use crate::domain::InputError;

/// Most separator characters in a row between two groups of digits of one number.
pub const MAX_SEPARATOR_RUN: usize = 4;

const BSN_PROBLEM: &str = "value holds a BSN (citizen service number, nine digits passing the \
                           eleven-test, or eight with the leading zero left off); kluis stores \
                           no BSNs";
const MRZ_PROBLEM: &str = "value holds the machine-readable zone of an identity document; kluis \
                           stores no copies of identity documents";

/// Refuses `text` (a field value, label, name or free text named `field`) when it holds a BSN or
/// an MRZ.
pub fn check_text(field: &str, text: &str) -> Result<(), InputError> {
    check_units(&units(text)).map_err(|f| f.refuse(field))?;
    read_as_shown(text).map_err(|f| f.refuse(field))
}

/// Refuses binary data named `field` that holds a BSN or an MRZ when read as text: UTF-8, or
/// UTF-16 little- or big-endian from any byte, with or without a byte order mark, anywhere in
/// the data and whatever else the data holds. What feeding `bytes` to a [`Scanner`] refuses,
/// and, when the data is UTF-8, what [`check_text`] refuses as it shows (markup rendered,
/// letters of other scripts read as the Latin ones they look like): a value arrives whole and
/// can be read so; an evidence file streams in and is read by the scanner alone.
pub fn check_binary(field: &str, bytes: &[u8]) -> Result<(), InputError> {
    let mut scanner = Scanner::new();
    scanner.write(field, bytes)?;
    scanner.finish(field)?;
    match std::str::from_utf8(bytes) {
        Ok(text) => read_as_shown(text).map_err(|f| f.refuse(field)),
        Err(_) => Ok(()),
    }
}

/// [`check_binary`] for the value of a field named for a BSN ([`names_a_bsn`]): the data is
/// read as the number after a BSN label, in every reading.
pub fn check_binary_labelled(field: &str, bytes: &[u8]) -> Result<(), InputError> {
    let mut scanner = Scanner::labelled();
    scanner.write(field, bytes)?;
    scanner.finish(field)?;
    match std::str::from_utf8(bytes) {
        Ok(text) => check_labelled_text(field, text),
        // Not UTF-8 throughout, its UTF-8 reading is read from any word on all the same: one
        // byte that is not (`nvt 1234 5672\xFF`), or a Windows-1252 separator
        // (`nvt\xA01234\xA05672`), does not make the name's label end at the first word.
        Err(_) if labelled_anywhere(&utf8_units(bytes)) => Err(Finding::Bsn.refuse(field)),
        Err(_) => Ok(()),
    }
}

/// The units of the UTF-8 reading of `bytes`, all of them, decoded byte by byte as a scanner
/// decodes them ([`View::utf8_byte`]); wiped when dropped, and as they grow.
fn utf8_units(bytes: &[u8]) -> Zeroizing<Vec<Unit>> {
    let mut view = View::new(Encoding::Utf8, false, 0);
    for &b in bytes {
        reserve_wiped(&mut view.units, MAX_FOLD);
        view.utf8_byte(b);
    }
    if view.need > 0 {
        view.push_break();
    }
    std::mem::take(&mut view.units)
}

/// The label a value of a field named for a BSN is read after.
const LABEL: &str = "bsn";

/// Refuses a file name named `field` that says the file is an identity document: Dutch, English,
/// French and German names of passports, identity cards, driving licences and residence
/// documents, also with "kopie", "scan", "copy" or "copie" glued on (`paspoortkopie.pdf`) and
/// compounds that end in a document's name (`kinderpaspoort.jpg`, `Kinderreisepass.pdf`).
///
/// The name is read as words: accents are stripped (NFKD), case is ignored, letters of other
/// scripts that look like Latin ones are read as those (`pаspoort` with a Cyrillic `а`), `ß`
/// as `ss`, and everything but letters (`-`, `_`, `.`, spaces, digits) separates words. Any run
/// of consecutive words is also read joined, so `id-kaart`, `ID card`, `p a s p o o r t` and
/// `driver's license` are found. The name is read three times: with digits as separators, and
/// with `0 1 3 5` read as the letters they stand in for (`o l e s`, and `o i e s`), so
/// `pasp0ort.jpg` is found. Only whole words count: `rapid.jpg`, `idee.txt` and `video.mp4`
/// pass, and so do compounds that name something other than the document itself
/// (`paspoortfoto-beleid.pdf`, a policy on passport photos). A bare `id` says nothing and
/// passes.
///
/// ```
/// use kluis::vault::guard::check_file_name;
/// assert!(check_file_name("file_name", "Kopie ID kaart.png").is_err());
/// assert!(check_file_name("file_name", "p\u{0430}sp0ort.jpg").is_err());
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
        u.iter().position(Unit::is_digit),
        u.iter().rposition(Unit::is_digit),
    ) else {
        return false;
    };
    // Before the digits: nothing but separators, label punctuation and one BSN label.
    let head = u.get(..first).unwrap_or_default();
    let label = head
        .iter()
        .rposition(Unit::is_letter)
        .map(|end| word_before(&u, end + 1));
    let label_start = match &label {
        Some(Word { marker: None, .. }) => return false,
        Some(word) => word.start,
        None => first,
    };
    let head_ok = head
        .iter()
        .enumerate()
        .all(|(i, x)| i >= label_start || x.is_separator());
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
        && u.get(last - 2) == Some(&Unit(b'b'))
        && u.get(last - 1).is_some_and(Unit::is_digit);
    let digits_end = if vat { last - 2 } else { last + 1 };
    head_ok && tail_ok && find_bsns(&u, |start, end| start == first && end == digits_end)
}

/// True when `text` holds a valid BSN in any of the spellings described in the module
/// documentation: nine digits passing the eleven-test (or eight, the leading zero left off),
/// in any Unicode digits, grouped by any separators, possibly after a BSN label.
pub fn contains_bsn(text: &str) -> bool {
    find_bsns(&units(text), |_, _| true)
}

/// Whether `name` (a field's name, a label's key) says its value is a BSN: it ends in a BSN
/// label (`bsn`, `bsn_nummer`, `burgerservicenummer`, `sofinummer`). Such a value is read as
/// the number after a label ([`check_labelled_text`], [`check_binary_labelled`],
/// [`Scanner::labelled`]).
pub fn names_a_bsn(name: &str) -> bool {
    // A number written after the name would be read after it as after a label: the name ends
    // in a label, followed by nothing but words that may stand between a label and its number
    // (`bsn`, `bsn_nummer`, `klant.bsn`, `burger.service.nummer`, `b.s.n`; not
    // `bsn_verified_at`, `sofie`).
    let mut u = units(name);
    u.push(Unit::SPACE);
    u.push(Unit(b'0'));
    label_before(&u, u.len() - 1).is_some()
}

/// True when `text` holds part of an ICAO 9303 machine-readable zone: the data line of a
/// passport (TD3) or TD2 card with its three check digits, the data line of an ID card (TD1)
/// with its two check digits, the first line of an ID card with the check digit of its
/// document number, or a name line (`P<NLDDE<BRUIJN<<WILLEKE<<<<…`). Case, accents, up to
/// [`MAX_MRZ_SPACE`] white-space characters in a row and line breaks are ignored, so the lines
/// may be joined, split or lower-cased.
pub fn contains_mrz(text: &str) -> bool {
    matches!(
        scan_mrz(&units(text), &mut Zeroizing::new(Vec::new())),
        MrzScan::Found
    )
}

/// Reads binary data as it streams in and refuses it as [`check_binary`] does: the same answer
/// for the same bytes however they are cut into chunks, with memory bounded by a few times
/// [`SCAN_AT`] whatever the size of the data. What it holds of the data is wiped when it is
/// dropped.
#[expect(
    clippy::vec_box,
    reason = "boxed, a view handed to the helper moves as a pointer and leaves no copy of its state"
)]
pub struct Scanner {
    /// The readings read on the caller's thread: all five, until a write of `parallel_from`
    /// bytes hands all but the first [`MINE`] to a helper.
    /// Boxed: handed to the helper, a view moves as a pointer, and leaves no copy of its
    /// state behind.
    views: Vec<Box<View>>,
    helper: Option<Helper>,
    /// From a write of this many bytes on, the readings are read on two threads.
    parallel_from: usize,
    /// What a write, `settle` or `finish` was refused for: every call after it is refused
    /// alike, whatever it is given (a finding is never read as gone).
    refused: Option<Finding>,
}

/// From a write of this many bytes on, a scanner reads its data on two threads: [`MINE`]
/// readings on the caller's thread and the others on a helper thread of its own, which it
/// keeps until it is dropped (an upload's chunks are 64 KiB). The readings are independent,
/// and each reads every byte.
pub const PARALLEL_FROM: usize = 16 * 1024;

/// The readings a scanner with a helper reads on the caller's thread: UTF-8 and UTF-16
/// little-endian from an even byte (the caller also hashes and seals an upload's bytes,
/// `write_beside`); the helper reads the other three.
const MINE: usize = 2;

/// The thread that reads the readings of a scanner past the first [`MINE`], one write behind
/// the caller at most: its answer for a write is taken at the next write, or at `finish` (or
/// `settle`), and answers come in the order of the writes.
struct Helper {
    jobs: Option<mpsc::SyncSender<Job>>,
    answers: mpsc::Receiver<Answer>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Whether a job was sent whose answer is not taken yet.
    pending: bool,
    /// The copy of a write's bytes the helper reads, while no job holds it: wiped when
    /// dropped, and never grown (see `write`).
    buffer: Option<Zeroizing<Vec<u8>>>,
}

#[expect(
    clippy::vec_box,
    reason = "boxed, a view handed to the helper moves as a pointer and leaves no copy of its state"
)]
enum Job {
    /// The readings the helper reads: the first job, and only that one.
    Take(Vec<Box<View>>),
    Write(Zeroizing<Vec<u8>>),
    Finish,
}

struct Answer {
    buffer: Option<Zeroizing<Vec<u8>>>,
    found: Result<(), Finding>,
}

impl Helper {
    /// A helper reading `views`, or them back when the system has no thread to give.
    #[expect(
        clippy::vec_box,
        reason = "boxed, a view handed to the helper moves as a pointer and leaves no copy of its state"
    )]
    fn start(views: Vec<Box<View>>) -> Result<Self, Vec<Box<View>>> {
        let (jobs, inbox) = mpsc::sync_channel::<Job>(1);
        let (outbox, answers) = mpsc::sync_channel::<Answer>(1);
        let spawned = std::thread::Builder::new()
            .name("kluis-guard".into())
            .spawn(move || {
                // The views come as the first job, so that a failed spawn leaves them here.
                let Ok(Job::Take(mut views)) = inbox.recv() else {
                    return;
                };
                while let Ok(job) = inbox.recv() {
                    let answer = match job {
                        Job::Write(buffer) => {
                            let found =
                                views.iter_mut().try_for_each(|v| v.write_and_read(&buffer));
                            Answer {
                                buffer: Some(buffer),
                                found,
                            }
                        }
                        Job::Finish => Answer {
                            buffer: None,
                            found: views.iter_mut().try_for_each(|v| v.finish()),
                        },
                        // Only the first job hands over views.
                        Job::Take(_) => break,
                    };
                    if outbox.send(answer).is_err() {
                        break;
                    }
                }
            });
        let Ok(thread) = spawned else {
            return Err(views);
        };
        if let Err(mpsc::SendError(Job::Take(views))) = jobs.send(Job::Take(views)) {
            return Err(views);
        }
        Ok(Helper {
            jobs: Some(jobs),
            answers,
            thread: Some(thread),
            pending: false,
            buffer: None,
        })
    }

    /// Hands `job` to the helper; its answer is taken with `answer`, which finds a helper
    /// gone.
    fn send(&mut self, job: Job) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
        self.pending = true;
    }

    /// Hands the helper a copy of `bytes` to read: in the buffer of the write before when it
    /// has room, else in a new one (the old one wiped as it drops; a buffer that grew would
    /// leave its first copy behind).
    fn write(&mut self, bytes: &[u8]) {
        let mut buffer = match self.buffer.take() {
            Some(buffer) if buffer.capacity() >= bytes.len() => buffer,
            _ => Zeroizing::new(Vec::with_capacity(bytes.len())),
        };
        buffer.clear();
        buffer.extend_from_slice(bytes);
        self.send(Job::Write(buffer));
    }

    /// The helper's answer for the job it was handed last, waiting for it; `Ok` when none is
    /// pending. A helper that panicked passes its panic on, as a reading on the caller's thread
    /// would have.
    fn answer(&mut self) -> Result<(), Finding> {
        if !std::mem::take(&mut self.pending) {
            return Ok(());
        }
        match self.answers.recv() {
            Ok(answer) => {
                if answer.buffer.is_some() {
                    self.buffer = answer.buffer;
                }
                answer.found
            }
            Err(_) => {
                self.jobs = None;
                match self.thread.take().map(std::thread::JoinHandle::join) {
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    // The helper leaves its loop only when its jobs are closed or its answers
                    // not taken, which only `drop` does: never read as nothing found.
                    _ => std::panic::resume_unwind(Box::new(
                        "the guard's helper ended while its scanner was in use",
                    )),
                }
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Closing the jobs ends the helper once it has read what it holds; its views and
        // buffer are wiped as they drop.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Scanner {
    /// A scanner for one stream of bytes.
    pub fn new() -> Self {
        Self::scanning_every(SCAN_AT)
    }

    /// A scanner for the data of a field named for a BSN ([`names_a_bsn`]): every reading of
    /// it is read as the number after a BSN label.
    pub fn labelled() -> Self {
        let mut scanner = Self::new();
        let label = units(LABEL);
        for view in &mut scanner.views {
            view.units.extend_from_slice(&label);
            view.units.push(Unit::SPACE);
        }
        scanner
    }

    /// A scanner that reads what it holds every `scan_at` units of text (tests use small ones
    /// to put the boundaries everywhere).
    fn scanning_every(scan_at: usize) -> Self {
        Self {
            // UTF-8, then UTF-16 little- and big-endian, each from an even and an odd byte.
            views: [
                (Encoding::Utf8, false),
                (Encoding::Utf16 { big_endian: false }, false),
                (Encoding::Utf16 { big_endian: false }, true),
                (Encoding::Utf16 { big_endian: true }, false),
                (Encoding::Utf16 { big_endian: true }, true),
            ]
            .into_iter()
            .map(|(encoding, skip)| Box::new(View::new(encoding, skip, scan_at)))
            .collect(),
            helper: None,
            parallel_from: PARALLEL_FROM,
            refused: None,
        }
    }

    /// Takes the next bytes; refuses them (naming `field`) as soon as what arrived so far holds
    /// a BSN or an MRZ that nothing after it can make harmless.
    pub fn write(&mut self, field: &str, bytes: &[u8]) -> Result<(), InputError> {
        self.write_beside(field, bytes, || ()).0
    }

    /// `write`, with `beside` run meanwhile on the caller's thread once it has read its
    /// readings (the helper, from `PARALLEL_FROM` bytes on, reads the others): the caller's own
    /// work on the same bytes, such as hashing and sealing them. The guard's answer for what
    /// it has read so far (the helper's readings of this write are answered at the next
    /// `write`, `settle` or `finish`), and what `beside` returned, which always runs.
    pub fn write_beside<T>(
        &mut self,
        field: &str,
        bytes: &[u8],
        beside: impl FnOnce() -> T,
    ) -> (Result<(), InputError>, T) {
        // The first finding in the order of the writes, and of the readings within a write,
        // as when read one after another: the helper's answer for the write before first.
        let before = self.answered();
        if before.is_err() {
            return (self.refuse(before, field), beside());
        }
        if self.helper.is_none() && bytes.len() >= self.parallel_from && self.views.len() > MINE {
            let theirs = self.views.split_off(MINE);
            match Helper::start(theirs) {
                Ok(helper) => self.helper = Some(helper),
                // Without a thread to spare, all of them are read here.
                Err(theirs) => self.views.extend(theirs),
            }
        }
        if let Some(helper) = &mut self.helper {
            helper.write(bytes);
        }
        let found = self
            .views
            .iter_mut()
            .try_for_each(|v| v.write_and_read(bytes));
        (self.refuse(found, field), beside())
    }

    /// The guard's answer for everything written so far, waiting for the helper: what an
    /// upload calls before it stores anything it sealed.
    pub fn settle(&mut self, field: &str) -> Result<(), InputError> {
        let answer = self.answered();
        self.refuse(answer, field)
    }

    /// Reads what is left at the end of the data. Call it once, after the last `write`.
    pub fn finish(&mut self, field: &str) -> Result<(), InputError> {
        self.settle(field)?;
        let mine = self.views.iter_mut().try_for_each(|view| view.finish());
        self.refuse(mine, field)?;
        let theirs = self.helper.as_mut().map_or(Ok(()), |helper| {
            helper.send(Job::Finish);
            helper.answer()
        });
        self.refuse(theirs, field)
    }

    /// The first finding so far: one this scanner was refused for, or the helper's answer for
    /// the write it was handed last.
    fn answered(&mut self) -> Result<(), Finding> {
        match self.refused {
            Some(finding) => Err(finding),
            None => self.helper.as_mut().map_or(Ok(()), Helper::answer),
        }
    }

    /// `found` as the answer to a call naming `field`; a finding is kept, and every later call
    /// is refused for it.
    fn refuse(&mut self, found: Result<(), Finding>, field: &str) -> Result<(), InputError> {
        found.map_err(|finding| {
            let first = *self.refused.get_or_insert(finding);
            first.refuse(field)
        })
    }
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading text as units.

/// What the guard found.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Finding {
    Bsn,
    Mrz,
}

impl Finding {
    fn refuse(self, field: &str) -> InputError {
        InputError::new(
            field,
            match self {
                Finding::Bsn => BSN_PROBLEM,
                Finding::Mrz => MRZ_PROBLEM,
            },
        )
    }
}

fn check_units(u: &[Unit]) -> Result<(), Finding> {
    if find_bsns(u, |_, _| true) {
        return Err(Finding::Bsn);
    }
    if matches!(scan_mrz(u, &mut Zeroizing::new(Vec::new())), MrzScan::Found) {
        return Err(Finding::Mrz);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Text read as it shows.

/// Reads `text` a second time as it shows when markup renders it and a person reads it, when
/// it could show otherwise than it is written: markup tags left out (inline ones such as
/// `<b>` join what stands around them, `B<b>SN</b>`; others separate), comments left out,
/// character references put back as the characters they stand for (`B&#83;N`, `&#x6c;`,
/// `&nbsp;`, `&Bopf;`, also a reference written as a reference, `&amp;#49;`), a word broken at
/// a line end joined (`burger-` and `servicenummer` on the next line), and every character
/// outside ASCII read as the letter it shows: signs that decompose to letters (`ℓ`, `Ⅰ`, `ⓛ`,
/// `ᴮ`, `ℕ`, `º`) and letters of any script that Unicode's confusables (UTS #39) take for a
/// Latin one (`ꓐ`, `Ᏼ`, `ᴏ`, `〇`). Text in plain ASCII without `<`, `&` or such a break shows
/// as it is written and is not read again.
fn read_as_shown(text: &str) -> Result<(), Finding> {
    match shown_units(text) {
        Some(u) if find_bsns(&u, |_, _| true) => Err(Finding::Bsn),
        _ => Ok(()),
    }
}

/// The units of `text` as it shows ([`read_as_shown`]), when it can show otherwise than it is
/// written.
fn shown_units(text: &str) -> Option<Zeroizing<Vec<Unit>>> {
    let plain = text.is_ascii()
        && !text.bytes().any(|b| matches!(b, b'<' | b'&'))
        && !text.contains("-\n")
        && !text.contains("-\r\n");
    if plain {
        return None;
    }
    let mut shown = render(text);
    // A reference written as a reference (`&amp;#49;`, `&amp;amp;#49;`) shows as one once
    // rendered again.
    for _ in 0..3 {
        if !shown.contains('&') {
            break;
        }
        let again = render(&shown);
        if *again == *shown {
            break;
        }
        shown = again;
    }
    let mut u: Zeroizing<Vec<Unit>> = Zeroizing::new(Vec::with_capacity(shown.len()));
    for c in shown.chars() {
        reserve_wiped(&mut u, MAX_FOLD);
        fold_as_letters(c, &mut |x| u.push(x));
    }
    Some(u)
}

/// Whether `u`, the value of something named for a BSN, holds one read as the number after a
/// label from any word on (`zie: l23456782`, `NL-l23456782`, `nvt 1234 5672`): the name is its
/// label, whatever the value says first.
fn labelled_anywhere(u: &[Unit]) -> bool {
    // One reading from the start and one after each word that ends the one before, each as far
    // as it goes (no reach): every part of the value is read once, in time linear in it.
    let mut p = 0;
    while p < u.len() {
        // A break (a byte that is not UTF-8) ends a reading as a word does, and one begins
        // after it (`nvt\xFF 1234 5672`).
        let starts = p == 0
            || u.get(p - 1) == Some(&Unit::BREAK)
            || (u.get(p - 1).is_some_and(Unit::binds)
                && !u.get(p).is_some_and(Unit::binds)
                && !names_another_number(u, p));
        if !starts {
            p += 1;
            continue;
        }
        let (hit, stop) = labelled_read(u, p, u.len(), &mut |_, _| true);
        if hit {
            return true;
        }
        p = stop.max(p + 1);
    }
    false
}

/// Whether the word ending at `end` says that the number after it is another one (`dossier`,
/// `tel`, `ref`, `zaak` …: `bsn: onbekend (dossier 7875-3168)`).
fn names_another_number(u: &[Unit], end: usize) -> bool {
    let mut start = end;
    while start > 0 && u.get(start - 1).is_some_and(Unit::binds) {
        start -= 1;
    }
    let word: Vec<u8> = u
        .get(start..end)
        .unwrap_or_default()
        .iter()
        .map(|x| x.0)
        .collect();
    matches!(
        word.as_slice(),
        b"dossier"
            | b"dossiernummer"
            | b"dossiernr"
            | b"zaak"
            | b"zaaknummer"
            | b"zaaknr"
            | b"ref"
            | b"referentie"
            | b"kenmerk"
            | b"tel"
            | b"telefoon"
            | b"telefoonnummer"
            | b"mobiel"
            | b"mail"
            | b"iban"
            | b"kvk"
            | b"relatie"
            | b"relatienummer"
            | b"huurnummer"
            | b"klantnummer"
            | b"contract"
            | b"contractnummer"
            | b"order"
            | b"factuur"
            | b"postcode"
    )
}

/// [`check_text`] for the value of something named for a BSN ([`names_a_bsn`]): a field's text,
/// a label's value. Its number is read after a label from any word on ([`labelled_anywhere`]),
/// as written and as shown.
pub fn check_labelled_text(field: &str, text: &str) -> Result<(), InputError> {
    check_text(field, text)?;
    let shown = shown_units(text);
    if labelled_anywhere(&units(text)) || shown.is_some_and(|u| labelled_anywhere(&u)) {
        return Err(Finding::Bsn.refuse(field));
    }
    Ok(())
}

/// Tags that show nothing between the text around them: that text joins.
const INLINE_TAGS: &[&str] = &[
    "a", "abbr", "area", "audio", "b", "base", "bdi", "bdo", "big", "canvas", "cite", "code",
    "col", "data", "del", "dfn", "dialog", "em", "embed", "font", "i", "iframe", "img", "ins",
    "kbd", "link", "map", "mark", "math", "meta", "noscript", "object", "param", "picture", "q",
    "s", "samp", "script", "select", "slot", "small", "source", "span", "strike", "strong",
    "style", "sub", "sup", "svg", "template", "textarea", "time", "title", "track", "tt", "u",
    "var", "video", "wbr",
];

/// Elements whose content never shows: left out with it.
const HIDDEN_ELEMENTS: &[&str] = &["noscript", "script", "style", "svg", "template"];

/// `text` as markup shows it: see [`read_as_shown`].
fn render(text: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    let mut rest = text;
    // Where the next `-->` ends a comment, as an offset from the end of `text` (found once per
    // comment, never again once there is none: a text of unclosed comments reads in linear
    // time).
    let mut closes: Option<Option<usize>> = None;
    let mut labelled = false;
    // Where the end of each hidden element is (as `closes`).
    let mut hidden: Vec<(String, Option<usize>)> = Vec::new();
    while let Some(at) = rest.find(['<', '&', '-']) {
        let (before, tail) = rest.split_at(at);
        push_str_wiped(&mut out, before);
        let used = match tail.as_bytes().first() {
            Some(b'<') => rendered_tag(tail, &mut closes, &mut hidden, &mut labelled, &mut out),
            Some(b'&') => rendered_reference(tail, &mut out),
            _ => {
                let after_letter = out.chars().next_back().is_some_and(char::is_alphabetic);
                rendered_hyphen(tail, after_letter, &mut out)
            }
        };
        rest = tail.get(used.max(1)..).unwrap_or_default();
    }
    push_str_wiped(&mut out, rest);
    out
}

/// Renders the tag or comment that `tail` starts with; returns how many bytes it took (the
/// `<` alone, kept, when it starts none). `closes` remembers where the next `-->` is, counted
/// from the end of the text; `labelled`, that the last tag named a BSN and its element is open.
fn rendered_tag(
    tail: &str,
    closes: &mut Option<Option<usize>>,
    hidden: &mut Vec<(String, Option<usize>)>,
    labelled: &mut bool,
    out: &mut Zeroizing<String>,
) -> usize {
    if let Some(body) = tail.strip_prefix("<!--") {
        // HTML ends `<!-->` and `<!--->` at once.
        if body.starts_with('>') {
            return 5;
        }
        if body.starts_with("->") {
            return 6;
        }
        let known = closes.filter(|c| c.is_none_or(|from_end| from_end <= body.len()));
        let close = match known {
            Some(close) => close,
            None => {
                let found = comment_end(body).map(|p| body.len() - p);
                *closes = Some(found);
                found
            }
        };
        if let Some(from_end) = close {
            // `-->`, or `--!>`, which HTML takes for one too.
            let at = tail.len() - from_end;
            let bang = usize::from(tail.get(at + 2..at + 3) == Some("!"));
            return at + 3 + bang;
        }
        push_wiped_char(out, '<');
        return 1;
    }
    let bytes = tail.as_bytes();
    let starts = bytes
        .get(1)
        .is_some_and(|&b| b.is_ascii_alphabetic() || matches!(b, b'/' | b'!' | b'?'));
    let end = bytes
        .iter()
        .take(256)
        .skip(1)
        .position(|&b| b == b'>' || b == b'<')
        .map(|p| p + 1)
        .filter(|&p| bytes.get(p) == Some(&b'>'));
    let (true, Some(end)) = (starts, end) else {
        push_wiped_char(out, '<');
        return 1;
    };
    let inside = tail.get(1..end).unwrap_or_default();
    let name: String = inside
        .trim_start_matches('/')
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let inline = INLINE_TAGS.contains(&name.as_str());
    // A tag that names a BSN (`<bsn>`, `<td data-label="B.S.N.">`, also with references or
    // signs, `data-label="B&#83;N"`) shows as its label, until its element ends (an inline
    // element inside it ends nothing); one with a label of its own
    // (`<td data-label="Huurnummer">`) as a word that is none, which ends a label's reach as
    // that label does. A form field shows its value.
    let ends_reach = " end ";
    if inside.starts_with('/') && !inline && std::mem::take(labelled) {
        push_str_wiped(out, ends_reach);
        return end + 1;
    }
    // Elements whose content never shows (`<style>`, `<script>`, `<template>`, `<svg>`):
    // left out with it, when their end is there.
    if HIDDEN_ELEMENTS.contains(&name.as_str())
        && !inside.starts_with('/')
        && !inside.ends_with('/')
    {
        let rest = tail.get(end + 1..).unwrap_or_default();
        let known = hidden
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, c)| c)
            .filter(|c| c.is_none_or(|from_end| from_end <= rest.len()));
        let found = match known {
            Some(found) => found,
            None => {
                let found = rest
                    .match_indices("</")
                    .map(|(p, _)| p)
                    .find(|&p| {
                        rest.get(p + 2..p + 2 + name.len())
                            .is_some_and(|n| n.eq_ignore_ascii_case(&name))
                    })
                    .map(|p| rest.len() - p);
                hidden.retain(|(n, _)| *n != name);
                hidden.push((name.clone(), found));
                found
            }
        };
        if let Some(from_end) = found {
            let at = tail.len() - from_end;
            let after = tail.get(at..).unwrap_or_default();
            return at + after.find('>').map_or(after.len(), |p| p + 1);
        }
    }
    let mut attributes = render(inside);
    for _ in 0..3 {
        if !attributes.contains('&') {
            break;
        }
        attributes = render(&attributes);
    }
    let mut u: Zeroizing<Vec<Unit>> = Zeroizing::new(Vec::with_capacity(inside.len()));
    for c in attributes.chars() {
        reserve_wiped(&mut u, MAX_FOLD);
        fold_as_letters(c, &mut |x| u.push(x));
    }
    let opens = !inside.starts_with('/') && !inside.ends_with('/');
    let value = inside
        .find("value=")
        .filter(|&at| {
            at == 0
                || inside
                    .as_bytes()
                    .get(at - 1)
                    .is_some_and(|b| !b.is_ascii_alphanumeric())
        })
        .and_then(|at| inside.get(at + 6..))
        .map(|v| {
            let quote = v.chars().next().filter(|q| matches!(q, '"' | '\''));
            let v = v.get(quote.map_or(0, char::len_utf8)..).unwrap_or_default();
            let stop = v.find(|c: char| Some(c) == quote || (quote.is_none() && c.is_whitespace()));
            v.get(..stop.unwrap_or(v.len())).unwrap_or_default()
        });
    if opens && (tag_names_a_bsn(&u, 0, u.len()) || names_a_bsn(inside)) {
        push_str_wiped(out, " bsn ");
        if name == "input" {
            // A form field's label is for its own value only.
            push_str_wiped(out, value.unwrap_or_default());
            push_str_wiped(out, ends_reach);
        } else {
            push_str_wiped(out, value.unwrap_or_default());
            push_wiped_char(out, ' ');
            *labelled = true;
        }
        return end + 1;
    }
    if tag_has_own_label(&u, 0, u.len()) {
        push_str_wiped(out, ends_reach);
        return end + 1;
    }
    if let Some(value) = value {
        push_wiped_char(out, ' ');
        push_str_wiped(out, value);
        push_wiped_char(out, ' ');
        return end + 1;
    }
    // A processing instruction or declaration (`<?php ?>`, `<!doctype>`) shows nothing.
    if !(inside.starts_with(['?', '!']) || inline) {
        push_wiped_char(out, ' ');
    }
    end + 1
}

/// Where the comment whose body is `body` ends: its `-->` or `--!>`.
fn comment_end(body: &str) -> Option<usize> {
    body.match_indices("--").map(|(at, _)| at).find(|&at| {
        let after = body.get(at + 2..).unwrap_or_default();
        after.starts_with('>') || after.starts_with("!>")
    })
}

/// Renders the character reference that `tail` starts with; returns how many bytes it took
/// (the `&` alone, kept, when it starts none).
fn rendered_reference(tail: &str, out: &mut Zeroizing<String>) -> usize {
    let bytes = tail.as_bytes();
    if bytes.get(1) == Some(&b'#') {
        let hex = matches!(bytes.get(2), Some(b'x' | b'X'));
        let body = 2 + usize::from(hex);
        let digits = bytes
            .iter()
            .skip(body)
            .take(9)
            .take_while(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count();
        let value = tail
            .get(body..body + digits)
            .and_then(|d| u32::from_str_radix(d, if hex { 16 } else { 10 }).ok())
            .and_then(char::from_u32);
        if let Some(c) = value.filter(|_| digits > 0) {
            push_wiped_char(out, c);
            let end = body + digits;
            return end + usize::from(bytes.get(end) == Some(&b';'));
        }
        push_wiped_char(out, '&');
        return 1;
    }
    let name_len = bytes
        .iter()
        .skip(1)
        .take(32)
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    let name = tail.get(1..1 + name_len).unwrap_or_default();
    let closed = bytes.get(1 + name_len) == Some(&b';');
    // `&Bopf;`, `&Bscr;`, `&Bfr;`: a letter in a mathematical alphabet.
    let math = ["opf", "scr", "fr"].iter().find_map(|suffix| {
        name.strip_suffix(suffix)
            .filter(|l| l.len() == 1 && l.bytes().all(|b| b.is_ascii_alphabetic()))
    });
    let shown = match (name, math) {
        (_, Some(letter)) if closed => Some(letter),
        ("nbsp" | "ensp" | "emsp" | "thinsp" | "numsp" | "puncsp" | "NewLine" | "Tab", _) => {
            Some(" ")
        }
        ("shy" | "ZeroWidthSpace" | "zwj" | "zwnj" | "NoBreak" | "lrm" | "rlm", _) => Some(""),
        ("period", _) => Some("."),
        ("colon", _) => Some(":"),
        ("num", _) => Some("#"),
        ("sol", _) => Some("/"),
        ("comma", _) => Some(","),
        ("hyphen" | "dash" | "ndash" | "mdash" | "minus" | "horbar", _) => Some("-"),
        ("amp" | "AMP", _) => Some("&"),
        ("lt" | "LT", _) => Some("<"),
        ("gt" | "GT", _) => Some(">"),
        ("quot" | "apos" | "lsquo" | "rsquo" | "ldquo" | "rdquo", _) => Some("'"),
        ("middot" | "centerdot", _) => Some("·"),
        ("sup1", _) => Some("1"),
        ("sup2", _) => Some("2"),
        ("sup3", _) => Some("3"),
        ("ordm", _) => Some("o"),
        _ => None,
    };
    match shown {
        Some(shown) => {
            push_str_wiped(out, shown);
            1 + name_len + usize::from(closed)
        }
        None => {
            push_wiped_char(out, '&');
            1
        }
    }
}

/// Renders the `-` that `tail` starts with: a word broken at a line end (a letter before it,
/// a line break and a letter after) is joined; returns how many bytes it took.
fn rendered_hyphen(tail: &str, after_letter: bool, out: &mut Zeroizing<String>) -> usize {
    let rest = tail.get(1..).unwrap_or_default();
    let broken = rest
        .strip_prefix("\r\n")
        .or_else(|| rest.strip_prefix('\n'))
        .map(|next| next.trim_start_matches([' ', '\t']));
    match broken {
        Some(next) if after_letter && next.chars().next().is_some_and(char::is_alphabetic) => {
            tail.len() - next.len()
        }
        _ => {
            push_wiped_char(out, '-');
            1
        }
    }
}

/// The Latin letter Unicode's confusables (UTS #39) take `c` for, when it is one letter.
fn confusable_letter(c: char) -> Option<u8> {
    let mut buffer = [0u8; 4];
    let mut shown = unicode_security::confusable_detection::skeleton(c.encode_utf8(&mut buffer))
        .filter(|d| !is_combining_mark(*d));
    match (shown.next(), shown.next()) {
        (Some(l), None) if l.is_ascii_alphabetic() => u8::try_from(l).ok(),
        _ => None,
    }
}

/// One character of folded text as the scanners see it, in one byte. ASCII digits, lower-case
/// ASCII letters and the other ASCII characters stand for themselves, with these folded
/// together: every kind of white space is [`Unit::SPACE`], `-`, `_`, `/`, dashes and the minus
/// sign are [`Unit::JOINER`], dots and middle dots [`Unit::DOT`], currency signs
/// [`Unit::CURRENCY`]. A letter outside ASCII is [`Unit::LETTER`], any other character outside
/// ASCII [`Unit::OTHER`], and what is not a character (a byte of binary data that is not part
/// of UTF-8, half a UTF-16 surrogate pair) [`Unit::BREAK`], which ends a number and an MRZ line
/// and separates nothing.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
struct Unit(u8);

impl Unit {
    const SPACE: Unit = Unit(b' ');
    const JOINER: Unit = Unit(b'-');
    const DOT: Unit = Unit(b'.');
    const CURRENCY: Unit = Unit(b'$');
    const LETTER: Unit = Unit(0x80);
    const OTHER: Unit = Unit(0x81);
    const BREAK: Unit = Unit(0xFF);

    /// The value of a digit.
    fn digit(self) -> Option<u8> {
        self.0.is_ascii_digit().then(|| self.0 - b'0')
    }

    fn is_digit(&self) -> bool {
        self.0.is_ascii_digit()
    }

    fn is_letter(&self) -> bool {
        self.0.is_ascii_lowercase() || *self == Unit::LETTER
    }

    /// A letter that makes the digits it touches part of a code: a Latin letter (ASCII after
    /// folding, so also an accented or full-width one). A letter of another script does not:
    /// codes are written in Latin letters, and in binary data read as UTF-16 the two bytes
    /// after a number are a letter of some script (CJK, Hangul, Yi …) more often than not.
    fn binds(&self) -> bool {
        self.0.is_ascii_lowercase()
    }

    /// Neither a Latin letter, nor a digit, nor a break: a character that can stand between
    /// the groups of digits of one number. A letter of another script is one (`111ǀ222ǀ333`
    /// with U+01C0, `111一222一333`): many look like the punctuation that separates, and none
    /// makes the digits a code.
    fn is_separator(&self) -> bool {
        !(self.is_digit() || self.binds() || *self == Unit::BREAK)
    }
}

impl Default for Unit {
    fn default() -> Self {
        Unit::BREAK
    }
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
    !c.is_ascii()
        && (INVISIBLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
            || c.general_category() == GeneralCategory::Format)
}

// The units of a value are plaintext: the buffers that hold them are wiped (to `BREAK`).
impl zeroize::DefaultIsZeroes for Unit {}

/// Most units one character folds to (U+FDFA, the longest compatibility decomposition).
const MAX_FOLD: usize = 18;

/// `text` folded to units.
fn units(text: &str) -> Zeroizing<Vec<Unit>> {
    let folds = Folds::get();
    let mut out = Zeroizing::new(Vec::with_capacity(text.len()));
    for c in text.chars() {
        reserve_wiped(&mut out, MAX_FOLD);
        folds.fold(c, &mut |u| out.push(u));
    }
    out
}

/// Makes room for `more` elements in a wiped buffer without leaving a copy behind. A `Vec`
/// that grows frees its old buffer as it is; here the contents move into a larger buffer and
/// the old one is wiped as it drops.
fn reserve_wiped<T: Copy + Zeroize>(buf: &mut Zeroizing<Vec<T>>, more: usize) {
    let need = buf.len() + more;
    if need > buf.capacity() {
        let mut grown = Vec::with_capacity(need.max(buf.capacity() * 2));
        grown.extend_from_slice(buf);
        *buf = Zeroizing::new(grown);
    }
}

/// Appends `s` to a wiped text without leaving a copy behind (as [`reserve_wiped`]).
fn push_str_wiped(buf: &mut Zeroizing<String>, s: &str) {
    let need = buf.len() + s.len();
    if need > buf.capacity() {
        let mut grown = String::with_capacity(need.max(buf.capacity() * 2));
        grown.push_str(buf);
        *buf = Zeroizing::new(grown);
    }
    buf.push_str(s);
}

/// Appends `c` to a wiped text without leaving a copy behind (as [`reserve_wiped`]).
fn push_wiped_char(buf: &mut Zeroizing<String>, c: char) {
    push_str_wiped(buf, c.encode_utf8(&mut [0; 4]));
}

/// What each character of the Basic Multilingual Plane folds to, computed once with
/// [`fold_slowly`] and kept small enough (64 KiB for the common case) that reading binary data
/// five ways stays fast.
struct Folds {
    /// Per character: [`NOTHING`](Folds::NOTHING), [`MANY`](Folds::MANY), or the index in
    /// `single` (plus [`FIRST_SINGLE`](Folds::FIRST_SINGLE)) of the one unit it folds to.
    code: Box<[u8]>,
    single: Vec<Unit>,
    /// The units of the characters coded `MANY`: `units[start..start + len]` with
    /// `index[c] = start << 8 | len`.
    index: Box<[u32]>,
    units: Box<[Unit]>,
    /// Per character of the plane, the one unit it folds to, or [`Folds::SLOW`] when it folds
    /// to none or several, or is a surrogate: one load for the common case of the decoders.
    direct: Box<[u8]>,
    /// Per character of the plane, what [`quiet_utf16`] reads of it in one load (64 KiB): a
    /// high surrogate ([`Folds::HIGH`]), a low one ([`Folds::LOW`]), or the digits (the low
    /// three bits) and MRZ characters (the next three) it folds to; [`Folds::MANY_MARKS`] when
    /// either is more than six (it is then counted one by one). Zero: a character that folds
    /// to neither, as most code units of binary data are. (No character of the plane folds to
    /// more than six; [`Folds::MANY_MARKS`] is there should folding ever change.)
    quiet: Box<[u8]>,
    /// Per character of two bytes of UTF-8 (`U+0080` to `U+07FF`, by its code point), the
    /// digits and MRZ characters it folds to; per 64 characters of three bytes that share
    /// their first two (`U+0800` to `U+FFFF`, by the code point's top ten bits), the most any
    /// of them folds to. What the block pass of [`quiet_utf8`] counts a character by, from its
    /// lead byte and the byte after it ([`Folds::lead_marks`]); for four bytes,
    /// [`MOST_OUTSIDE_PLANE`].
    two: Box<[[u8; 2]]>,
    three: Box<[[u8; 2]]>,
}

impl Folds {
    const NOTHING: u8 = 0;
    const MANY: u8 = 1;
    const FIRST_SINGLE: u8 = 2;
    /// In `direct`: several units, or a surrogate. No unit has this value (units are ASCII,
    /// `LETTER`, `OTHER` or `BREAK`), nor [`Folds::NONE`]: a character that folds to nothing.
    const SLOW: u8 = 0xFE;
    const NONE: u8 = 0xFD;
    /// In `quiet`: a high surrogate, a low one; both bits for a character that folds to more
    /// than six digits or MRZ characters.
    const HIGH: u8 = 0x80;
    const LOW: u8 = 0x40;
    const MANY_MARKS: u8 = Self::HIGH | Self::LOW;

    fn get() -> &'static Folds {
        static FOLDS: OnceLock<Folds> = OnceLock::new();
        FOLDS.get_or_init(Folds::build)
    }

    fn build() -> Folds {
        let mut code = Vec::with_capacity(0x1_0000);
        let mut single: Vec<Unit> = Vec::new();
        let mut index = Vec::with_capacity(0x1_0000);
        let mut units = Vec::new();
        let mut direct = Vec::with_capacity(0x1_0000);
        let mut quiet = Vec::with_capacity(0x1_0000);
        let mut two = vec![[0u8; 2]; 0x800];
        let mut three = vec![[0u8; 2]; 0x400];
        let mut one = Vec::with_capacity(MAX_FOLD);
        for cp in 0..=0xFFFFu32 {
            one.clear();
            match char::from_u32(cp) {
                Some(c) => fold_slowly(c, &mut |u| one.push(u)),
                // Surrogates never reach `fold`.
                None => one.push(Unit::BREAK),
            }
            let digits = one.iter().filter(|u| u.is_digit()).count();
            // Every digit is an MRZ character too.
            let mrz = one.iter().filter(|&&u| mrz_char(u).is_some()).count();
            // Saturated, a count is still at least what the character folds to.
            let counts = [digits, mrz].map(|n| u8::try_from(n).unwrap_or(u8::MAX));
            let bound = if cp < 0x800 {
                two.get_mut(cp as usize)
            } else {
                three.get_mut((cp >> 6) as usize)
            };
            if let Some(bound) = bound.filter(|_| cp >= 0x80) {
                let ([d, m], [cd, cm]) = (*bound, counts);
                *bound = [d.max(cd), m.max(cm)];
            }
            quiet.push(match cp {
                0xD800..=0xDBFF => Self::HIGH,
                0xDC00..=0xDFFF => Self::LOW,
                _ => match (u8::try_from(digits), u8::try_from(mrz)) {
                    (Ok(d @ 0..=6), Ok(m @ 0..=6)) => d | m << 3,
                    _ => Self::MANY_MARKS,
                },
            });
            direct.push(match (char::from_u32(cp), one.as_slice()) {
                (Some(_), []) => Self::NONE,
                (Some(_), [u]) if u.0 <= Unit::OTHER.0 => u.0,
                _ => Self::SLOW,
            });
            code.push(match one.as_slice() {
                [] => Self::NOTHING,
                [u] => {
                    let k = single.iter().position(|s| s == u).unwrap_or_else(|| {
                        single.push(*u);
                        single.len() - 1
                    });
                    // INVARIANT: fewer than 254 distinct single units (one byte each, less
                    // the ASCII capitals and a few folded together).
                    u8::try_from(k).map_or(Self::MANY, |k| k.saturating_add(Self::FIRST_SINGLE))
                }
                _ => Self::MANY,
            });
            // INVARIANT: fewer than 2^24 units in all, at most MAX_FOLD per character.
            index.push(u32::try_from(units.len() << 8 | one.len()).unwrap_or(0));
            units.extend_from_slice(&one);
        }
        Folds {
            code: code.into_boxed_slice(),
            single,
            index: index.into_boxed_slice(),
            units: units.into_boxed_slice(),
            direct: direct.into_boxed_slice(),
            quiet: quiet.into_boxed_slice(),
            two: two.into_boxed_slice(),
            three: three.into_boxed_slice(),
        }
    }

    /// At least as many digits, and MRZ characters, as a character of UTF-8 beginning with
    /// `lead` (a lead byte, `C2` to `F4`) and `second` folds to: exactly, for two bytes.
    #[inline(always)]
    fn lead_marks(&self, lead: u8, second: u8) -> (usize, usize) {
        let top = usize::from(second & 0x3F);
        let bound = match lead {
            0xC2..=0xDF => self.two.get(usize::from(lead & 0x1F) << 6 | top),
            0xE0..=0xEF => self.three.get(usize::from(lead & 0x0F) << 6 | top),
            _ => None,
        };
        bound.map_or(MOST_OUTSIDE_PLANE, |&[d, m]| {
            (usize::from(d), usize::from(m))
        })
    }

    /// What [`quiet_utf16`] reads of the character of the plane `cp`: zero when it folds to
    /// no digit and no MRZ character and is not a surrogate.
    // Always: one load in the decoders' loops, where a call would cost more than it.
    #[inline(always)]
    fn quiet(&self, cp: u16) -> u8 {
        self.quiet
            .get(usize::from(cp))
            .copied()
            .unwrap_or(Self::MANY_MARKS)
    }

    /// How many digits, and how many MRZ characters (digits among them), `c` folds to.
    fn marks(&self, c: char) -> (usize, usize) {
        let (mut digits, mut mrz) = (0, 0);
        self.fold(c, &mut |u| {
            digits += usize::from(u.is_digit());
            mrz += usize::from(mrz_char(u).is_some());
        });
        (digits, mrz)
    }

    /// The one unit the character of the Basic Multilingual Plane `cp` folds to, or
    /// [`Folds::NONE`] when it folds to nothing, or [`Folds::SLOW`] when it folds to several
    /// or is a surrogate ([`Folds::fold`] then says what).
    // Always: one load in the decoders' loops, where a call would cost more than it.
    #[inline(always)]
    fn direct(&self, cp: u16) -> u8 {
        self.direct
            .get(usize::from(cp))
            .copied()
            .unwrap_or(Self::SLOW)
    }

    /// Folds one character to the units it shows: its compatibility decomposition without
    /// combining marks and default-ignorable code points, classified.
    #[inline]
    fn fold(&self, c: char, out: &mut impl FnMut(Unit)) {
        let cp = u32::from(c);
        if let Ok(plane) = u16::try_from(cp) {
            match self.direct(plane) {
                Self::NONE => return,
                u if u <= Unit::OTHER.0 => return out(Unit(u)),
                _ => {}
            }
        }
        let Some(&code) = usize::try_from(cp).ok().and_then(|i| self.code.get(i)) else {
            fold_slowly(c, out);
            return;
        };
        match code {
            Self::NOTHING => {}
            Self::MANY => {
                let entry = usize::try_from(cp)
                    .ok()
                    .and_then(|i| self.index.get(i))
                    .copied()
                    .unwrap_or(0);
                let (start, len) = ((entry >> 8) as usize, (entry & 0xFF) as usize);
                match self.units.get(start..start + len) {
                    Some(units) => units.iter().copied().for_each(out),
                    None => fold_slowly(c, out),
                }
            }
            k => match self.single.get(usize::from(k - Self::FIRST_SINGLE)) {
                Some(u) => out(*u),
                None => fold_slowly(c, out),
            },
        }
    }

    /// The unit of an ASCII byte.
    // Always: one load in the decoders' loops, where a call would cost more than it.
    #[inline(always)]
    fn ascii(&self, b: u8) -> Unit {
        match self.direct(u16::from(b)) {
            u @ 0..=0x7F => Unit(u),
            _ => ascii_unit(b),
        }
    }
}

fn fold_slowly(c: char, out: &mut impl FnMut(Unit)) {
    fold_with(c, false, out);
}

/// Folds one character as [`read_as_shown`] reads it: as [`Folds::fold`] does, but with signs
/// read as the letters they decompose to and letters of other scripts as the Latin letters
/// Unicode's confusables take them for.
fn fold_as_letters(c: char, out: &mut impl FnMut(Unit)) {
    fold_with(c, true, out);
}

fn fold_with(c: char, as_shown: bool, out: &mut impl FnMut(Unit)) {
    if c.is_ascii() {
        out(ascii_unit(c as u8));
        return;
    }
    if is_ignorable(c) {
        return;
    }
    // A Hangul syllable is one letter; its decomposition into two or three jamo (letters too)
    // would only make words longer.
    if ('\u{AC00}'..='\u{D7A3}').contains(&c) {
        out(Unit::LETTER);
        return;
    }
    // A sign that decomposes to letters (`™`, `№`, `Ⓜ`, `ℹ`, a Roman numeral `Ⅰ`, a superscript
    // `ᵃ`, the ordinal `º`) reads as a sign, not as those letters: glued to a number it does
    // not make it a code. Read as shown, it is those letters.
    let sign = !as_shown && is_sign(c);
    decompose_compatible(c, |d| {
        if d.is_ascii() {
            let u = ascii_unit(d as u8);
            out(if sign && u.is_letter() {
                Unit::OTHER
            } else {
                u
            });
        } else if is_ignorable(d) {
        } else if let Some(latin) = look_alike(d).filter(|_| !sign) {
            // A letter that looks like a Latin one is read as it (`BЅN` with a Cyrillic `Ѕ`).
            latin.bytes().for_each(|b| out(ascii_unit(b)));
        } else if as_shown
            && decimal_digit(d).is_none()
            && let Some(latin) = confusable_letter(d)
        {
            out(ascii_unit(latin));
        } else {
            out(classify(d));
        }
    });
}

/// Whether `c` (outside ASCII) is a sign rather than a letter of words: not an upper-, lower-
/// or title-case letter, or one of the letter-like symbols (U+2100 to U+214F: `ℹ`, `ℓ`, `№`).
fn is_sign(c: char) -> bool {
    !matches!(
        c.general_category(),
        GeneralCategory::UppercaseLetter
            | GeneralCategory::LowercaseLetter
            | GeneralCategory::TitlecaseLetter
    ) || ('\u{2100}'..='\u{214F}').contains(&c)
}

fn ascii_unit(b: u8) -> Unit {
    match b {
        b'A'..=b'Z' => Unit(b.to_ascii_lowercase()),
        b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' => Unit::SPACE,
        b'-' | b'_' | b'/' => Unit::JOINER,
        // Digits, lower-case letters, `.`, `$` and the rest stand for themselves.
        b => Unit(b & 0x7F),
    }
}

/// The unit of a character outside ASCII that is not ignorable.
fn classify(c: char) -> Unit {
    if let Some(d) = decimal_digit(c) {
        return Unit(b'0' + d);
    }
    if c.is_whitespace() {
        return Unit::SPACE;
    }
    match c {
        '\u{00B7}' | '\u{2027}' | '\u{2219}' | '\u{22C5}' => Unit::DOT,
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{2215}' => Unit::JOINER,
        c if c.is_alphabetic() => Unit::LETTER,
        c if c.general_category() == GeneralCategory::CurrencySymbol => Unit::CURRENCY,
        _ => Unit::OTHER,
    }
}

/// Characters that show nothing by themselves: combining marks (which sit on the character
/// before them) and the default-ignorable code points of Unicode (DerivedCoreProperties.txt).
fn is_ignorable(c: char) -> bool {
    is_combining_mark(c) || is_default_ignorable(c)
}

fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
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

/// Longest markup tag read as one separator, in units between its `<` and `>`.
const MAX_TAG: usize = 64;
/// Longest character reference (`&nbsp;`, `&#8203;`) read as one separator, in units between
/// its `&` and `;`.
const MAX_REFERENCE: usize = 16;

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
    const MAX_WORD: usize = 48;
    // The letters backwards, and where each segment (between joiners) ends in them.
    let mut letters = [0u8; MAX_WORD];
    let mut n = 0;
    let mut cuts = [0usize; MAX_WORD];
    let mut segments = 0;
    let mut start = end;
    while start > 0 && end - start < MAX_WORD {
        match u.get(start - 1) {
            Some(&Unit(c)) if Unit(c).binds() => {
                if let Some(slot) = letters.get_mut(n) {
                    *slot = c;
                    n += 1;
                }
                start -= 1;
            }
            Some(&Unit::JOINER)
                if start >= 2 && u.get(start - 2).is_some_and(Unit::binds) && start < end =>
            {
                if let Some(cut) = cuts.get_mut(segments) {
                    *cut = n;
                    segments += 1;
                }
                start -= 1;
            }
            _ => break,
        }
    }
    // The segments in reading order.
    let mut word = [0u8; MAX_WORD];
    for (slot, &c) in word
        .iter_mut()
        .zip(letters.get(..n).unwrap_or_default().iter().rev())
    {
        *slot = c;
    }
    let word = word.get(..n).unwrap_or_default();
    let mut bounds = [0usize; MAX_WORD + 1];
    let mut parts = 0;
    for &cut in cuts.get(..segments).unwrap_or_default().iter().rev() {
        if let Some(slot) = bounds.get_mut(parts) {
            *slot = n - cut;
            parts += 1;
        }
    }
    if let Some(slot) = bounds.get_mut(parts) {
        *slot = n;
        parts += 1;
    }
    let bounds = bounds.get(..parts).unwrap_or_default();
    let segment = |i: usize| {
        let from = i
            .checked_sub(1)
            .and_then(|p| bounds.get(p))
            .copied()
            .unwrap_or(0);
        let to = bounds.get(i).copied().unwrap_or(from);
        word.get(from..to).unwrap_or_default()
    };
    let marker = if parts > 0 && segment(parts - 1) == b"nl" {
        Some(Marker::Nl)
    } else {
        // A segment that says BSN, followed by nothing but words that may stand after a label
        // (`bsn-nummer`, `klant-bsn`, `bsn-nr-huurder`; not `bsn-verified-at`).
        (0..parts)
            .rev()
            .find(|&i| says_bsn(segment(i)))
            .filter(|&i| (i + 1..parts).all(|k| is_filler(segment(k))))
            .map(|_| Marker::Bsn)
    };
    Word { start, marker }
}

/// Whether one word (a segment of a joined one) says BSN: `bsn` at its start (`bsnr`,
/// `bsnummer`) or at its end, or before what may follow a label (`klantbsn`,
/// `klantbsnnummer`; not `jobsnummer`, `clubsnummer`), `burgerservice…`, `citizenservice…`,
/// `sociaalfiscaal…`, and `sofi` alone or before `n…` (`sofinummer`, `sofinr`; not `sofie`,
/// `sofia`).
fn says_bsn(segment: &[u8]) -> bool {
    let contains = |w: &[u8]| segment.windows(w.len()).any(|x| x == w);
    if segment.starts_with(b"bsn")
        || contains(b"burgerservice")
        || contains(b"citizenservice")
        || contains(b"sociaalfiscaal")
    {
        return true;
    }
    if let Some(after) = segment.strip_prefix(b"sofi") {
        return after.is_empty() || after.starts_with(b"n");
    }
    segment.windows(3).enumerate().any(|(i, w)| {
        w == b"bsn"
            && matches!(
                segment.get(i + 3..).unwrap_or_default(),
                b"" | b"s" | b"nr" | b"no" | b"num" | b"nmr" | b"nummer" | b"number"
            )
    })
}

/// A numeral: a run of digits, or runs joined by single `,` or `:`.
#[derive(Clone, Copy, Debug)]
struct Group {
    /// Index of its first unit.
    start: usize,
    /// Index just past its last unit.
    end: usize,
    /// How many digits it has.
    len: usize,
    /// Whether it is set apart: a decimal, an amount or a time, never (part of) a BSN.
    apart: bool,
}

/// How a row of numbers meets what stands before or after it.
enum Edge {
    /// The row is a number of its own; `Some` when a BSN label stands before it.
    Free(Option<Marker>),
    /// The outer group belongs to a code (letters touch it): that group is left out.
    Bound,
    /// The row is a phone number or an amount: all of it is left out.
    Drop,
}

/// How the row whose first digit is at `s` meets what stands before it.
fn left_edge(u: &[Unit], s: usize) -> Edge {
    if let Some(x) = s
        .checked_sub(1)
        .and_then(|i| u.get(i))
        .filter(|x| x.is_letter())
    {
        return match word_before(u, s).marker {
            Some(m) => Edge::Free(Some(m)),
            None if x.binds() => Edge::Bound,
            None => Edge::Free(None),
        };
    }
    // Look back over a few separators: `+` before a row starts a phone number, a currency sign
    // an amount, and `)` after digits closes an area code.
    let mut i = s;
    while i > 0 && s - i < MAX_SEPARATOR_RUN {
        match u.get(i - 1) {
            Some(&(Unit(b'+') | Unit::CURRENCY)) => return Edge::Drop,
            Some(&Unit(b')')) if i >= 2 && u.get(i - 2).is_some_and(Unit::is_digit) => {
                return Edge::Drop;
            }
            Some(x) if x.is_separator() => i -= 1,
            _ => break,
        }
    }
    if i > 0 && u.get(i - 1).is_some_and(Unit::is_letter) {
        Edge::Free(word_before(u, i).marker)
    } else {
        Edge::Free(None)
    }
}

/// How the row whose last digit ends at `e` meets what stands after it; `marker` is the label
/// before the row.
fn right_edge(u: &[Unit], e: usize, marker: Option<Marker>) -> Edge {
    let after = |k: usize| u.get(e + k).copied();
    match after(0) {
        Some(Unit(b'b'))
            if marker == Some(Marker::Nl)
                && after(1).is_some_and(|x| x.is_digit())
                && after(2).is_some_and(|x| x.is_digit())
                && !after(3).is_some_and(|x| x.is_digit() || x.binds()) =>
        {
            return Edge::Free(marker);
        }
        // After a BSN label a letter glued on is a suffix, not a code (`BSN: 111222333X`).
        Some(x) if x.binds() && marker != Some(Marker::Bsn) => return Edge::Bound,
        _ => {}
    }
    for k in 0..MAX_SEPARATOR_RUN {
        match after(k) {
            Some(Unit::CURRENCY) => return Edge::Drop,
            Some(x) if x.is_separator() => {}
            _ => break,
        }
    }
    Edge::Free(marker)
}

/// Reads the group whose first digit is at `i`: a run of digits, or a numeral of runs joined
/// by single `,` or `:`. Runs of three digits after a first of one to three, all joined by the
/// same mark, are a number with thousands separators (`111,222,333`): only the first run is
/// the group, and the marks separate the next ones like any other separator. Any other joined
/// runs (`789,00`, `9:30`, `12:30:00`) are a numeral set apart, and so is a number with
/// thousands separators `,` followed by a decimal point and one or two digits
/// (`123,456,789.00`).
fn numeral(u: &[Unit], i: usize) -> Group {
    let start = i;
    let mut j = i;
    let (mut len, mut runs, mut first_run) = (0, 0, 0);
    let mut threes = true;
    let mut mark: Option<u8> = None;
    let mut mixed = false;
    loop {
        let run_start = j;
        while u.get(j).is_some_and(Unit::is_digit) {
            j += 1;
        }
        let run = j - run_start;
        len += run;
        runs += 1;
        if runs == 1 {
            first_run = run;
        } else if run != 3 {
            threes = false;
        }
        match (u.get(j), u.get(j + 1)) {
            (Some(&Unit(c @ (b',' | b':'))), Some(d)) if d.is_digit() => {
                mixed |= mark.is_some_and(|m| m != c);
                mark = Some(c);
                j += 1;
            }
            _ => break,
        }
    }
    let thousands = runs > 1 && !mixed && (1..=3).contains(&first_run) && threes;
    let cents = u
        .get(j + 1..)
        .unwrap_or_default()
        .iter()
        .take_while(|x| x.is_digit())
        .count();
    if thousands && mark == Some(b',') && u.get(j) == Some(&Unit::DOT) && (1..=2).contains(&cents) {
        j += 1 + cents;
    } else if thousands || runs == 1 {
        return Group {
            start,
            end: start + first_run,
            len: first_run,
            apart: false,
        };
    }
    Group {
        start,
        end: j,
        len,
        apart: true,
    }
}

/// Where the next group of the row starts when the group ending at `end` is followed by a
/// short run of separators and a digit: at most [`MAX_SEPARATOR_RUN`] separators, of which a
/// markup tag or character reference counts as one, and so does one `x` (`111 x 222`, the `×`
/// of dimensions) or one `i` or `l` (`111 I 222`, `111ǀ222` with a Cyrillic palochka: the bar
/// they look like).
fn next_group(u: &[Unit], end: usize) -> Option<usize> {
    let mut j = end;
    let mut x = false;
    for _ in 0..MAX_SEPARATOR_RUN {
        match u.get(j)? {
            Unit(b'x' | b'i' | b'l') if !x => {
                x = true;
                j += 1;
            }
            Unit(b'<') => j = markup_end(u, j).unwrap_or(j + 1),
            Unit(b'&') => {
                j = reference_end(u, j)
                    .or_else(|| unclosed_reference_end(u, j))
                    .unwrap_or(j + 1);
            }
            s if s.is_separator() => j += 1,
            _ => return None,
        }
        if u.get(j).is_some_and(Unit::is_digit) {
            return Some(j);
        }
    }
    None
}

/// The end of the markup tag whose `<` is at `i` (`<b>`, `</span>`, `<br/>`, `<!-- -->`): a
/// letter, `/` or `!`, then up to [`MAX_TAG`] units other than `<` and `>`, then `>`.
fn markup_end(u: &[Unit], i: usize) -> Option<usize> {
    if !matches!(u.get(i + 1)?, Unit(b'a'..=b'z' | 0x80 | b'-' | b'!')) {
        return None;
    }
    for k in i + 2..i + 2 + MAX_TAG {
        match *u.get(k)? {
            Unit(b'>') => return Some(k + 1),
            Unit(b'<') | Unit::BREAK => return None,
            _ => {}
        }
    }
    None
}

/// The end of the character reference whose `&` is at `i`: `&name;`, `&#digits;` or `&#xhex;`.
fn reference_end(u: &[Unit], i: usize) -> Option<usize> {
    let mut j = i + 1;
    let numeric = u.get(j) == Some(&Unit(b'#'));
    if numeric {
        j += 1;
        if u.get(j) == Some(&Unit(b'x')) {
            j += 1;
        }
    }
    let body = j;
    while j - body <= MAX_REFERENCE {
        match u.get(j)? {
            Unit(l @ b'a'..=b'z') if !numeric || l.is_ascii_hexdigit() => j += 1,
            Unit(b'0'..=b'9') if numeric || j > body => j += 1,
            Unit(b';') if j > body => return Some(j + 1),
            _ => return None,
        }
    }
    None
}

/// The names markup reads as character references also without their `;` (HTML's legacy
/// names, in lower case as units fold them): a browser shows `111&nbsp222&shy333` as
/// `111 222333`.
const UNCLOSED_NAMES: [&[u8]; 70] = [
    b"aacute", b"acirc", b"acute", b"aelig", b"agrave", b"amp", b"aring", b"atilde", b"auml",
    b"brvbar", b"ccedil", b"cedil", b"cent", b"copy", b"curren", b"deg", b"divide", b"eacute",
    b"ecirc", b"egrave", b"eth", b"euml", b"frac12", b"frac14", b"frac34", b"gt", b"iacute",
    b"icirc", b"iexcl", b"igrave", b"iquest", b"iuml", b"laquo", b"lt", b"macr", b"micro",
    b"middot", b"nbsp", b"not", b"ntilde", b"oacute", b"ocirc", b"ograve", b"ordf", b"ordm",
    b"oslash", b"otilde", b"ouml", b"para", b"plusmn", b"pound", b"quot", b"raquo", b"reg",
    b"sect", b"shy", b"sup1", b"sup2", b"sup3", b"szlig", b"thorn", b"times", b"uacute", b"ucirc",
    b"ugrave", b"uml", b"uuml", b"yacute", b"yen", b"yuml",
];

/// The end of a character reference without its `;` at `i` that markup reads as one character
/// whatever follows: a legacy name (`&nbsp`, `&shy`, `&middot`; the longest that fits), or a
/// numeric reference whose digits end before a unit that is no digit of its radix (`&#32 `;
/// not `&#32222`, which markup reads as one other character). `None` when a `;` follows (that
/// one is [`reference_end`]'s).
fn unclosed_reference_end(u: &[Unit], i: usize) -> Option<usize> {
    if u.get(i) != Some(&Unit(b'&')) {
        return None;
    }
    if let Some((radix, _)) = numeric_reference_body(u, i) {
        let end = bare_reference_end(u, i)?;
        return (!u.get(end).is_some_and(|x| char::from(x.0).is_digit(radix))).then_some(end);
    }
    let name = |n: &[u8]| {
        u.get(i + 1..i + 1 + n.len())
            .is_some_and(|at| at.iter().map(|x| x.0).eq(n.iter().copied()))
    };
    let longest = UNCLOSED_NAMES
        .iter()
        .filter(|n| name(n))
        .map(|n| n.len())
        .max()?;
    let end = i + 1 + longest;
    (u.get(end) != Some(&Unit(b';'))).then_some(end)
}

/// [`unclosed_reference_end`] for a legacy name only (`&nbsp`, `&shy`).
fn unclosed_named_end(u: &[Unit], i: usize) -> Option<usize> {
    (u.get(i + 1) != Some(&Unit(b'#')))
        .then(|| unclosed_reference_end(u, i))
        .flatten()
}

/// For a numeric character reference starting at `i` (`&#…`, `&#x…`), the radix of its digits
/// and where they begin.
fn numeric_reference_body(u: &[Unit], i: usize) -> Option<(u32, usize)> {
    if u.get(i) != Some(&Unit(b'&')) || u.get(i + 1) != Some(&Unit(b'#')) {
        return None;
    }
    let hex = u.get(i + 2) == Some(&Unit(b'x'));
    Some((if hex { 16 } else { 10 }, i + 2 + usize::from(hex)))
}

/// The digit a numeric character reference (`&#52;`, `&#x34;`, `&#52` without its `;`,
/// `&#65300;` for a full-width `４`) starting at `i` stands for, the unit after it, and whether
/// it stands for a letter written for the digit (`&#108;`, an `l`: [`digit_written_as`]).
fn reference_digit(u: &[Unit], i: usize) -> Option<(u8, usize, bool)> {
    let (radix, body) = numeric_reference_body(u, i)?;
    let mut j = body;
    let mut value: u32 = 0;
    // Markup takes a numeric reference without its `;` too (`&#49&#50`).
    while let Some(d) = u.get(j).and_then(|x| char::from(x.0).to_digit(radix)) {
        value = value.checked_mul(radix)?.checked_add(d)?;
        j += 1;
        if j - body > 8 {
            return None;
        }
    }
    if j == body {
        return None;
    }
    let end = if u.get(j) == Some(&Unit(b';')) {
        j + 1
    } else {
        j
    };
    // Any character that folds to one digit (`&#65300;` is a full-width 4).
    let mut folded = [None; 2];
    let mut n = 0;
    Folds::get().fold(char::from_u32(value)?, &mut |x| {
        if let Some(slot) = folded.get_mut(n) {
            *slot = Some(x);
        }
        n += 1;
    });
    let one = folded.first().copied().flatten().filter(|_| n == 1)?;
    match (one.digit(), digit_written_as(one)) {
        (Some(d), _) => Some((d, end, false)),
        (None, Some(d)) => Some((d, end, true)),
        (None, None) => None,
    }
}

/// Most words, tags and references between a BSN label and the number it is looked for from.
const MAX_LABEL_STEPS: usize = 16;

/// Units after the end of a BSN label in which its number is read whatever stands between the
/// digits (`labelled_bsn`).
const LABEL_REACH: usize = 96;

/// Words that may stand between a BSN label and its number: `bsn nr 111222333`, `BSN no.`,
/// `BSN n°`, `bsn nmr`, `bsn is`, `BSN's`, `luidt`, whose number it is (`BSN huurder:`,
/// `BSN van de huurder`, `v/d klant`, `of the tenant`, `partner`, `echtgenote`, `zoon`,
/// `cliënt`, `bewindvoerder`, `mevrouw` …), `en` between parts of the number, and one `l`, `i`
/// or `o` written for `1` or `0`.
fn label_filler(word: &[Unit]) -> bool {
    let mut letters = [0u8; 16];
    if word.len() > letters.len() {
        return false;
    }
    for (slot, x) in letters.iter_mut().zip(word) {
        *slot = x.0;
    }
    is_filler(letters.get(..word.len()).unwrap_or_default())
}

/// [`label_filler`] of a word as bytes.
fn is_filler(word: &[u8]) -> bool {
    // One `match`: compiled to a switch on the length and a comparison or two; this runs for
    // the word before every row of numbers.
    matches!(
        word,
        b"n" | b"s"
            | b"l"
            | b"i"
            | b"o"
            | b"e"
            | b"v"
            | b"d"
            | b"t"
            | b"h"
            | b"u"
            | b"z"
            | b"nr"
            | b"no"
            | b"nm"
            | b"is"
            | b"en"
            | b"de"
            | b"uw"
            | b"my"
            | b"mr"
            | b"hr"
            | b"mw"
            | b"ex"
            | b"num"
            | b"nmr"
            | b"van"
            | b"der"
            | b"den"
            | b"het"
            | b"the"
            | b"his"
            | b"her"
            | b"dhr"
            | b"mvr"
            | b"was"
            | b"mrs"
            | b"uur"
            | b"zus"
            | b"opa"
            | b"oma"
            | b"oud"
            | b"son"
            | b"mijn"
            | b"zijn"
            | b"haar"
            | b"kind"
            | b"zoon"
            | b"heer"
            | b"mevr"
            | b"mede"
            | b"oude"
            | b"your"
            | b"wife"
            | b"klant"
            | b"luidt"
            | b"vader"
            | b"nieuw"
            | b"child"
            | b"broer"
            | b"ouder"
            | b"voogd"
            | b"value"
            | b"nummer"
            | b"number"
            | b"client"
            | b"tenant"
            | b"moeder"
            | b"spouse"
            | b"meneer"
            | b"mother"
            | b"father"
            | b"zuster"
            | b"ouders"
            | b"mentor"
            | b"nieuwe"
            | b"vorige"
            | b"weduwe"
            | b"waarde"
            | b"huurder"
            | b"partner"
            | b"dochter"
            | b"bewoner"
            | b"mevrouw"
            | b"husband"
            | b"curator"
            | b"namelijk"
            | b"huurster"
            | b"huurders"
            | b"resident"
            | b"bewoners"
            | b"kinderen"
            | b"daughter"
            | b"aanvrager"
            | b"applicant"
            | b"stiefzoon"
            | b"pleegkind"
            | b"kleinkind"
            | b"weduwnaar"
            | b"inwonende"
            | b"echtgenoot"
            | b"echtgenote"
            | b"betrokkene"
            | b"aanvragers"
            | b"huisgenoot"
            | b"medehuurder"
            | b"gemachtigde"
            | b"medebewoner"
            | b"hoofdhuurder"
            | b"aanvraagster"
            | b"medehuurders"
            | b"stiefdochter"
            | b"onderhuurder"
            | b"bewindvoerder"
            | b"contactpersoon"
    )
}

/// Whether the letters `run` ending at `j` close a BSN label spelt in parts: `b.s.n.`,
/// `b s n`, `burger service(nummer)`, `burger-servicenummer`, `citizen('s) service (number)`,
/// `sociaal-fiscaal (nummer)`; the label's end.
fn label_in_parts(u: &[Unit], run: &[Unit], j: usize) -> Option<usize> {
    // The previous word before `start` with at most three separators between, and its start.
    let word_before_gap = |start: usize| -> Option<(usize, usize)> {
        let mut k = start;
        while start - k < 3 && k > 0 && u.get(k - 1).is_some_and(Unit::is_separator) {
            k -= 1;
        }
        let end = k;
        while k > 0 && u.get(k - 1).is_some_and(Unit::binds) {
            k -= 1;
        }
        (k < end && end < start).then_some((k, end))
    };
    let is = |range: (usize, usize), word: &[u8]| {
        u.get(range.0..range.1)
            .is_some_and(|w| w.iter().map(|x| x.0).eq(word.iter().copied()))
    };
    let start = j - run.len();
    let word = |w: &[u8]| run.iter().map(|x| x.0).eq(w.iter().copied());
    match run.len() {
        1 if word(b"n") => {
            let s = word_before_gap(start)?;
            let b = word_before_gap(s.0)?;
            (is(s, b"s") && is(b, b"b")).then_some(())
        }
        7 if word(b"service") => service_of_a_citizen(&word_before_gap, &is, start),
        7 | 9 | 13 if word(b"fiscaal") || word(b"fiscaalnr") || word(b"fiscaalnummer") => {
            let sociaal = word_before_gap(start)?;
            is(sociaal, b"sociaal").then_some(())
        }
        9..=14
            if [b"servicenr".as_slice(), b"servicenummer", b"servicenumber"]
                .iter()
                .any(|w| word(w)) =>
        {
            service_of_a_citizen(&word_before_gap, &is, start)
        }
        _ => None,
    }
    .map(|_| j)
}

/// Whether the word `service` (or `servicenummer`) starting at `start` follows `burger`,
/// `citizen`, `citizens` or `citizen's`.
fn service_of_a_citizen(
    word_before_gap: &impl Fn(usize) -> Option<(usize, usize)>,
    is: &impl Fn((usize, usize), &[u8]) -> bool,
    start: usize,
) -> Option<()> {
    let who = word_before_gap(start)?;
    if is(who, b"burger") || is(who, b"burgers") || is(who, b"citizen") || is(who, b"citizens") {
        return Some(());
    }
    // `citizen's service number`, `citizen’s`: the `s` after the apostrophe.
    let citizen = word_before_gap(who.0).filter(|_| is(who, b"s"))?;
    is(citizen, b"citizen").then_some(())
}

/// The end of the BSN label that the row of numbers starting at `i` stands after, with nothing
/// between but separators, digits and [`label_filler`] words, within [`LABEL_REACH`] units.
#[inline(never)]
fn label_before(u: &[Unit], i: usize) -> Option<usize> {
    let mut j = i;
    // Words, tags and references passed: a label stands behind a few, not behind a page of
    // them (`<b>9u</b>` repeated: each row would walk back over dozens).
    let mut steps = 0;
    while i - j < LABEL_REACH {
        let x = *u.get(j.checked_sub(1)?)?;
        if x.binds() || x == Unit(b'>') || x == Unit(b';') {
            steps += 1;
            if steps > MAX_LABEL_STEPS {
                return None;
            }
        }
        // The letters of a hex reference (`&#x20`, `&#x2d;`) are no word: it is passed over.
        if x.binds()
            && let Some(k) = reference_around(u, j - 1, true)
        {
            j = k;
            continue;
        }
        if x.binds() {
            let mut start = j - 1;
            while start > 0 && u.get(start - 1).is_some_and(Unit::binds) {
                start -= 1;
            }
            let run = u.get(start..j)?;
            if let Some(end) = label_in_parts(u, run, j) {
                return Some(end);
            }
            // An attribute inside a tag (`<input name="bsn" value="…">`): a tag that names a
            // BSN labels the number in it; another is passed over as a whole.
            if u.get(j) == Some(&Unit(b'='))
                && let Some(open) = tag_around(u, start)
            {
                if markup_end(u, open).is_some_and(|end| tag_names_a_bsn(u, open, end)) {
                    return Some(j);
                }
                j = open;
                continue;
            }
            if label_filler(run) {
                j = start;
                continue;
            }
            // Only a word with a `b` in it, or starting with `s`, or joined to the one before
            // (`bsn-nummer`), can say BSN: most rows have another word before them.
            let joined = start >= 2
                && u.get(start - 1) == Some(&Unit::JOINER)
                && u.get(start - 2).is_some_and(Unit::binds);
            if !joined
                && !matches!(run.first(), Some(Unit(b's' | b'c')))
                && !run.contains(&Unit(b'b'))
            {
                return None;
            }
            if word_before(u, j).marker == Some(Marker::Bsn) {
                return Some(j);
            }
            // A label glued to a letter written for the number's first digit
            // (`bsn-nummerl23456782`): the label ends before the letter.
            return (j == i
                && glued_digit_letter(u, j)
                && word_before(u, j - 1).marker == Some(Marker::Bsn))
            .then_some(j - 1);
        } else if x == Unit::BREAK {
            return None;
        } else if x == Unit(b'>') || x == Unit(b';') {
            // A markup tag or a character reference between (`<td>`, `&nbsp;`) separates.
            let open = if x == Unit(b'>') { b'<' } else { b'&' };
            let back = j.saturating_sub(MAX_TAG + 2);
            let from = (back..j - 1).rev().find(|&k| u.get(k) == Some(&Unit(open)));
            let end_at = |k: usize| {
                if open == b'<' {
                    markup_end(u, k)
                } else {
                    reference_end(u, k)
                }
            };
            match from.filter(|&k| end_at(k) == Some(j)) {
                // A tag named for the number, or with an attribute that names it
                // (`<bsn>`, `<td data-label="BSN">`), is its label; not one that ends an
                // element or is one (`</bsn>`, `<bsn/>`), nor a form field, whose label is
                // for its own value (`<input name="bsn" value="">`).
                Some(k) if open == b'<' && labels_what_follows(u, k, j) => return Some(j),
                Some(k) => j = k,
                None => j -= 1,
            }
        } else {
            j -= 1;
        }
    }
    None
}

/// Whether the markup tag `u[start..end]` holds a BSN label as a word: its name
/// (`<bsn>`, `<ns:burgerservicenummer>`) or an attribute's name or value (`<field name="bsn">`).
fn tag_names_a_bsn(u: &[Unit], start: usize, end: usize) -> bool {
    (start + 2..end).any(|k| {
        if !u.get(k - 1).is_some_and(Unit::binds) || u.get(k).is_some_and(Unit::binds) {
            return false;
        }
        let mut first = k - 1;
        while first > start && u.get(first - 1).is_some_and(Unit::binds) {
            first -= 1;
        }
        word_before(u, k).marker == Some(Marker::Bsn)
            || u.get(first..k)
                .is_some_and(|run| label_in_parts(u, run, k).is_some())
    })
}

/// The `<` of the markup tag that the unit at `i` stands inside, if any: a `<` within
/// [`MAX_TAG`] units before it with no `>` between, whose tag ends after `i`.
fn tag_around(u: &[Unit], i: usize) -> Option<usize> {
    let back = i.saturating_sub(MAX_TAG + 2);
    let open = (back..i)
        .rev()
        .take_while(|&k| u.get(k) != Some(&Unit(b'>')))
        .find(|&k| u.get(k) == Some(&Unit(b'<')))?;
    markup_end(u, open).filter(|&end| end > i).map(|_| open)
}

/// Whether the markup tag `u[start..end]` names a BSN for what follows it: it names one
/// ([`tag_names_a_bsn`]), opens an element (not `</bsn>`, `<bsn/>`) and is no form field.
fn labels_what_follows(u: &[Unit], start: usize, end: usize) -> bool {
    let closing = u.get(start + 1) == Some(&Unit::JOINER);
    let empty = end >= 2 && u.get(end - 2) == Some(&Unit::JOINER);
    let input: &[Unit] = &[Unit(b'i'), Unit(b'n'), Unit(b'p'), Unit(b'u'), Unit(b't')];
    let field =
        u.get(start + 1..start + 6) == Some(input) && !u.get(start + 6).is_some_and(Unit::binds);
    !closing && !empty && !field && tag_names_a_bsn(u, start, end)
}

/// Whether the markup tag `u[start..end]` is an inline one ([`INLINE_TAGS`]), which ends no
/// element a label stands for (`<td data-label="BSN"><b>1234</b> 5672</td>`).
fn is_inline_tag(u: &[Unit], start: usize, end: usize) -> bool {
    let from = start + 1 + usize::from(u.get(start + 1) == Some(&Unit::JOINER));
    let name: String = u
        .get(from..end)
        .unwrap_or_default()
        .iter()
        .take_while(|x| x.binds() || x.is_digit())
        .map(|x| char::from(x.0))
        .collect();
    INLINE_TAGS.contains(&name.as_str())
}

/// Where the value of the `value` attribute of the markup tag `u[start..end]` starts.
fn tag_value_start(u: &[Unit], start: usize, end: usize) -> Option<usize> {
    let value: &[Unit] = &[Unit(b'v'), Unit(b'a'), Unit(b'l'), Unit(b'u'), Unit(b'e')];
    (start + 6..end)
        .find(|&k| {
            u.get(k) == Some(&Unit(b'='))
                && u.get(k - 5..k) == Some(value)
                && !u.get(k - 6).is_some_and(Unit::binds)
        })
        .map(|k| k + 1 + usize::from(matches!(u.get(k + 1), Some(Unit(b'"' | b'\'')))))
}

/// Whether the markup tag `u[start..end]` gives what follows a label of its own: an attribute
/// `label`, `data-label` or `aria-label` whose value begins with a letter
/// (`<td data-label="Huurnummer">`), and no BSN label. (An `id`, `name` or `title` labels
/// nothing a person reads.)
fn tag_has_own_label(u: &[Unit], start: usize, end: usize) -> bool {
    let labels: [&[u8]; 1] = [b"label"];
    let own = (start + 1..end).any(|k| {
        if u.get(k) != Some(&Unit(b'=')) {
            return false;
        }
        let mut first = k;
        while first > start && u.get(first - 1).is_some_and(Unit::binds) {
            first -= 1;
        }
        let name: Vec<u8> = u
            .get(first..k)
            .unwrap_or_default()
            .iter()
            .map(|x| x.0)
            .collect();
        let value = if matches!(u.get(k + 1), Some(Unit(b'"' | b'\''))) {
            k + 2
        } else {
            k + 1
        };
        labels.contains(&name.as_slice()) && u.get(value).is_some_and(Unit::binds)
    });
    own && !tag_names_a_bsn(u, start, end)
}

/// The end of a date (`d-m-yyyy`, `yyyy-mm-dd`, with one and the same dash, slash or dot) or a
/// time (`9:30`, `12:30:45`, `9h30`, `09u30`, `9u`, `14h`, `9.30u`) whose first digit is at
/// `j`: what a labelled number is often written beside, and never part of it. The year is its
/// first four digits, also when more digits are glued to it. ISO 8601 joins a date to its time
/// (`2024-03-12T09:30:00`, `20240312T0930`, `T093000`), a fraction of a second to the time
/// (`.123Z`; one to six digits, followed by no digit) and a zone (`Z`, `+01:00`, `-0100`,
/// `+01`).
fn date_or_time_at(u: &[Unit], j: usize) -> Option<usize> {
    let digit_at = |k: usize| u.get(k).is_some_and(Unit::is_digit);
    let digits_from = |k: usize| (k..).take_while(|&p| digit_at(p)).count();
    let value = |k: usize, n: usize| {
        (k..k + n)
            .filter_map(|p| u.get(p).and_then(|x| x.digit()))
            .fold(0u32, |v, d| v * 10 + u32::from(d))
    };
    let ends_word = |k: usize| !u.get(k).is_some_and(|x| x.binds() || x.is_digit());
    let mut end = match date_or_time_alone(u, j) {
        Some(end) => end,
        None => {
            // A date written `yyyymmdd` before its time (`20240312T0930`).
            let d: Zeroizing<Vec<u8>> = Zeroizing::new(
                (j..j + 8)
                    .filter_map(|p| u.get(p).and_then(|x| x.digit()))
                    .collect(),
            );
            if digits_from(j) == 8 && is_date8(&d) && u.get(j + 8) == Some(&Unit(b't')) {
                j + 8
            } else {
                return None;
            }
        }
    };
    if u.get(end) == Some(&Unit(b't')) && digit_at(end + 1) {
        let t = end + 1;
        end = match date_or_time_alone(u, t) {
            Some(time) => time,
            // `T0930`, `T093000`, `T09Z`: the basic format.
            None => match digits_from(t) {
                n @ (2 | 4 | 6)
                    if value(t, 2) <= 24
                        && (n < 4 || value(t + 2, 2) <= 59)
                        && (n < 6 || value(t + 4, 2) <= 60) =>
                {
                    t + n
                }
                _ => end,
            },
        };
    }
    // A fraction of a second: up to three digits, or up to nine before a zone (`.123Z`,
    // `.1234567Z`, `.123456789+01:00`), so that no nine digits after a time are taken for one.
    let fraction = digits_from(end + 1);
    let zone_after = matches!(u.get(end + 1 + fraction), Some(Unit(b'z' | b'+' | b'-')));
    if matches!(u.get(end), Some(Unit(b'.' | b',')))
        && digit_at(end - 1)
        && ((1..=3).contains(&fraction) || (fraction <= 9 && zone_after))
        && end > j + 5
        && u.get(end - 3) == Some(&Unit(b':'))
    {
        end += 1 + fraction;
    }
    match u.get(end) {
        Some(Unit(b'z')) if ends_word(end + 1) => end += 1,
        Some(Unit(b'+' | b'-')) if digits_from(end + 1) >= 2 => {
            let colon = usize::from(u.get(end + 3) == Some(&Unit(b':')));
            if digits_from(end + 3 + colon) >= 2 {
                end += 5 + colon;
            } else if digits_from(end + 1) == 2 && colon == 0 {
                end += 3;
            }
        }
        _ => {}
    }
    Some(end)
}

/// [`date_or_time_at`] without what ISO 8601 joins to a date or time; also a time written
/// with `h` or `u` (`9h30`, `09u30`).
fn date_or_time_alone(u: &[Unit], j: usize) -> Option<usize> {
    // Up to `max` digits from `p` (at least `min`), their value and the unit after them.
    let run = |p: usize, min: usize, max: usize| -> Option<(u32, usize)> {
        let mut k = p;
        let mut value = 0u32;
        while k - p < max
            && let Some(d) = u.get(k).and_then(|x| x.digit())
        {
            value = value * 10 + u32::from(d);
            k += 1;
        }
        (k - p >= min).then_some((value, k))
    };
    let (a, after_a) = run(j, 1, 4)?;
    let sep = *u.get(after_a)?;
    // A clock's suffix (`u`, `h`, `m` after minutes) with no letter after it.
    let suffix = |k: usize, letters: &[u8]| match u.get(k) {
        Some(x) if letters.contains(&x.0) && !u.get(k + 1).is_some_and(Unit::binds) => k + 1,
        _ => k,
    };
    if matches!(sep, Unit(b'h' | b'u'))
        && after_a - j <= 2
        && a <= 24
        && !u
            .get(after_a + 1)
            .is_some_and(|x| x.binds() || x.is_digit())
    {
        // `9u`, `14h`.
        return Some(after_a + 1);
    }
    // `9.30` is a time only with its `u` or `h` (`9.30u`); else a decimal or a date.
    if sep == Unit::DOT
        && after_a - j <= 2
        && a <= 24
        && let Some((minutes, k)) = run(after_a + 1, 2, 2)
        && minutes <= 59
        && suffix(k, b"uh") > k
    {
        return Some(k + 1);
    }
    if matches!(sep, Unit(b':' | b'h' | b'u')) && after_a - j <= 2 {
        let (minutes, k) = run(after_a + 1, 2, 2)?;
        if a > 24 || minutes > 59 || u.get(k).is_some_and(Unit::is_digit) {
            return None;
        }
        return Some(match (u.get(k), run(k + 1, 2, 2)) {
            (Some(&Unit(b':')), Some((seconds, end))) if seconds <= 59 => end,
            _ => suffix(k, b"uhm"),
        });
    }
    if sep != Unit::JOINER && sep != Unit::DOT {
        return None;
    }
    let (b, after_b) = run(after_a + 1, 1, 2)?;
    if u.get(after_b) != Some(&sep) {
        return None;
    }
    if after_a - j == 4 {
        let (c, end) = run(after_b + 1, 2, 2)?;
        return is_date(c, b, a).then_some(end);
    }
    let (c, end) = run(after_b + 1, 4, 4)?;
    (after_a - j <= 2 && (is_date(a, b, c) || is_date(b, a, c))).then_some(end)
}

/// Whether the number after a BSN label ending at `from` holds a BSN, read as a person reads
/// a labelled number: every digit within [`LABEL_REACH`] units counts, whatever stands between
/// (separators of any length, `+`, a currency sign, a decimal mark, a date before it, `nr`),
/// `l` and `i` read as `1` and `o` as `0`, a numeric character reference as its digit; a
/// Latin word that is no [`label_filler`], or a break, ends it; a date or a time beside it is
/// passed over. Any nine digits in a row of those passing the eleven-test are a BSN (eight
/// with the leading zero left off are the rows' rule, `row_has_bsn`).
///
/// A numeric reference without its `;` is read both ways: as the one character markup takes
/// it for (`BSN &#x20 12345672`, `1234&#32 5672`), and as the text it is written as, whose
/// digits count (`BSN 12&#345672`, in a text file, shows `12345672`).
#[inline(never)]
fn labelled_bsn(u: &[Unit], from: usize, found: &mut impl FnMut(usize, usize) -> bool) -> bool {
    // The second reading differs only where a reference stands within reach.
    let reach = u.get(from..from.saturating_add(LABEL_REACH).min(u.len()));
    labelled_read_with(u, from, LABEL_REACH, false, found).0
        || (reach.is_some_and(|r| r.contains(&Unit(b'&')))
            && labelled_read_with(u, from, LABEL_REACH, true, found).0)
}

/// [`labelled_bsn`] within `reach` units of `from`, reading a numeric reference without its
/// `;` as the text it is written as; also where the reading stopped (the word, break or tag
/// that ended it, or the end of the reach).
fn labelled_read(
    u: &[Unit],
    from: usize,
    reach: usize,
    found: &mut impl FnMut(usize, usize) -> bool,
) -> (bool, usize) {
    labelled_read_with(u, from, reach, false, found)
}

/// Where the numeric character reference that unit `p` is part of begins, if it is part of
/// one: with its `;`, or also without it when `bare`.
fn reference_around(u: &[Unit], p: usize, bare: bool) -> Option<usize> {
    let back = p.saturating_sub(MAX_REFERENCE + 3);
    (back..p).rev().find(|&k| {
        u.get(k) == Some(&Unit(b'&'))
            && u.get(k + 1) == Some(&Unit(b'#'))
            && reference_end(u, k)
                .or_else(|| bare.then(|| bare_reference_end(u, k)).flatten())
                .is_some_and(|end| end > p)
    })
}

/// The end of a numeric character reference without its `;` at `i` (`&#32`, `&#x20`): up to
/// eight digits of its radix, and what follows them is no `;` (that one is
/// [`reference_end`]'s).
fn bare_reference_end(u: &[Unit], i: usize) -> Option<usize> {
    let (radix, body) = numeric_reference_body(u, i)?;
    let mut j = body;
    while j - body < 8 && u.get(j).is_some_and(|x| char::from(x.0).is_digit(radix)) {
        j += 1;
    }
    (j > body && u.get(j) != Some(&Unit(b';'))).then_some(j)
}

/// [`labelled_read`], with `bare_references` whether a numeric reference without its `;` is
/// read as the one character markup takes it for.
fn labelled_read_with(
    u: &[Unit],
    from: usize,
    reach: usize,
    bare_references: bool,
    found: &mut impl FnMut(usize, usize) -> bool,
) -> (bool, usize) {
    /// A digit read: its value, its units, and whether a letter (or a reference to one) was
    /// written for it.
    struct Read {
        value: u8,
        start: usize,
        end: usize,
        letter: bool,
    }
    let mut digits: Vec<Read> = Vec::with_capacity(LABEL_REACH);
    let end = from.saturating_add(reach).min(u.len());
    let label_is_a_tag = from > 0 && u.get(from - 1) == Some(&Unit(b'>'));
    let mut j = from;
    while j < end {
        let Some(&x) = u.get(j) else { break };
        if let Some(d) = x.digit() {
            // A date or a time beside the number is no part of it.
            match date_or_time_at(u, j)
                .filter(|_| j == 0 || !u.get(j - 1).is_some_and(Unit::is_digit))
            {
                Some(next) => j = next,
                None => {
                    digits.push(Read {
                        value: d,
                        start: j,
                        end: j + 1,
                        letter: false,
                    });
                    j += 1;
                }
            }
        } else if x.binds() {
            let mut k = j;
            while u.get(k).is_some_and(Unit::binds) {
                k += 1;
            }
            let word = u.get(j..k).unwrap_or_default();
            if !label_filler(word) {
                break;
            }
            // `en` joins parts of the number only: between digits (`123 en 456 en 782`), not
            // before other words (`BSN en mijn 06-nummer`).
            if word == [Unit(b'e'), Unit(b'n')] {
                let next = (k..end).find(|&p| !u.get(p).is_some_and(Unit::is_separator));
                if digits.is_empty() || !next.is_some_and(|p| u.get(p).is_some_and(Unit::is_digit))
                {
                    break;
                }
            }
            if let [letter] = word
                && let Some(value) = digit_written_as(*letter)
            {
                digits.push(Read {
                    value,
                    start: j,
                    end: k,
                    letter: true,
                });
            }
            j = k;
        } else if x == Unit::BREAK || x == Unit(b'?') || x == Unit(b'!') {
            // A question or an exclamation ends what the label says (`Vragen over uw BSN?
            // Contactpersoon: 06-…`).
            break;
        } else if x.0 == b'<' {
            match markup_end(u, j) {
                // After a label given by a tag, another form field has a label of its own.
                Some(next) if label_is_a_tag && tag_value_start(u, j, next).is_some() => break,
                // A tag with a label of its own (`<td data-label="Huurnummer">`) ends the reach,
                // and so does the end of the element whose tag was the label
                // (`<td data-label="BSN"></td><td>…`).
                Some(next) if tag_has_own_label(u, j, next) => break,
                Some(next)
                    if label_is_a_tag
                        && u.get(j + 1) == Some(&Unit::JOINER)
                        && !is_inline_tag(u, j, next) =>
                {
                    break;
                }
                // A form field's value is read (`BSN <input value="…">`).
                Some(next) => j = tag_value_start(u, j, next).unwrap_or(next),
                None => j += 1,
            }
        } else if x.0 == b'|'
            && u.get(j + 1).is_some_and(Unit::is_digit)
            && !(j > 0 && u.get(j - 1).is_some_and(Unit::is_digit))
        {
            // A bar glued to the digits it starts is a `1` (`BSN: |23456782`).
            digits.push(Read {
                value: 1,
                start: j,
                end: j + 1,
                letter: true,
            });
            j += 1;
        } else if x.0 == b'&' {
            match reference_digit(u, j) {
                Some((value, next, letter)) => {
                    digits.push(Read {
                        value,
                        start: j,
                        end: next,
                        letter,
                    });
                    j = next;
                }
                None => {
                    j = reference_end(u, j)
                        .or_else(|| bare_references.then(|| bare_reference_end(u, j)).flatten())
                        .or_else(|| unclosed_named_end(u, j))
                        .unwrap_or(j + 1);
                }
            }
        } else {
            j += 1;
        }
    }
    let values: Zeroizing<Vec<u8>> = Zeroizing::new(digits.iter().map(|d| d.value).collect());
    // At most one letter read as a digit: a finding holds `SHORTEST_FINDING` digits at least,
    // which is what lets binary data between breaks with fewer go unread (`may_hold_finding`).
    let letters = |at: &[Read]| at.iter().filter(|d| d.letter).count();
    for (w, at) in values.windows(9).zip(digits.windows(9)) {
        if let (Some(first), Some(last)) = (at.first(), at.last())
            && letters(at) <= 9 - SHORTEST_FINDING
            && eleven_test(w)
            && found(first.start, last.end)
        {
            return (true, j);
        }
    }
    // Eight digits, the leading zero left off, in any grouping (`BSN nr 1234 5672`), written
    // as digits, and not cut out of a longer run of digits.
    // (The digits of a reference read as one are not written digits.)
    let glued = |k: usize| {
        u.get(k).is_some_and(Unit::is_digit) && reference_around(u, k, bare_references).is_none()
    };
    for (w, at) in values.windows(8).zip(digits.windows(8)) {
        if let (Some(first), Some(last)) = (at.first(), at.last())
            && letters(at) == 0
            && !(first.start > 0 && glued(first.start - 1))
            && !glued(last.end)
            && eleven_test_with_zero(w)
            && found(first.start, last.end)
        {
            return (true, j);
        }
    }
    (false, j)
}

/// The digit a letter written in a number stands for: `l` and `i` for `1`, `o` for `0`.
fn digit_written_as(letter: Unit) -> Option<u8> {
    match letter {
        Unit(b'l' | b'i') => Some(1),
        Unit(b'o') => Some(0),
        _ => None,
    }
}

/// Units after a row that must be there before it is read: its next group, or what ends it,
/// is never further (four separators that are each a tag of [`MAX_TAG`] units, and the `B01`
/// of an old VAT number).
const RIGHT_CONTEXT: usize = 512;
/// Units before a row that must be there when it is read: the separators and the label that
/// `left_edge` and `word_before` look at.
const LEFT_CONTEXT: usize = 128;
// A row's BSN label stands within its left context, so a label is seen in every pass.
const _: () = assert!(LABEL_REACH <= LEFT_CONTEXT);
/// A row whose start lies this far back is long and is read in overlapping parts. Nine digits
/// in any grouping span fewer units (`RIGHT_CONTEXT` per joint at most), so a long row has more
/// than nine digits and is never a BSN as a whole.
const LONG_ROW: usize = 4096;

/// How far a pass got.
enum BsnScan {
    Found,
    /// The next pass starts reading rows at `resume`; `cut` when that is inside a long row.
    Pending {
        resume: usize,
        cut: bool,
    },
}

/// What of a row is in view.
#[derive(Clone, Copy)]
struct Sides {
    /// It is the rest of a long row read before: what stands before its first group is not a
    /// start, its first group is left out when it is the end of a group, and its first part
    /// (up to a numeral set apart or a date) is not taken as a whole.
    cut: bool,
    /// More of it may follow: its last group, and its last part as a whole, are left out.
    open: bool,
}

/// Calls `found(start, end)` with the unit range of every BSN in `u` until it returns true;
/// returns whether it did.
fn find_bsns(u: &[Unit], mut found: impl FnMut(usize, usize) -> bool) -> bool {
    matches!(scan_bsns(u, 0, false, true, &mut found), BsnScan::Found)
}

/// Reads the rows of numbers that start at or after `start` (the units before it are context),
/// calling `found` for each BSN. Unless this is the `last` pass, a row whose end is not in view
/// is left for the next pass (which resumes at it), or, when it is long, read as far as it goes
/// and resumed near its end.
fn scan_bsns(
    u: &[Unit],
    start: usize,
    mut cut: bool,
    last: bool,
    found: &mut impl FnMut(usize, usize) -> bool,
) -> BsnScan {
    let mut groups: Vec<Group> = Vec::new();
    // What starts at `p` may still change with the text to come: it is near the end of what
    // came, and no break follows it. Nothing the scanners read crosses a break, so what a
    // break follows is read now, however little text came after it (a number in a file's
    // metadata, then binary data that is mostly left out).
    let last_break = u.iter().rposition(|&x| x == Unit::BREAK);
    let open_at =
        |p: usize| !last && p + RIGHT_CONTEXT > u.len() && last_break.is_none_or(|b| b < p);
    let mut i = start;
    while i < u.len() {
        match u.get(i) {
            Some(Unit(b'0'..=b'9')) => {}
            // The digits of a character reference are not a number; but a number after a BSN
            // label may be written in references to its digits (`BSN: &#49;&#50;…`), which
            // `labelled_bsn` reads as a person reads them. A reference the end of what came
            // may have cut (`&`, `&#x3`) is read once it is whole.
            Some(Unit(b'&')) => {
                if open_at(i) {
                    return BsnScan::Pending { resume: i, cut };
                }
                if reference_digit(u, i).is_some() && labelled_at(u, i, found) {
                    return BsnScan::Found;
                }
                i = reference_end(u, i).unwrap_or(i + 1);
                continue;
            }
            _ => {
                i = number_start(u, i + 1);
                continue;
            }
        }
        let row_start = i;
        // The fraction of a second of a time (`09:30:00.123456782`, as Java writes nine digits)
        // is no number of its own; after a label it is read all the same (`labelled_bsn`).
        if is_fraction_of_a_second(u, i) && label_before(u, i).is_none() {
            while u.get(i).is_some_and(Unit::is_digit) {
                i += 1;
            }
            continue;
        }
        // A number near the end of what gathered is read once what follows it has come (as
        // far as a row reads on, which is further than a label's reach): a label's number
        // read before may still go on (`bsn 12345672` and then `2`).
        if open_at(row_start) {
            return BsnScan::Pending {
                resume: row_start,
                cut,
            };
        }
        if labelled_at(u, i, found) {
            return BsnScan::Found;
        }
        groups.clear();
        loop {
            let g = numeral(u, i);
            i = g.end;
            groups.push(g);
            match next_group(u, i) {
                Some(j) if !is_fraction_of_a_second(u, j) => i = j,
                _ => break,
            }
        }
        let open = open_at(i);
        if open && row_start + LONG_ROW >= u.len() {
            return BsnScan::Pending {
                resume: row_start,
                cut,
            };
        }
        if row_has_bsn(u, &groups, Sides { cut, open }, found) {
            return BsnScan::Found;
        }
        cut = false;
        if open {
            return BsnScan::Pending {
                resume: resume_long_row(u.len(), &groups),
                cut: true,
            };
        }
    }
    BsnScan::Pending {
        resume: u.len().max(start),
        cut: false,
    }
}

/// Whether a BSN label stands before the number that may begin at `i` (a digit, or a reference
/// to one), and the number after it is a BSN read as a person reads it (`labelled_bsn`). A
/// label has a `b`, `s` or `c` in it, or ends in a tag or an attribute's `=`: without one of
/// those within reach there is none to look for (a run of `T0930`s).
fn labelled_at(u: &[Unit], i: usize, found: &mut impl FnMut(usize, usize) -> bool) -> bool {
    let near = u.get(i.saturating_sub(LABEL_REACH)..i).unwrap_or_default();
    near.iter()
        .any(|x| matches!(x.0, b'b' | b's' | b'c' | b'>' | b'='))
        && label_before(u, i).is_some_and(|label_end| {
            labelled_bsn(u, label_end, found)
                // A label whose last letter may be the number's first digit (`BSNl23456782`:
                // `bsnl` says BSN too) is also read from that letter.
                || (label_end == i
                    && glued_digit_letter(u, i)
                    && labelled_bsn(u, i - 1, found))
        })
}

/// Whether the unit before `end` is a letter written for a digit (`l`, `I`, `o`) glued to the
/// letters of a word before it.
fn glued_digit_letter(u: &[Unit], end: usize) -> bool {
    end >= 2
        && u.get(end - 1).copied().and_then(digit_written_as).is_some()
        && u.get(end - 2).is_some_and(Unit::binds)
}

/// Whether the digits at `i` follow `hh:mm:ss.` or `hh:mm:ss,`: a fraction of a second.
fn is_fraction_of_a_second(u: &[Unit], i: usize) -> bool {
    let Some(start) = i.checked_sub(9) else {
        return false;
    };
    let at = |k: usize| u.get(start + k).copied();
    let digit = |k: usize| at(k).is_some_and(|x| x.is_digit());
    matches!(at(8), Some(Unit(b'.' | b',')))
        && digit(0)
        && digit(1)
        && at(2) == Some(Unit(b':'))
        && digit(3)
        && digit(4)
        && at(5) == Some(Unit(b':'))
        && digit(6)
        && digit(7)
}

/// The first unit at or after `from` that can start a number or a character reference (a
/// digit or `&`), or the end of `u`: a block at a time.
fn number_start(u: &[Unit], from: usize) -> usize {
    let starts = |x: Unit| x.is_digit() || x.0 == b'&';
    let rest = u.get(from..).unwrap_or_default();
    let blocks = rest.chunks_exact(BLOCK);
    let tail = blocks.remainder();
    for (b, block) in blocks.enumerate() {
        let found = mask(block, starts);
        if found != 0 {
            return from + b * BLOCK + found.trailing_zeros() as usize;
        }
    }
    let base = from + rest.len() - tail.len();
    tail.iter()
        .position(|&x| starts(x))
        .map_or(u.len(), |k| base + k)
}

/// Where a long row is read again when more of it arrives. Only its trailing groups of at
/// most nine digits in all can still be part of a BSN with what follows, together with what
/// sets them apart on the left: the group before them (a numeral set apart, or the last group
/// of a date). The row is read again from two groups before that one, or, when those groups
/// are long, from the last digit of that one.
fn resume_long_row(len: usize, groups: &[Group]) -> usize {
    let mut total = 0;
    let mut b = groups.len();
    while let Some(g) = b.checked_sub(1).and_then(|p| groups.get(p)) {
        b -= 1;
        total += g.len;
        if g.apart || total > 9 {
            let from = groups.get(b.saturating_sub(2)).map_or(g.start, |f| f.start);
            return if len - from <= LONG_ROW / 2 {
                from
            } else {
                g.end - 1
            };
        }
    }
    groups.first().map_or(len, |g| g.start)
}

/// The digits of the groups `w` when they are eight or nine.
fn window_digits(u: &[Unit], w: &[Group]) -> Option<([u8; 9], usize)> {
    let total: usize = w.iter().map(|g| g.len).sum();
    if !(8..=9).contains(&total) {
        return None;
    }
    let mut digits = [0u8; 9];
    let mut n = 0;
    for g in w {
        for x in u.get(g.start..g.end)? {
            if let Some(d) = x.digit() {
                *digits.get_mut(n)? = d;
                n += 1;
            }
        }
    }
    Some((digits, n))
}

/// Whether the row `groups` holds a BSN that `found` accepts.
fn row_has_bsn(
    u: &[Unit],
    groups: &[Group],
    sides: Sides,
    found: &mut impl FnMut(usize, usize) -> bool,
) -> bool {
    let (Some(first), Some(last)) = (groups.first(), groups.last()) else {
        return false;
    };
    // Every rule needs eight or nine digits in the row.
    if groups.iter().map(|g| g.len).sum::<usize>() < 8 {
        return false;
    }
    let n = groups.len();
    let mut lo = 0;
    let mut hi = n;
    let marker = if sides.cut {
        // The rest of a group read before is not a group of its own.
        let continued = first
            .start
            .checked_sub(1)
            .and_then(|p| u.get(p))
            .is_some_and(|x| {
                x.is_digit()
                    || (matches!(x, Unit(b',' | b':'))
                        && first.start >= 2
                        && u.get(first.start - 2).is_some_and(Unit::is_digit))
            });
        lo = usize::from(continued);
        None
    } else {
        match left_edge(u, first.start) {
            Edge::Drop => return false,
            Edge::Bound => {
                lo = 1;
                None
            }
            Edge::Free(m) => m,
        }
    };
    if sides.open {
        hi -= 1;
    } else {
        match right_edge(u, last.end, marker) {
            Edge::Drop => return false,
            Edge::Bound => hi -= 1,
            Edge::Free(_) => {}
        }
    }
    let Some(row) = groups.get(lo..hi).filter(|r| !r.is_empty()) else {
        return false;
    };
    let mut test = |w: &[Group], eight_ok: bool| {
        let Some((digits, count)) = window_digits(u, w) else {
            return false;
        };
        let digits = digits.get(..count).unwrap_or_default();
        let bsn = match count {
            9 => eleven_test(digits),
            8 if eight_ok => {
                eleven_test_with_zero(digits) && (marker.is_some() || !is_date8(digits))
            }
            _ => false,
        };
        let span = w
            .first()
            .zip(w.last())
            .map_or((0, 0), |(a, b)| (a.start, b.end));
        bsn && found(span.0, span.1)
    };
    // The row in parts between the numerals set apart.
    let mut part_start = 0;
    for end in 0..=row.len() {
        if end < row.len() && !row.get(end).is_some_and(|g| g.apart) {
            continue;
        }
        let part = row.get(part_start..end).unwrap_or_default();
        let first_part = part_start == 0;
        let last_part = end == row.len();
        part_start = end + 1;
        // Nine digits as one run, anywhere in the row.
        for g in part {
            if g.len == 9 && test(std::slice::from_ref(g), false) {
                return true;
            }
        }
        // The usual groupings 3-3-3 and 4-2-3, anywhere in the row, written as one number:
        // the same separators between the three groups (in a row of decimals such as
        // `194.149, 216.518` the groups are not one number).
        for w in part.windows(3) {
            let lens = [w.first(), w.get(1), w.get(2)].map(|g| g.map_or(0, |g| g.len));
            let one_number = match w {
                [a, b, c] => u.get(a.end..b.start) == u.get(b.end..c.start),
                _ => false,
            };
            if matches!(lens, [3, 3, 3] | [4, 2, 3]) && one_number && test(w, false) {
                return true;
            }
        }
        // Any grouping when it is a whole part, with dates in it set apart; not the ends of a
        // row that are out of view.
        let mut k = 0;
        let mut segment_start = 0;
        while k <= part.len() {
            let date = part.get(k..k + 3).is_some_and(|w| is_date_triple(u, w));
            if date || k == part.len() {
                let cut_off = (first_part && segment_start == 0 && sides.cut)
                    || (last_part && k == part.len() && sides.open);
                if let Some(seg) = part
                    .get(segment_start..k)
                    .filter(|s| !cut_off && !s.is_empty())
                {
                    let whole = seg.len() == row.len();
                    let eight_ok =
                        whole && ((n == 1 && lo == 0 && hi == n) || marker == Some(Marker::Bsn));
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
    let mut nine = [0u8; 9];
    if digits.len() != 8 {
        return false;
    }
    for (slot, d) in nine.iter_mut().skip(1).zip(digits) {
        *slot = *d;
    }
    eleven_test(&nine)
}

fn number(digits: &[u8]) -> u32 {
    digits.iter().fold(0u32, |n, &d| {
        n.saturating_mul(10).saturating_add(u32::from(d))
    })
}

/// The number the digits of group `g` write.
fn group_number(u: &[Unit], g: &Group) -> u32 {
    u.get(g.start..g.end)
        .unwrap_or_default()
        .iter()
        .fold(0u32, |n, x| {
            x.digit()
                .map_or(n, |d| n.saturating_mul(10).saturating_add(u32::from(d)))
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
            .filter(|&s| s == Unit::JOINER || s == Unit::DOT)
    };
    let (Some(s1), Some(s2)) = (one_separator(a, b), one_separator(b, c)) else {
        return false;
    };
    if s1 != s2 {
        return false;
    }
    let (x, y, z) = (group_number(u, a), group_number(u, b), group_number(u, c));
    match (a.len, b.len, c.len) {
        (1..=2, 1..=2, 4) => is_date(x, y, z) || is_date(y, x, z),
        (4, 2, 2) => is_date(z, y, x),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Machine-readable zones (ICAO 9303).

/// Most white-space characters in a row inside or between the lines of an MRZ (a line break,
/// an indentation, OCR's spaces).
pub const MAX_MRZ_SPACE: usize = 8;

/// Units of an unfinished run of MRZ characters carried to the next pass: the longest MRZ (a
/// TD1 card, 90 characters) with [`MAX_MRZ_SPACE`] spaces after each character fits.
const MRZ_CARRY: usize = 1024;

/// How far a pass got.
#[derive(Debug, Eq, PartialEq)]
enum MrzScan {
    Found,
    /// No MRZ; `Some` with the start of the run of MRZ characters still going on at the end.
    Open(Option<usize>),
}

/// The MRZ character a unit shows, upper case.
fn mrz_char(u: Unit) -> Option<u8> {
    match u {
        Unit(c @ (b'0'..=b'9' | b'<')) => Some(c),
        Unit(l @ b'a'..=b'z') => Some(l.to_ascii_uppercase()),
        _ => None,
    }
}

/// Whether a unit can be inside a run of MRZ characters: an MRZ character or a space. Any
/// other unit ends a run.
#[inline]
fn in_mrz_run(x: Unit) -> bool {
    x.0.wrapping_sub(b'0') < 10 || x.0.wrapping_sub(b'a') < 26 || x.0 == b'<' || x.0 == b' '
}

/// Units the block passes of the guard read at once, as the bits of one mask.
const BLOCK: usize = 32;

/// The units of `block` (at most [`BLOCK`]) for which `class` holds, as bits from the lowest.
/// Written without branches on the data, so that the compiler reads a block at once.
#[inline]
fn mask(block: &[Unit], class: impl Fn(Unit) -> bool) -> u32 {
    block
        .iter()
        .enumerate()
        .fold(0, |m, (k, &x)| m | u32::from(class(x)) << (k % BLOCK))
}

/// Looks for an MRZ in the runs of MRZ characters of `u`; `run` is a buffer to collect them in.
///
/// Most data (binary data read as text, and four of the five readings of any text) has no
/// stretch of units that could be inside a run as long as an MRZ line: a block pass finds
/// that, and only the last stretch, which the next pass may continue, is read unit by unit.
/// Otherwise [`scan_mrz_whole`] reads everything.
fn scan_mrz(u: &[Unit], run: &mut Zeroizing<Vec<u8>>) -> MrzScan {
    // The length of the stretch of run units that ends where the pass is, and where it began.
    let mut stretch = 0;
    let mut tail = 0;
    let blocks = u.chunks_exact(BLOCK);
    let rest = blocks.remainder();
    for (b, block) in blocks.enumerate() {
        let inside = mask(block, in_mrz_run);
        // A stretch of MRZ_LINE ends in this block or runs on through it, or one lies inside
        // it: read everything.
        if stretch + inside.trailing_ones() as usize >= MRZ_LINE
            || inside.count_ones() as usize >= MRZ_LINE
        {
            return scan_mrz_whole(u, run);
        }
        let after = inside.leading_ones() as usize;
        stretch = after;
        tail = (b + 1) * BLOCK - after;
    }
    let base = u.len() - rest.len();
    for (k, &x) in rest.iter().enumerate() {
        if in_mrz_run(x) {
            stretch += 1;
            if stretch >= MRZ_LINE {
                return scan_mrz_whole(u, run);
            }
        } else {
            stretch = 0;
            tail = base + k + 1;
        }
    }
    // No run as long as a line: what the whole pass would say, from the last stretch alone
    // (every unit that is not a run unit starts its count afresh).
    match scan_mrz_whole(u.get(tail..).unwrap_or_default(), run) {
        MrzScan::Open(start) => MrzScan::Open(start.map(|s| tail + s)),
        // A stretch shorter than a line holds none.
        MrzScan::Found => MrzScan::Found,
    }
}

/// [`scan_mrz`] reading every unit.
fn scan_mrz_whole(u: &[Unit], run: &mut Zeroizing<Vec<u8>>) -> MrzScan {
    // A quick pass without branches on the data: the longest run, and where the last began.
    let (mut count, mut spaces, mut longest, mut last_start) = (0usize, 0usize, 0usize, 0usize);
    for (i, &x) in u.iter().enumerate() {
        let (mrz, space) = match x.0 {
            b'0'..=b'9' | b'a'..=b'z' | b'<' => (1, 0),
            b' ' => (0, 1),
            _ => (0, 0),
        };
        spaces = (spaces + space) * space;
        let goes_on = mrz | (space & usize::from(spaces <= MAX_MRZ_SPACE));
        last_start = if goes_on == 0 { i + 1 } else { last_start };
        count = (count + mrz) * goes_on;
        longest = longest.max(count);
    }
    if longest < MRZ_LINE {
        return MrzScan::Open((count > 0).then_some(last_start));
    }
    let mut start = None;
    let mut count = 0;
    let mut spaces = 0;
    for (i, &x) in u.iter().enumerate() {
        if mrz_char(x).is_some() {
            start.get_or_insert(i);
            count += 1;
            spaces = 0;
        } else if x == Unit::SPACE && spaces < MAX_MRZ_SPACE {
            spaces += 1;
        } else {
            if let Some(s) = start.take()
                && count >= MRZ_LINE
                && mrz_units(u.get(s..i).unwrap_or_default(), run)
            {
                return MrzScan::Found;
            }
            count = 0;
            spaces = 0;
        }
    }
    match start {
        Some(s) if count >= MRZ_LINE && mrz_units(u.get(s..).unwrap_or_default(), run) => {
            MrzScan::Found
        }
        start => MrzScan::Open(start),
    }
}

/// Fewest characters of an MRZ line that `mrz_run` recognises.
const MRZ_LINE: usize = 28;

/// Whether a run of units (MRZ characters and spaces) holds an MRZ line.
fn mrz_units(units: &[Unit], run: &mut Zeroizing<Vec<u8>>) -> bool {
    run.clear();
    reserve_wiped(run, units.len());
    run.extend(units.iter().filter_map(|&x| mrz_char(x)));
    mrz_run(run.as_slice())
}

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
    run.len() >= MRZ_LINE
        && (0..=run.len() - MRZ_LINE).any(|p| {
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
// Binary data.

/// Units of text a view gathers before it reads them. With the carry of at most [`MAX_CARRY`]
/// units, a view holds at most about 20 Ki units (one byte each), and reads most units once.
pub const SCAN_AT: usize = 16 * 1024;

/// The most a view carries from one pass to the next: the start of an unfinished row with its
/// left context ([`LONG_ROW`] is more than the units a row can need), or the last
/// [`MRZ_CARRY`] units of an unfinished run of MRZ characters.
const MAX_CARRY: usize = LONG_ROW + LEFT_CONTEXT;

/// Most units one byte (UTF-8) or code unit (UTF-16) adds: a break for what it ends, and the
/// character it completes.
const PER_INPUT: usize = MAX_FOLD + 1;

/// How a view reads bytes as characters.
#[derive(Clone, Copy)]
enum Encoding {
    Utf8,
    Utf16 { big_endian: bool },
}

/// One reading of a stream of bytes as text: its decoder, and the units it has not finished
/// reading.
struct View {
    encoding: Encoding,
    /// Skip the first byte of the stream (UTF-16 from an odd byte).
    skip: bool,
    /// UTF-8: the first byte of the sequence being decoded, the code point so far, how many
    /// continuation bytes it still needs, and whether the next is its first.
    lead: u8,
    code: u32,
    need: u8,
    second: bool,
    /// UTF-16: the first byte of a code unit, and a high surrogate waiting for its pair.
    half: Option<u8>,
    high: Option<u16>,
    /// The folded text not yet read to the end, the first `resume` units of it as context.
    units: Zeroizing<Vec<Unit>>,
    resume: usize,
    cut: bool,
    /// How many units the last pass carried; the next pass reads when `scan_at` more arrived.
    carried: usize,
    scan_at: usize,
    mrz: Zeroizing<Vec<u8>>,
    folds: &'static Folds,
}

impl View {
    fn new(encoding: Encoding, skip: bool, scan_at: usize) -> Self {
        Self {
            encoding,
            skip,
            lead: 0,
            code: 0,
            need: 0,
            second: false,
            half: None,
            high: None,
            units: Zeroizing::new(Vec::with_capacity(scan_at + MAX_CARRY + MAX_FOLD)),
            resume: 0,
            cut: false,
            carried: 0,
            scan_at,
            mrz: Zeroizing::new(Vec::new()),
            folds: Folds::get(),
        }
    }

    fn write(&mut self, mut bytes: &[u8]) -> Result<(), Finding> {
        if self.skip {
            let Some((_, rest)) = bytes.split_first() else {
                return Ok(());
            };
            bytes = rest;
            self.skip = false;
        }
        match self.encoding {
            Encoding::Utf8 => self.write_utf8(bytes),
            Encoding::Utf16 { big_endian } => self.write_utf16(bytes, big_endian),
        }
    }

    /// [`View::write`], and then a pass over what the write brought, not only once `scan_at`
    /// units have gathered: a scanner's write is refused with the bytes that complete a
    /// finding, also when they are few, and an upload so while its client waits before its
    /// next chunk. (A number that more text could still change, one within [`RIGHT_CONTEXT`]
    /// units of the end of what gathered, waits for it.)
    ///
    /// A pass reads again what the last one carried (a row still open, a run of MRZ
    /// characters, their left context: up to [`MAX_CARRY`] units), so a write that brought
    /// fewer than an eighth of that waits for the next: in writes of a byte each, the reading
    /// stays linear in what was written.
    fn write_and_read(&mut self, bytes: &[u8]) -> Result<(), Finding> {
        self.write(bytes)?;
        let brought = self.units.len().saturating_sub(self.carried);
        if brought > 0 && brought.saturating_mul(8) >= self.carried {
            self.scan(false)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), Finding> {
        if self.need > 0 || self.high.is_some() {
            self.need = 0;
            self.high = None;
            self.room()?;
            self.units.push(Unit::BREAK);
        }
        self.code = 0;
        self.half = None;
        self.scan(true)
    }

    /// Decodes `bytes` in batches that cannot overflow the room left for units, reading what
    /// has gathered between batches. Sequences within a batch are decoded by [`decode_utf8`];
    /// one that runs past the batch goes through [`View::utf8_byte`] byte by byte.
    fn write_utf8(&mut self, mut bytes: &[u8]) -> Result<(), Finding> {
        // Where the last look ahead stopped, in `bytes`.
        let mut look_from: usize = 0;
        while !bytes.is_empty() {
            let mut limit = self.room()?.clamp(1, bytes.len());
            // A sequence begun in an earlier write is finished byte by byte.
            while self.need > 0 && limit > 0 {
                let Some((&b, rest)) = bytes.split_first() else {
                    break;
                };
                self.utf8_byte(b);
                (bytes, limit) = (rest, limit - 1);
                look_from = look_from.saturating_sub(1);
            }
            if self.need > 0 {
                // The room ran out inside the sequence: what follows is not between sequences,
                // where `decode_utf8` begins (and may look ahead).
                continue;
            }
            let done = decode_utf8(&mut self.units, self.folds, bytes, limit, &mut look_from);
            if done < limit {
                // A sequence runs past the end of the write: read byte by byte.
                for &b in bytes.get(done..).unwrap_or_default() {
                    self.utf8_byte(b);
                }
                break;
            }
            bytes = bytes.get(done..).unwrap_or_default();
            look_from = look_from.saturating_sub(done);
        }
        Ok(())
    }

    /// Decodes one byte, keeping the state of a sequence between calls.
    fn utf8_byte(&mut self, b: u8) {
        if self.need > 0 {
            // The second byte of some sequences is narrower: no overlong forms, no surrogates,
            // nothing above U+10FFFF.
            let range = match (self.lead, self.second) {
                (0xE0, true) => 0xA0..=0xBF,
                (0xED, true) => 0x80..=0x9F,
                (0xF0, true) => 0x90..=0xBF,
                (0xF4, true) => 0x80..=0x8F,
                _ => 0x80..=0xBF,
            };
            if range.contains(&b) {
                self.code = self.code << 6 | u32::from(b & 0x3F);
                self.need -= 1;
                self.second = false;
                if self.need == 0 {
                    let c = char::from_u32(self.code).unwrap_or(char::REPLACEMENT_CHARACTER);
                    self.code = 0;
                    let units = &mut self.units;
                    self.folds.fold(c, &mut |u| units.push(u));
                }
                return;
            }
            self.need = 0;
            self.code = 0;
            self.push_break();
        }
        match b {
            0x00..=0x7F => self.units.push(self.folds.ascii(b)),
            0xC2..=0xDF => self.begin_utf8(b, 1, 0x1F),
            0xE0..=0xEF => self.begin_utf8(b, 2, 0x0F),
            0xF0..=0xF4 => self.begin_utf8(b, 3, 0x07),
            _ => match windows_1252_separator(b) {
                Some(c) => {
                    let units = &mut self.units;
                    self.folds.fold(c, &mut |u| units.push(u));
                }
                None => self.push_break(),
            },
        }
    }

    /// A break; several in a row are one.
    fn push_break(&mut self) {
        push_break(&mut self.units);
    }

    fn begin_utf8(&mut self, lead: u8, need: u8, mask: u8) {
        self.lead = lead;
        self.need = need;
        self.second = true;
        self.code = u32::from(lead & mask);
    }

    fn write_utf16(&mut self, mut bytes: &[u8], big_endian: bool) -> Result<(), Finding> {
        let unit = |a: u8, b: u8| {
            if big_endian {
                u16::from_be_bytes([a, b])
            } else {
                u16::from_le_bytes([a, b])
            }
        };
        if let Some(a) = self.half {
            let Some((&b, rest)) = bytes.split_first() else {
                return Ok(());
            };
            self.half = None;
            self.room()?;
            self.code_unit(unit(a, b));
            bytes = rest;
        }
        // Where the last look ahead stopped, in `bytes`: none looks again before it.
        let mut look_from = 0;
        while bytes.len() >= 2 {
            let take = self.room()?.clamp(1, bytes.len() / 2) * 2;
            let (units, high, folds) = (&mut *self.units, &mut self.high, self.folds);
            let mut stretch = Stretch::after(units);
            // As in `decode_utf8`: where the stretch is empty after a break, what cannot hold
            // a finding is counted, not decoded ([`quiet_utf16`]). It adds no units, so it
            // looks past the batch, to the end of the write.
            let mut look = |k: usize, high: &Option<u16>, stretch: &Stretch, units: &[Unit]| {
                if k < look_from || high.is_some() || !stretch.is_empty(units) {
                    return k;
                }
                let (resume, looked) = quiet_utf16(bytes, k, big_endian, folds);
                look_from = looked;
                resume
            };
            let start = look(0, high, &stretch, units);
            // Where the batch ends: `take`, or past it where a look ahead went on.
            let mut done = start.max(take);
            let mut pairs = bytes
                .get(start.min(take)..take)
                .unwrap_or_default()
                .chunks_exact(2);
            while let Some(&[a, b]) = pairs.next() {
                let cu = unit(a, b);
                // Most code units are one character of one unit, with no surrogate waiting:
                // one load.
                match folds.direct(cu) {
                    u if u <= Unit::OTHER.0 && high.is_none() => units.push(Unit(u)),
                    Folds::NONE if high.is_none() => {}
                    _ => {
                        code_unit(units, high, folds, cu, &mut stretch);
                        let k = take - 2 * pairs.len();
                        let resume = look(k, high, &stretch, units);
                        if resume >= take {
                            done = resume;
                            break;
                        }
                        if resume != k {
                            pairs = bytes.get(resume..take).unwrap_or_default().chunks_exact(2);
                        }
                    }
                }
            }
            bytes = bytes.get(done..).unwrap_or_default();
            look_from = look_from.saturating_sub(done);
        }
        if let [a] = bytes {
            self.half = Some(*a);
        }
        Ok(())
    }

    fn code_unit(&mut self, cu: u16) {
        let mut stretch = Stretch::after(&self.units);
        code_unit(
            &mut self.units,
            &mut self.high,
            self.folds,
            cu,
            &mut stretch,
        );
    }

    /// How many more bytes or code units can be decoded before the units must be read: each
    /// adds at most a break and a folded character. Reads them first when there is no room.
    fn room(&mut self) -> Result<usize, Finding> {
        if self.units.len() + PER_INPUT > self.carried + self.scan_at {
            self.scan(false)?;
        }
        Ok((self.carried + self.scan_at).saturating_sub(self.units.len()) / PER_INPUT)
    }

    /// Reads the gathered units; unless this is the `last` pass, keeps what the next pass
    /// needs to see again: an unfinished row with its left context, an unfinished run of MRZ
    /// characters.
    fn scan(&mut self, last: bool) -> Result<(), Finding> {
        let u: &[Unit] = &self.units;
        let (resume, cut) = match scan_bsns(u, self.resume, self.cut, last, &mut |_, _| true) {
            BsnScan::Found => return Err(Finding::Bsn),
            BsnScan::Pending { resume, cut } => (resume, cut),
        };
        let open_mrz = match scan_mrz(u, &mut self.mrz) {
            MrzScan::Found => return Err(Finding::Mrz),
            MrzScan::Open(start) => start,
        };
        if last {
            return Ok(());
        }
        let len = u.len();
        let mut keep = resume.saturating_sub(LEFT_CONTEXT);
        if let Some(start) = open_mrz {
            keep = keep.min(start.max(len.saturating_sub(MRZ_CARRY)));
        }
        self.units.drain(..keep);
        self.resume = resume - keep;
        self.cut = cut;
        self.carried = self.units.len();
        Ok(())
    }
}

/// Fewest digits a BSN has: nine, or eight with the leading zero left off.
const SHORTEST_FINDING: usize = 8;

/// Whether a stretch of units between two breaks can hold anything the guard looks for: a BSN
/// has [`SHORTEST_FINDING`] digits at least, an MRZ line [`MRZ_LINE`] MRZ characters. Nothing
/// the scanners read crosses a break (it ends a number, a row, a label, a tag, a reference and
/// a run of MRZ characters, and separates nothing), so a stretch between two breaks with fewer
/// of both can be left out without changing any answer. Binary data is mostly such stretches:
/// read as UTF-8, of one to three units; read as UTF-16, of a few dozen characters of other
/// scripts between unpaired surrogates. The scanners then need not read them.
fn may_hold_finding(stretch: &[Unit]) -> bool {
    if stretch.len() < SHORTEST_FINDING {
        return false;
    }
    let digits = stretch.iter().filter(|u| u.is_digit()).count();
    let mrz = stretch.iter().filter(|&&u| mrz_char(u).is_some()).count();
    enough_marks(digits, mrz)
}

/// Whether `digits` digits and `mrz` MRZ characters (digits among them) are enough for a
/// finding: as many digits as the shortest BSN, or as many MRZ characters as an MRZ line.
#[inline(always)]
fn enough_marks(digits: usize, mrz: usize) -> bool {
    digits >= SHORTEST_FINDING || mrz >= MRZ_LINE
}

/// The stretch of units since the last break, while a decoder appends to them: where it
/// began, when it began at a break no pass has read past (one of this decoder's, or the break
/// the units ended in when it started). Only such a stretch is left out at the break that ends
/// it; one begun before (whose units a pass may have read in part) is kept.
struct Stretch {
    open: Option<usize>,
    /// Whether stretches that cannot hold a finding are left out (the decoders), or kept (the
    /// references the tests hold them to).
    leaves_out: bool,
}

impl Stretch {
    /// The stretch that goes on at the end of `units`: open to leaving out when they end in a
    /// break.
    fn after(units: &[Unit]) -> Self {
        Stretch {
            open: (units.last() == Some(&Unit::BREAK)).then_some(units.len()),
            leaves_out: true,
        }
    }

    /// Whether the stretch is open to leaving out and holds no unit yet: what follows can be
    /// left out without decoding it, as far as it is known that it cannot hold a finding.
    fn is_empty(&self, units: &[Unit]) -> bool {
        self.leaves_out && self.open == Some(units.len())
    }

    /// A break that ends the stretch: it is left out when it cannot hold a finding (the break
    /// that began it stands for both); several breaks in a row are one. The next begins after
    /// it.
    fn end(&mut self, units: &mut Vec<Unit>) {
        match self.open {
            Some(start)
                if self.leaves_out && !may_hold_finding(units.get(start..).unwrap_or_default()) =>
            {
                units.truncate(start);
            }
            _ => push_break(units),
        }
        self.open = Some(units.len());
    }
}

/// Decodes the UTF-8 of `bytes`, which begin between sequences (none of an earlier call is
/// unfinished), into `units` from their start to `limit` or a little past it
/// (the end of a sequence begun before it), or up to a sequence that runs past the end of
/// `bytes`. Returns where it stopped: at or past `limit`, or where that sequence begins. The
/// units of [`View::utf8_byte`] byte by byte, less the stretches between two breaks that
/// cannot hold a finding ([`may_hold_finding`]) and that a break of this call began.
///
/// After such a break, [`quiet_utf8`] looks ahead (to the end of `bytes`: it adds no units)
/// over what cannot hold a finding, and decoding goes on where something can. Binary data is
/// mostly such stretches, and most of its bytes are then counted, not decoded. `look_from` is
/// where the last look ahead stopped: none looks again before it.
fn decode_utf8(
    units: &mut Vec<Unit>,
    folds: &Folds,
    bytes: &[u8],
    limit: usize,
    look_from: &mut usize,
) -> usize {
    let mut stretch = Stretch::after(units);
    // Where to go on after a break at `i - 1` that left the stretch empty.
    let mut after_break = |i: usize, stretch: &Stretch, units: &[Unit]| {
        if i < *look_from || !stretch.is_empty(units) {
            return i;
        }
        let (resume, looked) = quiet_utf8(bytes, i, folds);
        *look_from = looked;
        resume
    };
    // A call begins between sequences: after a break, its stretch is empty.
    let mut i = after_break(0, &stretch, units);
    let now = bytes.get(..limit).unwrap_or(bytes);
    while let Some(&b) = now.get(i) {
        if b < 0x80 {
            units.push(folds.ascii(b));
            i += 1;
            continue;
        }
        let Some(need) = continuation_bytes(b) else {
            match windows_1252_separator(b) {
                Some(c) => {
                    folds.fold(c, &mut |u| units.push(u));
                    i += 1;
                }
                None => {
                    stretch.end(units);
                    i = after_break(i + 1, &stretch, units);
                }
            }
            continue;
        };
        let Some(sequence) = bytes.get(i..=i + need) else {
            return i;
        };
        match utf8_char(sequence) {
            Some(c) => {
                folds.fold(c, &mut |u| units.push(u));
                i += 1 + need;
            }
            None => {
                // Not UTF-8: the lead byte and the continuation bytes that fit it are a
                // break, and what follows is read anew.
                stretch.end(units);
                i = after_break(i + ill_formed_length(sequence), &stretch, units);
            }
        }
    }
    i
}

/// What [`quiet_utf8`] needs to know of a byte.
mod utf8_class {
    /// An ASCII digit: a digit and an MRZ character.
    pub const DIGIT: u8 = 1;
    /// An ASCII letter or `<`: an MRZ character.
    pub const MRZ: u8 = 2;
    /// May begin a sequence of two to four bytes.
    pub const LEAD: u8 = 4;
    /// A continuation byte. One bit above [`LEAD`]: `(c << 1) & next & CONT` asks whether a
    /// lead byte is followed by a continuation byte.
    pub const CONT: u8 = 8;
    const _: () = assert!(LEAD << 1 == CONT);
    /// Never part of UTF-8 (`C0`, `C1`, `F5` to `FF`): a break wherever it stands.
    pub const NEVER: u8 = 16;

    /// The classes of every byte.
    #[allow(
        clippy::indexing_slicing,
        reason = "a constant: `b` runs below 256, the length of `of`"
    )]
    pub static OF: [u8; 256] = {
        let mut of = [0; 256];
        let mut b = 0;
        while b < 256 {
            of[b] = match b {
                0x30..=0x39 => DIGIT,
                0x41..=0x5A | 0x61..=0x7A | 0x3C => MRZ,
                0x00..=0x7F => 0,
                0x80..=0xBF => CONT,
                0xC2..=0xF4 => LEAD,
                _ => NEVER,
            };
            b += 1;
        }
        of
    };
}

/// Looks ahead in `bytes` from `from`, where a stretch of [`decode_utf8`] begins, over the
/// regions between bytes that are a break whatever comes before them: bytes never part of
/// UTF-8. (A continuation byte that no lead byte begins is a break only when Windows-1252
/// shows it as no separator, [`windows_1252_separator`]; one after ASCII was once counted as a certain
/// break here, and with a few in four of them now separators, what is left does not pay for
/// its test.) A region whose
/// characters hold fewer digits than a BSN and fewer MRZ characters than an MRZ line cannot
/// hold a finding, and neither can any stretch in it. Returns where decoding goes on (the
/// certain break that ends the last of the regions from `from` that cannot, or `from`), and
/// how far it looked (to the digit or MRZ character that is one too many, or to the end of
/// `bytes`): no look ahead need read those bytes again.
///
/// It reads binary data about a byte per cycle or two: no branch on the data but for lead
/// bytes followed by a continuation byte (a few in a hundred of random bytes), whose
/// character's units are counted.
// Out of line: the decoders' loops around its calls stay as tight as without it.
#[inline(never)]
fn quiet_utf8(bytes: &[u8], from: usize, folds: &Folds) -> (usize, usize) {
    use utf8_class::{CONT, DIGIT, MRZ, NEVER, OF};
    let class = |b: u8| OF.get(usize::from(b)).copied().unwrap_or(NEVER);
    // Up to `end`, the longest sequence a lead byte begins ends within `bytes`; what lies after
    // it is left to the decoder.
    let end = bytes.len().saturating_sub(3);
    // The digits and MRZ characters of the region so far (at most that many, after a block).
    let (mut digits, mut mrz) = (0usize, 0usize);
    let mut resume = from;
    let mut k = from;
    while k < end {
        // A block whose bytes, with the region it continues, cannot hold a finding is passed
        // over whole: its regions cannot either.
        if k + QUIET_BLOCK <= end
            && let Some(block) = bytes
                .get(k..=k + QUIET_BLOCK)
                .and_then(|b| <&[u8; QUIET_BLOCK + 1]>::try_from(b).ok())
        {
            let bits = BlockBits::of(block);
            let (d, m) = bits.marks_from(block, 0, folds);
            if !enough_marks(digits + d, mrz + m) {
                match bits.last_break() {
                    Some(j) => {
                        resume = k + j;
                        (digits, mrz) = bits.marks_from(block, j + 1, folds);
                    }
                    None => (digits, mrz) = (digits + d, mrz + m),
                }
                k += QUIET_BLOCK;
                continue;
            }
        }
        // Otherwise byte by byte, for a block's length.
        let stop = (k + QUIET_BLOCK).min(end);
        let mut next = bytes.get(k).map_or(0, |&n| class(n));
        while k < stop {
            let (b, c) = (bytes.get(k).copied().unwrap_or(0), next);
            next = bytes.get(k + 1).map_or(0, |&n| class(n));
            let certain = c & NEVER != 0;
            if certain {
                resume = k;
            }
            // At a certain break a new region begins (the break adds nothing itself).
            let keep = usize::from(!certain).wrapping_neg();
            digits = (digits & keep) + usize::from(c & DIGIT);
            mrz = (mrz & keep) + usize::from(c & (DIGIT | MRZ) != 0);
            // A lead byte followed by a continuation byte may begin a character: its units
            // count.
            if (c << 1) & next & CONT != 0
                && let Some(need) = continuation_bytes(b)
                && let Some(ch) = bytes.get(k..=k + need).and_then(utf8_char)
            {
                let (d, m) = folds.marks(ch);
                digits += d;
                mrz += m;
            }
            if enough_marks(digits, mrz) {
                return (resume, k);
            }
            k += 1;
        }
    }
    (resume, bytes.len())
}

/// The most digits, and the most MRZ characters, a character outside the Basic Multilingual
/// Plane (four bytes of UTF-8) folds to: a digit of another script, and two letters (signs
/// such as `U+1F14E`, `PPV` in a square, read as no letters). A test holds it to every such
/// character (too many to fold at every start).
const MOST_OUTSIDE_PLANE: (usize, usize) = (1, 2);

/// Bytes the block pass of [`quiet_utf8`] reads at a time.
const QUIET_BLOCK: usize = 32;

/// What the block pass of [`quiet_utf8`] reads of the first [`QUIET_BLOCK`] bytes of a block
/// (the byte after them says whether the last is a lead byte followed by a continuation byte):
/// one bit per byte, the lowest for the first.
struct BlockBits {
    /// ASCII digits.
    digits: u32,
    /// ASCII digits, letters and `<`: MRZ characters.
    mrz: u32,
    /// Lead bytes followed by a continuation byte: where a character of two to four bytes may
    /// begin.
    leads: u32,
    /// Breaks whatever came before them: bytes never part of UTF-8.
    breaks: u32,
}

impl BlockBits {
    /// The bits of `block`: one pass over the bytes with no branch, which the compiler turns
    /// into vector instructions.
    #[inline(always)]
    fn of(block: &[u8; QUIET_BLOCK + 1]) -> Self {
        const _: () = assert!(QUIET_BLOCK == 32);
        // A byte of bits per byte of the block (a pass the compiler turns into vector
        // instructions), then each bit gathered from eight bytes at a time.
        let (digit, mrz, lead, never) = (0, 1, 2, 3);
        let mut class = [0u8; QUIET_BLOCK];
        for ((c, &b), &next) in class.iter_mut().zip(block).zip(block.iter().skip(1)) {
            let is_digit = b.wrapping_sub(b'0') < 10;
            let letter = (b | 0x20).wrapping_sub(b'a') < 26;
            // `C0`, `C1` and `F5` to `FF`: see `utf8_class::NEVER`.
            let not_utf8 = (b & 0xFE == 0xC0) | (b >= 0xF5);
            let is_lead = b.wrapping_sub(0xC2) < 0x33;
            let char_follows = next & 0xC0 == 0x80;
            *c = u8::from(is_digit) << digit
                | u8::from(is_digit | letter | (b == b'<')) << mrz
                | u8::from(is_lead & char_follows) << lead
                | u8::from(not_utf8) << never;
        }
        let gather = |bit: u32| {
            class
                .chunks_exact(8)
                .enumerate()
                .fold(0u32, |mask, (k, eight)| {
                    let word = eight
                        .try_into()
                        .map_or(0, u64::from_le_bytes)
                        .wrapping_shr(bit)
                        & 0x0101_0101_0101_0101;
                    // The low bit of byte i lands on bit 56 + i, and nothing carries into them.
                    let bits = word.wrapping_mul(0x0102_0408_1020_4080) >> 56;
                    mask | (bits as u32) << (8 * k)
                })
        };
        BlockBits {
            digits: gather(digit),
            mrz: gather(mrz),
            leads: gather(lead),
            breaks: gather(never),
        }
    }

    /// At least as many digits, and MRZ characters, as the characters that begin in the
    /// block from its `from`th byte fold to: ASCII counted, a lead byte followed by a
    /// continuation byte as [`Folds::lead_marks`] bounds its character.
    #[inline(always)]
    fn marks_from(
        &self,
        block: &[u8; QUIET_BLOCK + 1],
        from: usize,
        folds: &Folds,
    ) -> (usize, usize) {
        let keep = u32::try_from(from)
            .ok()
            .and_then(|from| u32::MAX.checked_shl(from))
            .unwrap_or(0);
        let mut digits = (self.digits & keep).count_ones() as usize;
        let mut mrz = (self.mrz & keep).count_ones() as usize;
        let mut leads = self.leads & keep;
        while leads != 0 {
            let j = leads.trailing_zeros() as usize;
            leads &= leads - 1;
            if let (Some(&lead), Some(&second)) = (block.get(j), block.get(j + 1)) {
                let (d, m) = folds.lead_marks(lead, second);
                digits += d;
                mrz += m;
            }
        }
        (digits, mrz)
    }

    /// Where the last break of the block is.
    #[inline(always)]
    fn last_break(&self) -> Option<usize> {
        (self.breaks != 0).then(|| 31 - self.breaks.leading_zeros() as usize)
    }
}

/// [`quiet_utf8`] for UTF-16 in the byte order `big_endian`: looks ahead in `bytes` from
/// `from` (a code unit after a break, no high surrogate waiting) over the regions between
/// breaks that do not depend on what came before `from`: a low surrogate that does not follow a
/// high one, and the end of a high surrogate that no low one follows. Returns where decoding
/// goes on (the surrogate of the break that ends the last region from `from` that cannot hold
/// a finding, or `from`) and how far it looked (to the digit or MRZ character that is one too
/// many, to a high surrogate whose pair is past the end of `bytes`, or to the end).
///
/// Blocks of [`QUIET_UNITS`] code units are read without a branch per unit
/// ([`Quiet16::block`]): most code units of binary data are characters that fold to neither a
/// digit nor an MRZ character, and the few that do are too many for a branch to guess. A block
/// with a surrogate pair, or in which a region may gather enough, is read unit by unit.
// Out of line: the decoders' loops around its calls stay as tight as without it.
#[inline(never)]
fn quiet_utf16(bytes: &[u8], from: usize, big_endian: bool, folds: &Folds) -> (usize, usize) {
    let mut q = Quiet16 {
        resume: from,
        digits: 0,
        mrz: 0,
        after_high: false,
    };
    let mut k = from;
    // A block and the code unit after it (whether a high surrogate at its end has a pair).
    while let Some(block) = bytes.get(k..k + 2 * QUIET_UNITS + 2) {
        if !q.block(block, k, big_endian, folds)
            && let Some(answer) = q.units(bytes, k, k + 2 * QUIET_UNITS, big_endian, folds)
        {
            return answer;
        }
        k += 2 * QUIET_UNITS;
    }
    q.units(bytes, k, bytes.len(), big_endian, folds)
        .unwrap_or((q.resume, bytes.len()))
}

/// Code units the block pass of [`quiet_utf16`] reads at a time.
const QUIET_UNITS: usize = 32;

/// What [`quiet_utf16`] knows at a code unit: where decoding would go on, the digits and MRZ
/// characters since the last break, and whether the code unit before is a high surrogate (a
/// low one after it is its pair).
struct Quiet16 {
    resume: usize,
    digits: usize,
    mrz: usize,
    after_high: bool,
}

impl Quiet16 {
    /// Reads the code units of `bytes` from `k` to before `end` one by one. Returns the answer
    /// of [`quiet_utf16`] when one of them gives it.
    fn units(
        &mut self,
        bytes: &[u8],
        mut k: usize,
        end: usize,
        big_endian: bool,
        folds: &Folds,
    ) -> Option<(usize, usize)> {
        let unit = |a: u8, b: u8| {
            if big_endian {
                u16::from_be_bytes([a, b])
            } else {
                u16::from_le_bytes([a, b])
            }
        };
        while let Some(&[a, b]) = bytes.get(k..k + 2).filter(|_| k < end) {
            let cu = unit(a, b);
            if folds.quiet(cu) == 0 {
                self.after_high = false;
                k += 2;
                continue;
            }
            match cu {
                0xD800..=0xDBFF => {
                    let Some(&[c, d]) = bytes.get(k + 2..k + 4) else {
                        return Some((self.resume, k));
                    };
                    let low = unit(c, d);
                    if (0xDC00..=0xDFFF).contains(&low) {
                        let code =
                            0x10000 + ((u32::from(cu) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                        let (d, m) = char::from_u32(code).map_or((0, 0), |c| folds.marks(c));
                        self.digits += d;
                        self.mrz += m;
                    } else {
                        // No pair: a break after this one. Decoding would go on from it.
                        (self.resume, self.digits, self.mrz) = (k, 0, 0);
                    }
                    self.after_high = true;
                }
                0xDC00..=0xDFFF if self.after_high => self.after_high = false,
                0xDC00..=0xDFFF => (self.resume, self.digits, self.mrz) = (k, 0, 0),
                _ => {
                    self.after_high = false;
                    let (d, m) = char::from_u32(u32::from(cu)).map_or((0, 0), |c| folds.marks(c));
                    self.digits += d;
                    self.mrz += m;
                }
            }
            if enough_marks(self.digits, self.mrz) {
                return Some((self.resume, k));
            }
            k += 2;
        }
        None
    }

    /// Reads the [`QUIET_UNITS`] code units at `k` in `block` (which holds one more) at once,
    /// when none of them can give the answer of [`quiet_utf16`]: no surrogate pair begins
    /// among them, no character folds to many marks, and no region gathers enough marks even
    /// if it held all of them. Returns whether it read them; if not, nothing changed.
    #[inline(always)]
    fn block(&mut self, block: &[u8], k: usize, big_endian: bool, folds: &Folds) -> bool {
        const _: () = assert!(QUIET_UNITS == 32);
        // One load per code unit, then eight at a time: the surrogate bits gathered, the
        // digits and MRZ characters summed (six at most each, 48 for eight: no byte carries).
        let mut quiet = [0u8; QUIET_UNITS + 1];
        for (pair, q) in block.chunks_exact(2).zip(&mut quiet) {
            let cu = match *pair {
                [a, b] if big_endian => u16::from_be_bytes([a, b]),
                [a, b] => u16::from_le_bytes([a, b]),
                _ => 0,
            };
            *q = folds.quiet(cu);
        }
        let (mut high, mut low) = (0u64, 0u64);
        let mut words = [0u64; QUIET_UNITS / 8];
        for (word, eight) in words.iter_mut().zip(quiet.chunks_exact(8)) {
            *word = eight.try_into().map_or(0, u64::from_le_bytes);
        }
        // The low bit of byte i lands on bit 56 + i, and nothing carries into them.
        let gather = |w: u64| (w & 0x0101_0101_0101_0101).wrapping_mul(0x0102_0408_1020_4080) >> 56;
        // The digits and the MRZ characters of eight units: their sums land in the top byte.
        let marks = |w: u64| {
            let sum =
                |w: u64| (w & 0x0707_0707_0707_0707).wrapping_mul(0x0101_0101_0101_0101) >> 56;
            (sum(w) as usize, sum(w >> 3) as usize)
        };
        let (mut digits, mut mrz) = (0usize, 0usize);
        for (j, &word) in words.iter().enumerate() {
            high |= gather(word >> 7) << (8 * j);
            low |= gather(word >> 6) << (8 * j);
            let (d, m) = marks(word);
            (digits, mrz) = (digits + d, mrz + m);
        }
        // The unit after the block counts only as the low surrogate a high one may pair with.
        let last = quiet.last().copied().unwrap_or(0);
        low |= u64::from(last >> 6 & 1) << QUIET_UNITS;
        let within = (1u64 << QUIET_UNITS) - 1;
        let (low_after, high_before) = (low >> 1, high << 1 | u64::from(self.after_high));
        // A pair begins, or a character folds to many marks (both bits).
        if high & (low_after | low) & within != 0
            || enough_marks(self.digits + digits, self.mrz + mrz)
        {
            return false;
        }
        // No pair: every high surrogate is a break, and every low one that does not end the
        // pair of the unit before the block.
        let breaks = (high | low & !high_before) & within;
        if breaks == 0 {
            self.digits += digits;
            self.mrz += mrz;
        } else {
            let at = 63 - breaks.leading_zeros() as usize;
            self.resume = k + 2 * at;
            // The marks of the units after it: the bytes of the words past it.
            (self.digits, self.mrz) = (0, 0);
            for (j, &word) in words.iter().enumerate() {
                let from = (at + 1).saturating_sub(8 * j).min(8) as u32;
                let (d, m) = marks(word & (!0u64).checked_shl(8 * from).unwrap_or(0));
                (self.digits, self.mrz) = (self.digits + d, self.mrz + m);
            }
        }
        self.after_high = high >> (QUIET_UNITS - 1) & 1 == 1;
        true
    }
}

/// The character a byte that is not part of UTF-8 where it stands is read as, when Windows-1252
/// shows it as one of the separators numbers are written with: a no-break space, an en or em
/// dash, a middle dot or a bullet, the right single quote (a thousands separator in
/// Switzerland), or a soft hyphen, which shows nothing. `None`: a break. Dutch office software
/// still writes CSV and text files in Windows-1252, where a number whose groups such bytes
/// separate shows as one number. Other bytes stay breaks: read as currency signs, per mille,
/// degrees or quotes, the bytes of binary data after a number would make it an amount or a
/// measure more often (measured: a BSN followed by random bytes was missed about five times
/// as often), and read as letters, every stretch of binary data would hold MRZ characters.
#[inline]
fn windows_1252_separator(b: u8) -> Option<char> {
    match b {
        0x92 => Some('\u{2019}'),
        0x95 => Some('\u{2022}'),
        0x96 => Some('\u{2013}'),
        0x97 => Some('\u{2014}'),
        0xA0 => Some('\u{A0}'),
        0xAD => Some('\u{AD}'),
        0xB7 => Some('\u{B7}'),
        _ => None,
    }
}

/// How many bytes of `sequence`, a lead byte and the bytes after it that are not UTF-8 with
/// it, one break stands for: the lead and the continuation bytes [`View::utf8_byte`] took
/// before the byte that showed it is not (what Unicode calls the maximal subpart). That byte
/// is read anew.
fn ill_formed_length(sequence: &[u8]) -> usize {
    let Some((&lead, rest)) = sequence.split_first() else {
        return 0;
    };
    let second = match lead {
        0xE0 => 0xA0..=0xBF,
        0xED => 0x80..=0x9F,
        0xF0 => 0x90..=0xBF,
        0xF4 => 0x80..=0x8F,
        _ => 0x80..=0xBF,
    };
    let taken = rest
        .iter()
        .enumerate()
        .take_while(|&(k, b)| {
            if k == 0 {
                second.contains(b)
            } else {
                b & 0xC0 == 0x80
            }
        })
        .count();
    1 + taken
}

/// How many continuation bytes the lead byte `b` announces, when it can begin a sequence.
#[inline(always)]
fn continuation_bytes(b: u8) -> Option<usize> {
    match b {
        0xC2..=0xDF => Some(1),
        0xE0..=0xEF => Some(2),
        0xF0..=0xF4 => Some(3),
        _ => None,
    }
}

/// A break; several in a row are one.
fn push_break(units: &mut Vec<Unit>) {
    if units.last() != Some(&Unit::BREAK) {
        units.push(Unit::BREAK);
    }
}

/// Decodes one UTF-16 code unit, `high` the surrogate waiting for its pair; a break ends
/// `stretch`.
fn code_unit(
    units: &mut Vec<Unit>,
    high: &mut Option<u16>,
    folds: &Folds,
    cu: u16,
    stretch: &mut Stretch,
) {
    match cu {
        0xD800..=0xDBFF => {
            if high.replace(cu).is_some() {
                stretch.end(units);
            }
        }
        0xDC00..=0xDFFF => match high.take() {
            Some(high) => {
                let code = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(cu) - 0xDC00);
                let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                folds.fold(c, &mut |u| units.push(u));
            }
            None => stretch.end(units),
        },
        _ => {
            if high.take().is_some() {
                stretch.end(units);
            }
            match char::from_u32(u32::from(cu)) {
                Some(c) => folds.fold(c, &mut |u| units.push(u)),
                None => stretch.end(units),
            }
        }
    }
}

/// The character of one UTF-8 sequence (a lead byte and as many continuation bytes as it
/// announces), or `None` when it is not one: what `std::str::from_utf8` accepts of one
/// sequence (no overlong forms, no surrogates, nothing above U+10FFFF), without its call.
#[inline]
fn utf8_char(sequence: &[u8]) -> Option<char> {
    let (&lead, rest) = sequence.split_first()?;
    let (mask, second) = match lead {
        0xC2..=0xDF => (0x1F, 0x80..=0xBF),
        0xE0 => (0x0F, 0xA0..=0xBF),
        0xED => (0x0F, 0x80..=0x9F),
        0xE1..=0xEF => (0x0F, 0x80..=0xBF),
        0xF0 => (0x07, 0x90..=0xBF),
        0xF4 => (0x07, 0x80..=0x8F),
        0xF1..=0xF3 => (0x07, 0x80..=0xBF),
        _ => return None,
    };
    let (&first, more) = rest.split_first()?;
    if !second.contains(&first) {
        return None;
    }
    let mut code = u32::from(lead & mask) << 6 | u32::from(first & 0x3F);
    for &b in more {
        if b & 0xC0 != 0x80 {
            return None;
        }
        code = code << 6 | u32::from(b & 0x3F);
    }
    char::from_u32(code)
}

// The decoder's state holds part of a character of the data: wiped with the buffers.
impl Drop for View {
    fn drop(&mut self) {
        self.lead.zeroize();
        self.code.zeroize();
        self.half.zeroize();
        self.high.zeroize();
    }
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
    "idbewijzen",
    "legitimatiebewijs",
    "legitimatiebewijzen",
    "rijbewijs",
    "rijbewijzen",
    "verblijfsvergunning",
    "verblijfsvergunningen",
    "verblijfsdocument",
    "verblijfsdocumenten",
    "verblijfspas",
    "verblijfspassen",
    "vreemdelingendocument",
    "vreemdelingendocumenten",
    "reisdocument",
    "reisdocumenten",
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
    "identitydocuments",
    "drivinglicence",
    "drivinglicense",
    "driverslicence",
    "driverslicense",
    "driverlicence",
    "driverlicense",
    "residencepermit",
    "residencepermits",
    "residencecard",
    "traveldocument",
    "copyid",
    "idcopy",
    // French
    "passeport",
    "passeports",
    "cartedidentite",
    "cartesdidentite",
    "cartenationaledidentite",
    "piecedidentite",
    "titredesejour",
    "cartedesejour",
    "permisdeconduire",
    // German
    "personalausweis",
    "personalausweise",
    "reisepass",
    "reisepasse",
    "ausweis",
    "ausweise",
    "ausweisdokument",
    "identitatskarte",
    "identitaetskarte",
    "fuhrerschein",
    "fuehrerschein",
    "aufenthaltstitel",
    "aufenthaltserlaubnis",
    "aufenthaltskarte",
];

/// Words glued to a document's name that still make it a copy of the document.
const COPY_WORDS: &[&str] = &["kopie", "scan", "copy", "copie"];

/// A compound word that ends in a document name this long or longer names that document
/// (`kinderpaspoort`, `noodpaspoort`, `kinderreisepass`); shorter names (`idkaart`, `ausweis`)
/// count only as whole words.
const COMPOUND_NAME: usize = 8;

/// Whether `name` names an identity document, as [`check_file_name`] describes.
fn names_identity_document(name: &str) -> bool {
    [None, Some('l'), Some('i')].into_iter().any(|one| {
        let folded = fold_name(name, one);
        let words: Vec<&str> = folded
            .split(|c: char| !c.is_alphabetic())
            .filter(|w| !w.is_empty())
            .collect();
        let longest = IDENTITY_DOCUMENT_NAMES
            .iter()
            .map(|n| n.len())
            .max()
            .unwrap_or(0)
            + COPY_WORDS.iter().map(|c| c.len()).max().unwrap_or(0);
        (0..words.len()).any(|i| {
            let mut joined = String::new();
            for (k, w) in words.iter().skip(i).enumerate() {
                joined.push_str(w);
                if k > 0 && joined.len() > longest {
                    return false;
                }
                if is_document(&joined, k == 0) {
                    return true;
                }
            }
            false
        })
    })
}

/// Whether `word` (or words joined, when not `single`) names a document, or a copy of one.
fn is_document(word: &str, single: bool) -> bool {
    let named = |w: &str| {
        IDENTITY_DOCUMENT_NAMES
            .iter()
            .any(|n| w == *n || (single && n.len() >= COMPOUND_NAME && w.ends_with(n)))
    };
    named(word)
        || COPY_WORDS.iter().any(|copy| {
            [word.strip_prefix(copy), word.strip_suffix(copy)]
                .into_iter()
                .flatten()
                .any(|rest| !rest.is_empty() && named(rest))
        })
}

/// `name` in lower-case Latin letters as far as it goes: decomposed without marks and
/// ignorable code points, look-alike letters of other scripts read as the Latin ones, and, when
/// `one` is given, the digits `0 1 3 5` read as `o`, `one`, `e`, `s`.
fn fold_name(name: &str, one: Option<char>) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        decompose_compatible(c, |d| {
            if is_ignorable(d) {
                return;
            }
            if let Some(latin) = look_alike(d) {
                out.push_str(latin);
                return;
            }
            match (d, one) {
                ('0', Some(_)) => out.push('o'),
                ('1', Some(l)) => out.push(l),
                ('3', Some(_)) => out.push('e'),
                ('5', Some(_)) => out.push('s'),
                _ => out.extend(d.to_lowercase()),
            }
        });
    }
    out
}

/// The Latin letters a letter of another script (or a Latin letter that NFKD leaves alone)
/// looks like or is written as: Cyrillic and Greek look-alikes, `ß`, ligatures.
fn look_alike(c: char) -> Option<&'static str> {
    Some(match c {
        'ß' | 'ẞ' => "ss",
        'æ' | 'Æ' => "ae",
        'œ' | 'Œ' => "oe",
        'ø' | 'Ø' => "o",
        'ł' | 'Ł' => "l",
        'đ' | 'Đ' => "d",
        'ı' | 'ɩ' => "i",
        // Small capitals.
        'ᴀ' => "a",
        'ʙ' => "b",
        'ᴄ' => "c",
        'ᴅ' => "d",
        'ᴇ' => "e",
        'ꜰ' => "f",
        'ɢ' => "g",
        'ʜ' => "h",
        'ɪ' => "i",
        'ᴊ' => "j",
        'ᴋ' => "k",
        'ʟ' => "l",
        'ᴍ' => "m",
        'ɴ' => "n",
        'ᴏ' => "o",
        'ᴘ' => "p",
        'ʀ' => "r",
        'ꜱ' => "s",
        'ᴛ' => "t",
        'ᴜ' => "u",
        'ᴠ' => "v",
        'ᴡ' => "w",
        'ʏ' => "y",
        'ᴢ' => "z",
        // A Hangul vowel that is a bar (read so only as shown: it is no Latin letter).
        'ㅣ' | '\u{1175}' => "l",
        'ȷ' => "j",
        'ɑ' => "a",
        'ɡ' => "g",
        // Cyrillic
        'а' | 'А' => "a",
        'в' | 'В' | 'ь' => "b",
        'е' | 'Е' => "e",
        'к' | 'К' => "k",
        'м' | 'М' => "m",
        'н' | 'Н' | 'һ' | 'Һ' => "h",
        'о' | 'О' => "o",
        'р' | 'Р' => "p",
        'с' | 'С' => "c",
        'т' | 'Т' => "t",
        'у' | 'У' | 'ү' | 'Ү' => "y",
        'х' | 'Х' => "x",
        'ѕ' | 'Ѕ' => "s",
        'і' | 'І' | 'ӏ' | 'Ӏ' => "i",
        'ј' | 'Ј' => "j",
        'ԁ' => "d",
        'ԛ' | 'Ԛ' => "q",
        'ԝ' | 'Ԝ' => "w",
        'п' => "n",
        // Greek
        'α' | 'Α' => "a",
        'β' | 'Β' => "b",
        'ε' | 'Ε' => "e",
        'ζ' | 'Ζ' => "z",
        'Η' => "h",
        'η' => "n",
        'ι' | 'Ι' => "i",
        'κ' | 'Κ' => "k",
        'Μ' => "m",
        'Ν' => "n",
        'ν' => "v",
        'ο' | 'Ο' => "o",
        'ρ' | 'Ρ' => "p",
        'τ' | 'Τ' => "t",
        'υ' => "u",
        'Υ' | 'γ' => "y",
        'χ' | 'Χ' => "x",
        'ω' => "w",
        // Armenian
        'օ' | 'Օ' => "o",
        'ս' | 'Ս' => "u",
        'հ' => "h",
        'ո' => "n",
        'ց' => "g",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ASCII characters are passed over without a look at their general category: none of
    /// them is a format character, and every other character is judged as before.
    #[test]
    fn invisible_characters_are_those_listed_or_of_category_cf() {
        let listed = |c: char| INVISIBLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c));
        for c in (0..=0x10_FFFF).filter_map(char::from_u32) {
            let judged = listed(c) || c.general_category() == GeneralCategory::Format;
            assert_eq!(is_invisible(c), judged, "U+{:04X}", u32::from(c));
        }
        assert!(is_invisible('\u{200B}') && is_invisible('\u{00AD}') && is_invisible('\u{E0041}'));
        assert!(!is_invisible('a') && !is_invisible('\t') && !is_invisible('\u{7F}'));
    }

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

    /// A buffer of plaintext that grows moves into a larger one (the old is wiped as it
    /// drops) and keeps its contents: a character that folds to more units than it has bytes
    /// (U+FDFA, 3 bytes, 18 units), a rendered tag longer than it was written.
    #[test]
    fn wiped_buffers_keep_their_contents_as_they_grow() {
        let one = units("\u{FDFA}");
        assert_eq!(one.len(), MAX_FOLD);
        let many = units(&"\u{FDFA}".repeat(40));
        assert_eq!(many.len(), 40 * MAX_FOLD);
        assert!(many.chunks(MAX_FOLD).all(|c| c == one.as_slice()));

        let mut text = Zeroizing::new(String::with_capacity(1));
        let mut plain = String::new();
        for i in 0..200 {
            let piece = format!("{i} ");
            push_str_wiped(&mut text, &piece);
            push_wiped_char(&mut text, 'é');
            plain.push_str(&piece);
            plain.push('é');
        }
        assert_eq!(*text, plain);

        let mut u: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
        for b in 0..=255u8 {
            reserve_wiped(&mut u, 1);
            assert!(u.capacity() > u.len());
            u.push(b);
        }
        assert!(u.iter().copied().eq(0..=255u8));

        // `<bsn></p>` renders longer than it is written.
        let rendered = render("<bsn>123</p>");
        assert!(rendered.len() > "<bsn>123</p>".len(), "{}", rendered.len());
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
                let folded = units(&c.to_string());
                assert_eq!(folded.as_slice(), [Unit(b'0' + v as u8)], "{name} {v}");
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

    // -----------------------------------------------------------------------------------------
    // Spellings that hide digits, each written around a BSN (refused) and around digits that
    // fail the eleven-test (the twin, accepted): the rule sees through the spelling without
    // taking every number for a BSN.

    /// The BSN and its twin: `123456789` fails the eleven-test.
    const BSN: &str = "111222333";
    const TWIN: &str = "123456789";

    fn each_digit(digits: &str, f: impl Fn(char) -> String) -> String {
        digits.chars().map(f).collect()
    }

    fn joined(digits: &str, sep: &str) -> String {
        let d: Vec<char> = digits.chars().collect();
        let g = |a: usize, b: usize| d[a..b].iter().collect::<String>();
        format!("{}{sep}{}{sep}{}", g(0, 3), g(3, 6), g(6, 9))
    }

    /// A way of writing nine digits.
    type Spelling = Box<dyn Fn(&str) -> String>;

    /// The spellings an attacker tries, by name.
    fn hiding_spellings() -> Vec<(&'static str, Spelling)> {
        vec![
            (
                "variation selector after each digit",
                Box::new(|d| each_digit(d, |c| format!("{c}\u{FE0F}"))),
            ),
            (
                "tag space between the digits",
                Box::new(|d| each_digit(d, |c| format!("{c}\u{E0020}"))),
            ),
            (
                "Hangul filler between the groups",
                Box::new(|d| joined(d, "\u{3164}")),
            ),
            (
                "halfwidth Hangul filler between the digits",
                Box::new(|d| each_digit(d, |c| format!("{c}\u{FFA0}"))),
            ),
            (
                "combining grapheme joiner between the digits",
                Box::new(|d| each_digit(d, |c| format!("{c}\u{034F}"))),
            ),
            (
                "a combining accent on each digit, spaced",
                Box::new(|d| each_digit(d, |c| format!("{c}\u{0301} "))),
            ),
            (
                "three combining marks on each digit",
                Box::new(|d| each_digit(d, |c| format!("{c}\u{0301}\u{0308}\u{0323}"))),
            ),
            (
                "keycap digits",
                Box::new(|d| each_digit(d, |c| format!("{c}\u{FE0F}\u{20E3}"))),
            ),
            (
                "forty invisible characters after each digit",
                Box::new(|d| {
                    each_digit(d, |c| {
                        format!("{c}{}", "\u{200B}\u{2060}\u{FE0F}\u{034F}".repeat(10))
                    })
                }),
            ),
            ("a run of dashes", Box::new(|d| joined(d, " -- "))),
            ("pipes", Box::new(|d| joined(d, "|"))),
            ("plus signs", Box::new(|d| joined(d, "+"))),
            ("an x between the groups", Box::new(|d| joined(d, "x"))),
            (
                "an X between the groups, spaced",
                Box::new(|d| joined(d, " X ")),
            ),
            (
                "multiplication signs",
                Box::new(|d| joined(d, " \u{00D7} ")),
            ),
            ("asterisks", Box::new(|d| joined(d, "***"))),
            ("bullets", Box::new(|d| joined(d, " \u{2022} "))),
            ("brackets", Box::new(|d| format!("({})", joined(d, ")(")))),
            ("full-width low lines", Box::new(|d| joined(d, "\u{FF3F}"))),
            (
                "euro signs between the groups",
                Box::new(|d| joined(d, "\u{20AC}")),
            ),
            ("control characters", Box::new(|d| joined(d, "\u{1}"))),
            ("NUL characters", Box::new(|d| joined(d, "\u{0}"))),
            ("thousands separators", Box::new(|d| joined(d, ","))),
            ("colons", Box::new(|d| joined(d, ":"))),
            (
                "HTML bold",
                Box::new(|d| {
                    let d: Vec<char> = d.chars().collect();
                    let g = |a: usize, b: usize| d[a..b].iter().collect::<String>();
                    format!("{}<b>{}</b>{}", g(0, 3), g(3, 6), g(6, 9))
                }),
            ),
            (
                "HTML spans with attributes",
                Box::new(|d| joined(d, "</span> <span class=\"nr\" style=\"color:red\">")),
            ),
            ("HTML line breaks", Box::new(|d| joined(d, "<br/>"))),
            ("HTML comments", Box::new(|d| joined(d, "<!---->"))),
            (
                "non-breaking space references",
                Box::new(|d| joined(d, "&nbsp;")),
            ),
            ("numeric references", Box::new(|d| joined(d, "&#160;"))),
            (
                "digits each in a tag",
                Box::new(|d| each_digit(d, |c| format!("<td>{c}</td>"))),
            ),
        ]
    }

    #[test]
    fn digits_hidden_by_invisible_and_odd_characters_are_found() {
        for (name, spell) in hiding_spellings() {
            for text in [spell(BSN), format!("zie {}, graag", spell(BSN))] {
                assert!(contains_bsn(&text), "{name}: not found in {text:?}");
                let err = check_text("fields[0].text", &text).unwrap_err();
                assert_eq!(err.field, "fields[0].text");
                assert!(!err.problem.contains(BSN));
            }
            for text in [spell(TWIN), format!("zie {}, graag", spell(TWIN))] {
                assert!(
                    check_text("f", &text).is_ok(),
                    "{name}: twin refused: {text:?}"
                );
            }
        }
    }

    /// `x` between groups of digits joins them as `×` does; ordinary uses of `x` with numbers
    /// have fewer than eight digits, or letters touching the digits, and pass.
    #[test]
    fn an_x_between_digit_groups_joins_them_and_ordinary_uses_pass() {
        for text in [
            "3 x 4",
            "3x4 m",
            "2x per week",
            "kast 60 x 60 x 30 cm",
            "tegel 30x30, 120 stuks",
            "bestelling 12x 1234",
            "0x1f2e3d",
            "box 2x3x4x5",
            "600 mm x 600 mm x 300 mm",
        ] {
            assert!(check_text("f", text).is_ok(), "refused: {text:?}");
        }
        // The documented cost: three three-digit dimensions read as one number, refused one
        // time in eleven (600600300 passes the eleven-test). With units after each number
        // they pass (above).
        assert!(eleven_test(&[6, 0, 0, 6, 0, 0, 3, 0, 0]));
        assert!(check_text("f", "kast 600x600x300").is_err());
        assert!(check_text("f", "kast 600x600x301").is_ok());
    }

    /// Numerals joined by `,` or `:`: thousands separators are read through, decimals, amounts
    /// and times are set apart.
    #[test]
    fn numerals_with_commas_and_colons() {
        for text in [
            "111,222,333",
            "bedrag 111,222,333",
            "111:222:333",
            "1,111,222,333 en 111.222.333",
        ] {
            assert!(check_text("f", text).is_err(), "accepted: {text:?}");
        }
        for text in [
            // Eight digits in groups are a BSN only after a BSN label, as with dots.
            "12,345,672",
            "12.345.672",
            "rgb(21,150,126)",
            "111,222,333.00",
            "$ 111,222,333",
            "123,456,789",
            "1,234,567.89",
            "1.234.567,89",
            "12:30:45 111:22",
            "kamer 111, 222 en 333",
            "3,5 4,5 6,5 7,5 8,5",
            "111222333,5",
        ] {
            assert!(check_text("f", text).is_ok(), "refused: {text:?}");
        }
    }

    /// The table of the Basic Multilingual Plane folds as `fold_slowly` does, and no character
    /// folds to more than `MAX_FOLD` units.
    #[test]
    fn every_character_folds_to_at_most_max_fold_units() {
        let mut longest = 0;
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            Folds::get().fold(c, &mut |u| fast.push(u));
            fold_slowly(c, &mut |u| slow.push(u));
            assert_eq!(fast, slow, "{:04X}", u32::from(c));
            longest = longest.max(fast.len());
        }
        assert_eq!(longest, MAX_FOLD);
    }

    #[test]
    fn ignorable_characters_are_dropped_and_controls_separate() {
        for c in [
            '\u{00AD}',
            '\u{034F}',
            '\u{061C}',
            '\u{115F}',
            '\u{180E}',
            '\u{200B}',
            '\u{200D}',
            '\u{202E}',
            '\u{2060}',
            '\u{2066}',
            '\u{3164}',
            '\u{FE00}',
            '\u{FE0F}',
            '\u{FEFF}',
            '\u{FFA0}',
            '\u{1D173}',
            '\u{E0001}',
            '\u{E0020}',
            '\u{E007F}',
            '\u{E0100}',
            '\u{0301}',
            '\u{20E3}',
        ] {
            assert!(units(&c.to_string()).is_empty(), "{:04X}", u32::from(c));
        }
        for c in [
            '\u{0}', '\u{1}', '\u{7F}', '\u{85}', '\u{9F}', '|', '+', '\u{2022}',
        ] {
            let u = units(&c.to_string());
            assert!(u.len() == 1 && u.iter().all(Unit::is_separator), "{c:?}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Binary data.

    fn le(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn be(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_be_bytes).collect()
    }

    /// Deterministic pseudo-random bytes (xorshift64*).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// The ways text sits in binary data: UTF-8, UTF-16 either way with or without a byte
    /// order mark, each after an even and an odd number of bytes of noise, ended by a NUL.
    fn embeddings(text: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let encodings: [(&str, Vec<u8>, Vec<u8>); 5] = [
            ("UTF-8", text.as_bytes().to_vec(), vec![0]),
            ("UTF-16LE", le(text), vec![0, 0]),
            ("UTF-16BE", be(text), vec![0, 0]),
            (
                "UTF-16LE with BOM",
                [vec![0xFF, 0xFE], le(text)].concat(),
                vec![0, 0],
            ),
            (
                "UTF-16BE with BOM",
                [vec![0xFE, 0xFF], be(text)].concat(),
                vec![0, 0],
            ),
        ];
        for (name, bytes, end) in encodings {
            for before in [0usize, 1, 4096, 4097] {
                let data = [
                    noise(7, before),
                    vec![0, 0],
                    bytes.clone(),
                    end.clone(),
                    noise(8, 3000),
                ]
                .concat();
                out.push((format!("{name} after {before} bytes"), data));
            }
        }
        out
    }

    /// Whether a scanner reading every `scan_at` units refuses `bytes` fed in `chunk`-sized
    /// pieces.
    fn scan_refuses(bytes: &[u8], scan_at: usize, chunk: usize) -> bool {
        scan_answer(bytes, scan_at, chunk, PARALLEL_FROM).is_err()
    }

    /// What a scanner reading every `scan_at` units, on two threads from writes of
    /// `parallel_from` bytes, says of `bytes` fed in `chunk`-sized pieces.
    fn scan_answer(
        bytes: &[u8],
        scan_at: usize,
        chunk: usize,
        parallel_from: usize,
    ) -> Result<(), InputError> {
        scan_answer_by(bytes, scan_at, chunk, parallel_from, false)
    }

    /// `scan_answer`, or with `beside` through `write_beside`, whose work beside counts the
    /// bytes it is given: each write's bytes exactly once, checked up to the write refused.
    fn scan_answer_by(
        bytes: &[u8],
        scan_at: usize,
        chunk: usize,
        parallel_from: usize,
        beside: bool,
    ) -> Result<(), InputError> {
        let mut s = Scanner::scanning_every(scan_at);
        s.parallel_from = parallel_from;
        let (mut counted, mut written) = (0, 0);
        let answer = bytes
            .chunks(chunk.max(1))
            .try_for_each(|c| {
                if !beside {
                    return s.write("data", c);
                }
                written += c.len();
                let (found, given) = s.write_beside("data", c, || c.len());
                counted += given;
                found
            })
            .and_then(|()| s.finish("data"));
        assert_eq!(counted, written, "the work beside each write ran once");
        answer
    }

    /// Read on two threads, data gets the answer it gets on one, BSN or MRZ alike, in every
    /// embedding and wherever the chunks are cut; so with the caller's work beside.
    #[test]
    fn two_threads_give_the_answer_of_one() {
        let mrz = format!("{TD3_NAME}\n{TD3_DATA}");
        for text in ["bsn 111222333 ", "bsn 123456789 ", mrz.as_str()] {
            let both = format!("{mrz} en bsn 111222333");
            for t in [text, both.as_str()] {
                for (how, data) in embeddings(t) {
                    // (A thread per write: no writes of a byte here.)
                    for chunk in [509, 4096] {
                        let one = scan_answer(&data, 512, chunk, usize::MAX);
                        let two = scan_answer(&data, 512, chunk, 1);
                        assert_eq!(
                            one.as_ref().err().map(|e| &e.problem),
                            two.as_ref().err().map(|e| &e.problem),
                            "{t:?} as {how} in {chunk}s"
                        );
                        // With the caller's work beside (one reading on its thread, four on
                        // the other), and on one thread.
                        for parallel_from in [1, usize::MAX] {
                            let beside = scan_answer_by(&data, 512, chunk, parallel_from, true);
                            assert_eq!(
                                one.as_ref().err().map(|e| &e.problem),
                                beside.as_ref().err().map(|e| &e.problem),
                                "{t:?} as {how} in {chunk}s beside, from {parallel_from}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn binary_data_holding_a_bsn_or_mrz_in_any_encoding_is_refused() {
        let mrz = format!("{TD3_NAME}\n{TD3_DATA}");
        for (text, twin) in [
            ("bsn 111222333 ", "bsn 123456789 "),
            ("BSN: 111 222 333\n", "BSN: 123 456 789\n"),
            (
                "\u{FF11}\u{FF11}\u{FF11}\u{FF12}\u{FF12}\u{FF12}\u{FF13}\u{FF13}\u{FF13} ",
                "\u{FF11}\u{FF12}\u{FF13}\u{FF14}\u{FF15}\u{FF16}\u{FF17}\u{FF18}\u{FF19} ",
            ),
            (
                mrz.as_str(),
                "P<NLD DE BRUIJN WILLEKE LISELOTTE SPECI20142NLD",
            ),
            (TD1.concat().as_str(), "I<NLDSPECI20212 DE BRUIJN"),
        ] {
            for (how, data) in embeddings(text) {
                let err = check_binary("fields[0].binary", &data)
                    .err()
                    .unwrap_or_else(|| panic!("{text:?} as {how} accepted"));
                assert_eq!(err.field, "fields[0].binary");
                assert!(!err.problem.contains("111"));
                for chunk in [1, 7, 4096] {
                    assert!(
                        scan_refuses(&data, 512, chunk),
                        "{text:?} as {how} in {chunk}s"
                    );
                }
            }
            for (how, data) in embeddings(twin) {
                assert!(
                    check_binary("f", &data).is_ok(),
                    "{twin:?} as {how} refused"
                );
                assert!(
                    !scan_refuses(&data, 512, 7),
                    "{twin:?} as {how} refused in chunks"
                );
            }
        }
    }

    /// Only a Latin letter makes the digits it touches a code: a letter of any other script
    /// beside a BSN, before or after it, in text or in each reading of binary data, leaves it
    /// a BSN. The twins, Latin letters (accented and full-width ones too), still make a code.
    #[test]
    fn a_letter_of_another_script_does_not_hide_a_bsn() {
        let others = [
            "\u{A0B8}",         // Yi
            "\u{4E00}",         // CJK
            "\u{AC00}",         // Hangul
            "\u{3042}",         // Hiragana
            "\u{0416}",         // Cyrillic
            "\u{03BB}",         // Greek
            "\u{0628}",         // Arabic
            "\u{05D0}",         // Hebrew
            "\u{0915}",         // Devanagari
            "\u{0E01}",         // Thai
            "\u{1200}",         // Ethiopic
            "\u{20E2}\u{A0B8}", // a combining mark, then a letter
            // Letters that look like punctuation: U+01C0, Lisu, katakana, Hangul, and the
            // modifier apostrophe.
            "\u{01C0}",
            "\u{A4F8}",
            "\u{30FC}",
            "\u{3161}",
            "\u{02BC}",
        ];
        for letter in others {
            for text in [
                format!("111222333{letter}"),
                format!("{letter}111222333"),
                format!("{letter}111222333{letter}"),
                format!("bsn 111222333{letter}"),
                format!("{letter}12345672"),
                // Between the groups, as a separator.
                format!("111{letter}222{letter}333"),
                format!("1112{letter}22{letter}333"),
                format!("bsn:111{letter}222{letter}333"),
                format!("bsn 1234{letter}5672"),
            ] {
                assert!(contains_bsn(&text), "not taken for a BSN: {text:?}");
                for (how, data) in embeddings(&text) {
                    assert!(
                        check_binary("f", &data).is_err(),
                        "{text:?} as {how} accepted"
                    );
                }
            }
        }
        // Signs that decompose to letters are no letters; look-alike letters spell a label.
        for sign in [
            "\u{2116}111222333",
            "111222333\u{2122}",
            "\u{24C2}111222333",
            "\u{2139}\u{FE0F}111222333",
            "\u{2160}111222333",
            "111222333\u{1D43}",
            "\u{1F130}111222333",
            "N\u{00BA}111222333",
            "B\u{0405}N111222333",
            "b\u{0455}n111222333",
            "s\u{043E}finummer111222333",
            "burgerservic\u{0435}nummer111222333",
        ] {
            assert!(contains_bsn(sign), "not taken for a BSN: {sign:?}");
            for (how, data) in embeddings(sign) {
                assert!(
                    check_binary("f", &data).is_err(),
                    "{sign:?} as {how} accepted"
                );
            }
        }
        for code in [
            "X111222333",
            "111222333x",
            // Letters that look like Latin ones are read as them: codes.
            "\u{0425}111222333",
            "111222333\u{00F8}",
            "\u{1D400}111222333",
            "\u{00C9}111222333",
            "111222333\u{00E9}",
            "\u{FF38}111222333",
            "111222333\u{FF58}",
            "\u{0416}X111222333",
        ] {
            assert!(!contains_bsn(code), "taken for a BSN: {code:?}");
            // (In UTF-16 the number is refused anyway: read as UTF-8, its digits are a row of
            // nine with NUL bytes between them.)
            for (how, data) in embeddings(code)
                .into_iter()
                .filter(|(how, _)| how.starts_with("UTF-8"))
            {
                assert!(
                    check_binary("f", &data).is_ok(),
                    "{code:?} as {how} refused"
                );
            }
        }
    }

    /// A letter that reads as a bar between groups (`I`, `l`, and every letter read as them)
    /// separates them; an old VAT number stays one whatever letter of another script touches
    /// it; after a BSN label a glued Latin letter is a suffix. Their twins stay codes.
    #[test]
    fn bars_vat_numbers_and_labelled_suffixes_do_not_hide_a_bsn() {
        for text in [
            "111\u{04C0}222\u{04C0}333",
            "111\u{0399}222\u{0399}333",
            "111\u{0456}222\u{0456}333",
            "111\u{0131}222\u{0131}333",
            "111\u{FF4C}222\u{FF4C}333",
            "111\u{1D408}222\u{1D408}333",
            "111l222l333",
            "111I222I333",
            "111 I 222 I 333",
            "1234l56l782",
            "bsn: 111 \u{04C0} 222 \u{04C0} 333",
            "NL111222333B01\u{0416}",
            "NL111222333B01\u{01C0}",
            "\u{4E00}NL111222333B01",
            "btw NL111222333B01\u{0436}",
            "BSN: 111222333X",
            "BSN 123456782a",
            "bsn: 1112.22.333X",
            "BSN 111 222 333x",
        ] {
            assert!(contains_bsn(text), "not taken for a BSN: {text:?}");
            for (how, data) in embeddings(text) {
                assert!(
                    check_binary("f", &data).is_err(),
                    "{text:?} as {how} accepted"
                );
            }
        }
        for code in ["X111222333", "111222333X", "111o222o333", "REL111222333x"] {
            assert!(!contains_bsn(code), "taken for a BSN: {code:?}");
        }
    }

    /// After a BSN label its number is read as a person reads it: separators of any length, a
    /// currency sign, `+`, a decimal mark, `nr` glued on, `l` for `1`, a date written before
    /// it, a character reference for a digit. Without the label the same spellings are a code,
    /// an amount or a phone number, and pass; a Latin word after the label ends its reach.
    #[test]
    fn a_labelled_number_is_read_whatever_stands_between_its_digits() {
        for (labelled, unlabelled) in [
            ("bsn nr123456782", "nr123456782"),
            ("bsn no123456782", "no123456782"),
            ("burgerservicenummer nr111222333", "nr111222333"),
            ("BSN \u{20AC} 123456782", "\u{20AC} 123456782"),
            ("bsn +123456782", "+123456782"),
            ("BSN: +31 123456782", "+31 123456782"),
            ("bsn 123456782,5", "123456782,5"),
            ("BSN 123456782,00", "123456782,00"),
            ("bsn 123.456.782,00", "123.456.782,00"),
            (
                "BSN 123\u{A0}\u{A0}\u{A0}\u{A0}\u{A0}456782",
                "123\u{A0}\u{A0}\u{A0}\u{A0}\u{A0}456782",
            ),
            ("bsn 123_____456_____782", "123_____456_____782"),
            ("BSN: l23456782", "l23456782"),
            ("BSN: I23456782", "I23456782"),
            ("BSN 12-03-2024123456782", "12-03-2024123456782"),
            ("bsn 123&#52;56782", "123&#52;56782"),
            (
                "sofinummer: 111 -- -- 222 -- -- 333",
                "111 -- -- 222 -- -- 333",
            ),
        ] {
            assert!(contains_bsn(labelled), "not taken for a BSN: {labelled:?}");
            assert!(!contains_bsn(unlabelled), "taken for a BSN: {unlabelled:?}");
            for (how, data) in embeddings(labelled) {
                assert!(
                    check_binary("f", &data).is_err(),
                    "{labelled:?} as {how} accepted"
                );
            }
        }
        for text in [
            "BSN onbekend, bel +31 6 12345678",
            "BSN-controle 12-03-2024 9:30 akkoord",
            "bsn gecontroleerd op 12-03-2024",
            "BSN zie nr123456782",
            "BSN onbekend; bedrag \u{20AC} 123456782",
        ] {
            assert!(!contains_bsn(text), "taken for a BSN: {text:?}");
        }
        // A character reference for a digit is read as it, label or not, in text.
        for text in [
            "123&#52;56782",
            "&#49;&#50;&#51;&#52;&#53;&#54;&#55;&#56;&#50;",
        ] {
            assert!(check_text("f", text).is_err(), "{text:?} accepted");
        }
        // Without its `;`, in hex, and for a digit of another form.
        for text in [
            "&#49&#50&#51&#52&#53&#54&#55&#56&#50",
            "&#x31&#x32&#x33&#x34&#x35&#x36&#x37&#x38&#x32",
            "123&#65300;56782",
            "123&#xFF14;56782",
            "123&#1636;56782",
        ] {
            assert!(check_text("f", text).is_err(), "{text:?} accepted");
        }
        assert!(check_text("f", "123&#53;56782").is_ok(), "not a BSN");
        assert!(check_text("f", "123&#65301;56782").is_ok(), "not a BSN");
    }

    /// The label spelt in parts or followed by who the number is of, markup or a character
    /// reference between the label and its number, and a field named for a BSN: the number is
    /// still read as a labelled one. Their twins without a BSN label pass.
    #[test]
    fn a_label_in_parts_or_markup_does_not_hide_its_number() {
        for text in [
            "B.S.N. l23456782",
            "b.s.n.: 12 34567 82 / 15",
            "b s n 12 34567 82 / 15",
            "BSN n\u{00B0} 12 34567 82 / 15",
            "BSN n\u{00BA} l23456782",
            "BSN nmr. 12 34567 82 / 15",
            "BSN's: l23456782",
            "burger service nummer: 12 34567 82 / 15",
            "Citizen Service Number: l23456782",
            "burgerservicenr. 12 34567 82 / 15",
            "BSN huurder: \u{20AC} 123456782",
            "BSN hoofdhuurder: +31 123456782",
            "<th>BSN</th><td>l23456782</td>",
            "<td>BSN</td><td>123.456.782,00</td>",
            "BSN:<br>123_____456_____782",
            "BSN&nbsp;l23456782",
            "BSN: <span>12 34567 82 / 15</span>",
            "BSN: 123 en 456 en 782",
            "bsn 1234 en 56782",
        ] {
            assert!(contains_bsn(text), "not taken for a BSN: {text:?}");
            for (how, data) in embeddings(text) {
                assert!(
                    check_binary("f", &data).is_err(),
                    "{text:?} as {how} accepted"
                );
            }
        }
        for text in [
            "12 34567 82 / 15",
            "<th>Nr</th><td>l23456782</td>",
            "BSN: niet bekend, tel 06-12345678",
            "b s x 12 34567 82 / 15",
            "lll222333",
            "123 en 456 en 782",
        ] {
            assert!(!contains_bsn(text), "taken for a BSN: {text:?}");
        }
        for name in [
            "bsn",
            "bsn_nummer",
            "burgerservicenummer",
            "sofinummer",
            "bsn-nr",
        ] {
            assert!(names_a_bsn(name), "{name}");
        }
        for name in ["email", "subsidie", "nummer", "besnoeiing_nr"] {
            assert!(!names_a_bsn(name), "{name}");
        }
    }

    /// Every way around the labelled reading an outside attack found, each with a twin that
    /// differs where it counts (no label, another word, a number failing the eleven-test) and
    /// is stored.
    #[test]
    fn a_labelled_number_is_read_in_every_spelling_of_its_label_and_its_digits() {
        let pairs = [
            // Eight digits after any label, filler or markup.
            ("BSN n\u{00B0} 1234 5672", "BSN n\u{00B0} 1234 5679"),
            ("BSN nmr 1234 5672", "BSN nmr 1234 5679"),
            ("BSN's 1234 5672", "BSN's 1234 5679"),
            ("BSN huurder: 1234 5672", "Nr huurder: 1234 5672"),
            ("B.S.N. 1234 5672", "B.S.X. 1234 5672"),
            (
                "burger service nummer 1234 5672",
                "klant service nummer 1234 5672",
            ),
            ("<th>BSN</th><td>1234 5672", "<th>Nr</th><td>1234 5672"),
            ("BSN&nbsp; 1234 5672", "BSN&nbsp; 1234 5679"),
            ("BSN: 1234 en 5672", "BSN: 1234 en 5679"),
            ("BSN 12-03-2024 1234 5672", "BSN 12-03-2024 1234 5679"),
            ("BSN 09:30:15 1234 5672", "BSN 09:30:15 1234 5679"),
            ("BSN nr 12.345.672", "BSN nr 12.345.679"),
            ("BSN nr 1234-5672", "BSN nr 123456789"),
            // The label in parts.
            (
                "burger servicenummer l23456782",
                "burger servicenummer l23456789",
            ),
            (
                "burger service no 123456782,00",
                "burger service no 123456789,00",
            ),
            ("citizen service # l23456782", "citizen survey # l23456782"),
            (
                "citizenservicenumber l23456782",
                "citizenservicenumber l23456789",
            ),
            (
                "citizen\u{2019}s service number l23456782",
                "citizen\u{2019}s survey l23456782",
            ),
            (
                "citizens service number l23456782",
                "citizens survey l23456782",
            ),
            (
                "burger-\nservicenummer: l23456782",
                "burger-\nservicenummer: l23456789",
            ),
            (
                "burgerser-\nvicenummer: l23456782",
                "burgerser-\nvicenummer: l23456789",
            ),
            (
                "sociaal-fiscaal nummer l23456782",
                "sociaal-medisch nummer l23456782",
            ),
            // Markup and references inside the label or the number.
            ("B<b>SN</b> l23456782", "B<b>SX</b> l23456782"),
            ("BS<!-- x -->N l23456782", "BS<!-- x -->X l23456782"),
            (
                "burger<br>service<br>nummer l23456782",
                "burger<br>survey l23456782",
            ),
            ("B&#83;N l23456782", "B&#84;N l23456782"),
            ("&#66&#83&#78 l23456782", "&#66&#83&#79 l23456782"),
            ("B&shy;SN l23456782", "B&shy;SX l23456782"),
            (
                "&Bopf;&Sopf;&Nopf; l23456782",
                "&Bopf;&Sopf;&Xopf; l23456782",
            ),
            ("BSN&nbsp&nbsp;l23456782", "BSN&nbsp&nbsp;l23456789"),
            ("<bsn>l23456782</bsn>", "<nr>l23456782</nr>"),
            (
                "<field name=\"bsn\">l23456782</field>",
                "<field name=\"nr\">l23456782</field>",
            ),
            (
                "<td data-label=\"BSN\">l23456782</td>",
                "<td data-label=\"Nr\">l23456782</td>",
            ),
            ("BSN: &#108;23456782", "BSN: &#108;23456789"),
            ("BSN: 1&#79;0000630", "BSN: 1&#79;0000631"),
            ("12&sup3;456782", "12&sup3;456789"),
            ("BSN: &amp;#49;23456782", "BSN: &amp;#49;23456789"),
            // Signs and letters of other scripts that show as the label's letters or as
            // `l`, `I` and `o`.
            ("BSN: \u{2113}23456782", "BSN: \u{2113}23456789"),
            ("BSN: \u{217C}23456782", "BSN: \u{217C}23456789"),
            ("BSN: \u{2160}23456782", "BSN: \u{2160}23456789"),
            ("BSN: 1\u{00BA}0000630", "BSN: 1\u{00BA}0000631"),
            ("BSN: 1\u{1D0F}0000630", "BSN: 1\u{1D0F}0000631"),
            ("BSN: 1\u{3007}0000630", "BSN: 1\u{3007}0000631"),
            ("BSN: \u{A4F2}23456782", "BSN: \u{A4F2}23456789"),
            (
                "\u{1D2E}\u{02E2}\u{1D3A} l23456782",
                "\u{1D2E}\u{02E2}\u{1D3C} l23456782",
            ),
            (
                "\u{24B7}\u{24E2}\u{24DD} l23456782",
                "\u{24B7}\u{24E2}\u{24DE} l23456782",
            ),
            (
                "\u{1D539}\u{1D54A}\u{2115} l23456782",
                "\u{1D539}\u{1D54A}\u{2115} l23456789",
            ),
            (
                "\u{A4D0}\u{A4E2}\u{A4E0}: l23456782",
                "\u{A4D0}\u{A4E2}\u{A4E0}: l23456789",
            ),
            ("\u{13F4}\u{13DA}N l23456782", "\u{13F4}\u{13DA}N l23456789"),
            // Whose number it is.
            (
                "BSN van de huurder l23456782",
                "BSN onbekend, huurder l23456782",
            ),
            ("BSN v/d huurder l23456782", "BSN v/d huurder l23456789"),
            ("BSN mede-huurder l23456782", "BSN mede-huurder l23456789"),
            ("BSN echtgenote l23456782", "BSN echtgenote l23456789"),
            ("BSN cli\u{00EB}nt l23456782", "BSN cli\u{00EB}nt l23456789"),
            ("BSN the tenant l23456782", "BSN the tenant l23456789"),
            ("BSN bewindvoerder l23456782", "BSN bewindvoerder l23456789"),
            ("BSN mevrouw l23456782", "BSN mevrouw l23456789"),
            ("BSN luidt l23456782", "BSN ontbreekt l23456782"),
            // A date or time beside it, as ISO 8601 and Dutch clocks write them.
            (
                "BSN 2024-03-12T09:30:00123456782",
                "BSN 2024-03-12T09:30:00123456789",
            ),
            (
                "BSN 2024-03-12T09:30:00Z l23456782",
                "BSN 2024-03-12T09:30:00Z l23456789",
            ),
            (
                "BSN 2024-03-12T09:30:00+01:00 l23456782",
                "BSN 2024-03-12T09:30:00+01:00 l23456789",
            ),
            (
                "BSN 12-03-2024T09:30 l23456782",
                "BSN 12-03-2024T09:30 l23456789",
            ),
            ("BSN 09u30 l23456782", "BSN 09u30 l23456789"),
            ("BSN 9h30 l23456782", "BSN 9h30 l23456789"),
        ];
        for (refused, twin) in pairs {
            assert!(check_text("f", refused).is_err(), "accepted: {refused:?}");
            assert!(check_text("f", twin).is_ok(), "refused: {twin:?}");
            assert!(
                check_binary("f", refused.as_bytes()).is_err(),
                "accepted as UTF-8 data: {refused:?}"
            );
            assert!(
                check_binary("f", twin.as_bytes()).is_ok(),
                "refused as UTF-8 data: {twin:?}"
            );
        }
        for name in [
            "burger.service.nummer",
            "citizen_service_number",
            "citizenservicenumber",
            "b.s.n.",
            "b.s.n",
        ] {
            assert!(names_a_bsn(name), "{name}");
        }
        for name in ["service_nummer", "b_s_x", "klant.nummer"] {
            assert!(!names_a_bsn(name), "{name}");
        }
    }

    /// What a second outside attack found: labels given by tags and form fields, look-alikes
    /// after them, clocks as ISO 8601 and Dutch write them, markup only a browser reads, the
    /// value of something named for a BSN whatever it says first; each with a twin that is
    /// stored. And ordinary text it had refused: names starting with `Sofi`, words with `bsn`
    /// inside, `en` before other words, a responsive table's cells.
    #[test]
    fn labels_in_tags_and_clocks_are_read_and_ordinary_text_is_stored() {
        let pairs = [
            ("<bsn>\u{217C}23456782</bsn>", "<bsn>\u{217C}23456789</bsn>"),
            (
                "<td data-label=\"BSN\">\u{2113}23456782</td>",
                "<td data-label=\"Nr\">\u{2113}23456782</td>",
            ),
            ("<bsn>1\u{3007}0000630</bsn>", "<bsn>1\u{3007}0000631</bsn>"),
            ("<b.s.n.>1234 5672</b.s.n.>", "<b.s.x.>1234 5672</b.s.x.>"),
            (
                "<td data-label=\"B.S.N.\">1234 5672</td>",
                "<td data-label=\"B.S.X.\">1234 5672</td>",
            ),
            (
                "<td data-label=\"burger service nummer\">l23456782</td>",
                "<td data-label=\"klant service nummer\">l23456782</td>",
            ),
            (
                "<span lang=\"nl\" data-label=\"B.S.N.\">l23456782",
                "<span lang=\"nl\" data-label=\"B.S.N.\">l23456789",
            ),
            (
                "<input name=\"bsn\" value=\"1234 5672\">",
                "<input name=\"iban\" value=\"1234 5672\">",
            ),
            (
                "<input value=\"l23456782\" name=\"bsn\">",
                "<input value=\"l23456782\" name=\"iban\">",
            ),
            (
                "<label for=\"bsn\">BSN</label><input id=\"bsn\" value=\"1234 5672\">",
                "<label for=\"iban\">IBAN</label><input id=\"iban\" value=\"1234 5672\">",
            ),
            (
                "<label>BSN <input value=\"l23456782\"></label>",
                "<label>IBAN <input value=\"l23456782\"></label>",
            ),
            (
                "BSN 2024-03-12T09:30:00.123Z 1234 5672",
                "BSN 2024-03-12T09:30:00.123Z 1234 5679",
            ),
            (
                "BSN 2024-03-12T093000 l23456782",
                "BSN 2024-03-12T093000 l23456789",
            ),
            ("BSN 20240312T0930 l23456782", "BSN 20240312T0930 l23456789"),
            (
                "BSN 2024-03-12T09Z l23456782",
                "BSN 2024-03-12T09Z l23456789",
            ),
            ("BSN T09:30:00 l23456782", "BSN T09:30:00 l23456789"),
            (
                "BSN 2024-03-12T09:30:00+01 l23456782",
                "BSN 2024-03-12T09:30:00+01 l23456789",
            ),
            ("BSN 09:30u l23456782", "BSN 09:30u l23456789"),
            ("BSN 9.30u l23456782", "BSN 9.30u l23456789"),
            ("BSN 9u l23456782", "BSN 9u l23456789"),
            ("BSN 14h l23456782", "BSN 14h l23456789"),
            ("BSN 09h30m l23456782", "BSN 09h30m l23456789"),
            ("B<!--->SN--> l23456782", "B<!--->SX--> l23456782"),
            ("B<?php ?>SN l23456782", "B<?php ?>SX l23456782"),
            ("B&amp;amp;#83;N l23456782", "B&amp;amp;#84;N l23456782"),
            (
                "\u{0299}\u{A731}\u{0274} l23456782",
                "\u{0299}\u{A731}\u{1D0F} l23456782",
            ),
            ("BSN \u{3163}23456782", "BSN \u{3163}23456789"),
            ("BSN: |23456782", "BSN: |23456789"),
            // A third attack.
            (
                "BSN 2024-03-12T09:30:00.1234567Z 1234 5672",
                "BSN 2024-03-12T09:30:00.1234567Z 1234 5679",
            ),
            (
                "BSN 2024-03-12T09:30:00.123456789Z l23456782",
                "BSN 2024-03-12T09:30:00.123456789Z l23456789",
            ),
            ("BSN 09:30:00.123456782", "BSN 09:30:00.123456789"),
            (
                "BSN 2024-03-12T09:30Z123456782",
                "BSN 2024-03-12T09:30Z123456789",
            ),
            ("BSN 9u123456782", "BSN 9u123456789"),
            (
                "<td data-label=\"BSN\"><b>1234</b> 5672</td>",
                "<td data-label=\"BSN\"><b>1234</b> 5679</td>",
            ),
            ("<bsn><b>1234</b> 5672</bsn>", "<bsn><b>1234</b> 5679</bsn>"),
            (
                "<th>BSN</th><td id=\"c3\">1234 5672</td>",
                "<th>BSN</th><td id=\"c3\">1234 5679</td>",
            ),
            (
                "<th>BSN</th><td><span title=\"kopieer\">1234 5672</span></td>",
                "<th>BSN</th><td><span title=\"kopieer\">1234 5679</span></td>",
            ),
            (
                "<label>BSN <input id=\"f1\" value=\"1234 5672\"></label>",
                "<label>BSN <input id=\"f1\" value=\"1234 5679\"></label>",
            ),
            (
                "<label for=\"b\">BSN</label><input id=\"b\" value=\"1234 5672\">",
                "<label for=\"b\">Nr</label><input id=\"b\" value=\"1234 5672\">",
            ),
            (
                "<input name=\"bsn\" value=\"\u{2113}23456782\">",
                "<input name=\"bsn\" value=\"\u{2113}23456789\">",
            ),
            (
                "<td data-label=\"B&#83;N\">1234 5672</td>",
                "<td data-label=\"B&#84;N\">1234 5672</td>",
            ),
            (
                "<td data-label=\"burger&shy;service&shy;nummer\">1234 5672</td>",
                "<td data-label=\"burger&shy;service&shy;nummer\">1234 5679</td>",
            ),
            ("B<!-- --!>SN l23456782", "B<!-- --!>SX l23456782"),
            (
                "B<style></style>SN 1234 5672",
                "B<style></style>SX 1234 5672",
            ),
            ("BSN 09:30 uur 1234 5672", "BSN 09:30 uur 1234 5679"),
            ("BSN oma 1234 5672", "BSN oma 1234 5679"),
            (
                "sociaal-fiscaalnummer 1234 5672",
                "sociaal-medischnummer 1234 5672",
            ),
            (
                "<abbr title=\"burgerservicenummer\">BSN</abbr> \u{2113}23456782",
                "<abbr title=\"burgerservicenummer\">BSN</abbr> \u{2113}23456789",
            ),
            // A fourth attack.
            (
                "B<style>p{color:red}</style>SN l23456782",
                "B<style>p{color:red}</style>SX l23456782",
            ),
            (
                "B<template><p>x</p></template>SN l23456782",
                "B<template><p>x</p></template>SX l23456782",
            ),
            (
                "B<svg><path d=\"M0 0\"/></svg>SN l23456782",
                "B<svg><path d=\"M0 0\"/></svg>SX l23456782",
            ),
            (
                "B<SCRIPT>x</SCRIPT>SN l23456782",
                "B<SCRIPT>x</SCRIPT>SX l23456782",
            ),
            (
                "B<video></video>SN l23456782",
                "B<video></video>SX l23456782",
            ),
            (
                "<td data-label=\"B&amp;#83;N\">1234 5672</td>",
                "<td data-label=\"B&amp;#84;N\">1234 5672</td>",
            ),
            (
                "<label for=\"bsn\">BSN</label><input value=\"1234 5672\">",
                "<label for=\"bsn\">BSN</label><input value=\"1234 5679\">",
            ),
            ("BSN 09:30:00.123456782", "BSN 09:30:00.123456789"),
        ];
        for (refused, twin) in pairs {
            assert!(check_text("f", refused).is_err(), "accepted: {refused:?}");
            assert!(check_text("f", twin).is_ok(), "refused: {twin:?}");
        }
        for (refused, twin) in [
            ("zie: l23456782", "zie: l23456789"),
            ("NL-l23456782", "NL-l23456789"),
            ("|23456782", "|23456789"),
            ("nvt 1234 5672", "nvt 1234 5679"),
            ("let op l23456782", "let op l23456789"),
            ("B l23456782", "B l23456789"),
        ] {
            assert!(
                check_labelled_text("f", refused).is_err(),
                "accepted: {refused:?}"
            );
            assert!(check_labelled_text("f", twin).is_ok(), "refused: {twin:?}");
            assert!(
                check_text("f", refused).is_ok(),
                "refused unlabelled: {refused:?}"
            );
        }
        // Ordinary text with numbers that are no BSN: every number of a sample, so that one
        // in eleven of them passing the eleven-test cannot hide the reading that refused it.
        for k in 0u64..300 {
            let a = (k * 7919 + 1234) % 10_000;
            let b = (k * 104_729 + 5678) % 10_000;
            for text in [
                format!("Gebeld met Sofie, 06 {a:04} {b:04}"),
                format!("Terugbellen Sofia 06-{a:04}{b:04}"),
                format!("Jobsnummer 06-{a:04}{b:04}"),
                format!("clubsnummer {a:04}-{b:04}"),
                format!("Mijn BSN en mijn 06-nummer: 06 {a:04}{b:04}"),
                format!("BSN of 06-nummer: 06 {a:04}{b:04}"),
                format!(
                    "<td data-label=\"BSN\">\u{2014}</td><td data-label=\"Huurnummer\">{a:04} {b:04}</td>"
                ),
                format!("<td data-label=\"BSN\"></td><td>{a:04} {b:04}</td>"),
                // A fourth attack: empty BSN elements and form fields, a question, timestamps.
                format!(
                    "<klant>\n  <naam>Jansen</naam>\n  <bsn/>\n  <telefoon>06{a:04}{b:04}</telefoon>\n</klant>"
                ),
                format!("<bsn>nvt</bsn><telefoon>06{a:04}{b:04}</telefoon>"),
                format!("<bsn></bsn><telefoon>06{a:04}{b:04}</telefoon>"),
                format!("</bsn> 06{a:04}{b:04}"),
                format!(
                    "<bsnGecontroleerd>true</bsnGecontroleerd><telefoon>06{a:04}{b:04}</telefoon>"
                ),
                format!(
                    "<BG:inp.bsn xsi:nil=\"true\" StUF:noValue=\"geenWaarde\"/><BG:inp.a-nummer>98{a:04}{b:04}</BG:inp.a-nummer>"
                ),
                format!(
                    "<input name=\"bsn\" value=\"\"><input name=\"telefoon\" value=\"06{a:04}{b:04}\">"
                ),
                format!(
                    "<input name=\"bsn\" value=\"\"><input type=\"date\" name=\"geboortedatum\" value=\"1906-03-12\"><input name=\"tel\" value=\"06{a:04}{b:04}\">"
                ),
                format!(
                    "<input placeholder=\"BSN (niet verplicht)\"><input placeholder=\"Telefoon\" value=\"06{a:04}{b:04}\">"
                ),
                format!("Vragen over uw BSN? Contactpersoon: 06-{a:04}{b:04}"),
                format!("2024-03-12T09:30:00.{a:04}{b:04}7"),
                format!(
                    "2024-01-22T22:55:25.{a:04}{:02} {:03} ms",
                    b % 100,
                    b % 1000
                ),
            ] {
                assert!(check_text("f", &text).is_ok(), "refused: {text:?}");
            }
            // A note in a field named for a BSN that it is unknown, and why.
            for note in [
                format!("onbekend (dossier {a:04}-{b:04})"),
                format!("niet bekend; tel 06-{a:04}{b:04}"),
                format!("weigert; mail 12-03-2024 09:30 ref {a:04}-{b:04}"),
            ] {
                assert!(check_labelled_text("f", &note).is_ok(), "refused: {note:?}");
            }
        }
        for name in [
            "jobs_nr",
            "clubsnaam",
            "labs_nr",
            "obs_nr",
            "subsnr",
            "websnummer",
            "abs_nr",
            "tabs_n",
            "sofie",
            "bsn_verified_at",
            "bsn_status",
        ] {
            assert!(!names_a_bsn(name), "{name}");
        }
        for name in [
            "klant.bsn",
            "bsn_huurder",
            "klantbsn",
            "bsnr",
            "sofi_nr",
            "bsn_oud",
            "meta.bsn.value",
        ] {
            assert!(names_a_bsn(name), "{name}");
        }
        // Unclosed comments (which took minutes to read before they were read in linear time).
        assert!(check_text("f", &"<!--".repeat(200_000)).is_ok());
    }

    /// The value of a field named for a BSN is read after a label in every reading of its
    /// bytes; the same bytes in another field are stored.
    #[test]
    fn binary_data_named_for_a_bsn_is_read_as_a_labelled_number() {
        for value in ["l23456782", "123456782,00", "1234 5672", "123456 en 782"] {
            for (how, data) in [
                ("UTF-8", value.as_bytes().to_vec()),
                ("UTF-16LE", le(value)),
                ("UTF-16BE", be(value)),
            ] {
                assert!(
                    check_binary_labelled("f", &data).is_err(),
                    "{value:?} as {how} accepted"
                );
                let mut scanner = Scanner::labelled();
                let streamed = data
                    .chunks(3)
                    .try_for_each(|c| scanner.write("f", c))
                    .and_then(|()| scanner.finish("f"));
                assert!(streamed.is_err(), "{value:?} as {how} streamed accepted");
                assert!(
                    check_binary("f", &data).is_ok(),
                    "{value:?} as {how} refused"
                );
            }
        }
        assert!(check_binary_labelled("f", b"l23456789").is_ok());
        assert!(check_binary_labelled("f", b"2024-03-12").is_ok());
        // A value that is not UTF-8 throughout is read from any word on all the same, as its
        // UTF-8 twin is; the same with a wrong check digit passes.
        for (value, twin) in [
            (b"nvt\xA01234\xA05672".as_slice(), "nvt\u{A0}1234\u{A0}5672"),
            (b"zie:\xA0l23456782", "zie:\u{A0}l23456782"),
            (b"nvt\xAD12345672", "nvt\u{AD}12345672"),
            (b"nvt 1234 5672\xFF", "nvt 1234 5672"),
            (b"zie: l23456782\xFF", "zie: l23456782"),
            (b"\xFF\xFEnvt 1234 5672", "nvt 1234 5672"),
            (b"nvt\xFF 1234 5672", "nvt 1234 5672"),
            (b"nvt \xFF1234 5672", "nvt 1234 5672"),
            (b"zie: \xFFl23456782", "zie: l23456782"),
            (b"nvt\x80 12.345.672", "nvt 12.345.672"),
            (b"nvt\xED\xA0\x80 1234 5672", "nvt 1234 5672"),
        ] {
            assert!(
                check_binary_labelled("f", twin.as_bytes()).is_err(),
                "{twin:?}"
            );
            assert!(check_binary_labelled("f", value).is_err(), "{value:02X?}");
            let wrong = [value, b" 1"].concat();
            let wrong: Vec<u8> = wrong
                .iter()
                .map(|&b| if b == b'2' { b'3' } else { b })
                .collect();
            assert!(check_binary_labelled("f", &wrong).is_ok(), "{wrong:02X?}");
        }
    }

    /// Every write is read at its end: a finding in a short write is refused with that write
    /// (on the caller's thread) or at the `settle` after it (the helper's readings), not only
    /// once enough text has gathered for a pass. A number at the very end of what was written
    /// waits for what comes after it.
    #[test]
    fn a_finding_is_refused_with_the_write_that_completes_it() {
        let clean = noise(11, 70_000);
        let prose = "De buurman belt aan. ".repeat(30);
        for text in [
            format!("hello BSN: 111222333 and more text. {prose}"),
            format!("{TD3_NAME}\n{TD3_DATA}\n{prose}"),
        ] {
            for (how, bytes) in [
                ("UTF-8", text.clone().into_bytes()),
                ("UTF-16BE", be(&text)),
            ] {
                let mut s = Scanner::new();
                s.write("data", &clean).unwrap();
                let at_once = s.write("data", &bytes).and_then(|()| s.settle("data"));
                assert!(at_once.is_err(), "{text:?} as {how}");
            }
        }
        let mut s = Scanner::new();
        s.write("data", b"hello BSN: 111222333").unwrap();
        s.write("data", b" and more text. ").unwrap();
        assert!(s.write("data", prose.as_bytes()).is_err());
        // Followed by binary data, which is mostly left out, a number is read once a break
        // follows it: nothing read crosses one.
        for text in [
            "x 111222333 ",
            "BSN: 1234 5672 ",
            "\u{FF11}\u{FF11}\u{FF11}222333 ",
        ] {
            for (how, bytes) in [("UTF-8", text.as_bytes().to_vec()), ("UTF-16BE", be(text))] {
                for noise_first in [false, true] {
                    let mut s = Scanner::new();
                    s.write("data", &clean).unwrap();
                    let data = [bytes.clone(), noise(5, 65_536)].concat();
                    let answer = if noise_first {
                        s.write("data", &bytes)
                            .and_then(|()| s.write("data", &noise(5, 65_536)))
                    } else {
                        s.write("data", &data)
                    };
                    let answer = answer.and_then(|()| s.settle("data"));
                    assert!(answer.is_err(), "{text:?} as {how} ({noise_first})");
                }
            }
        }
    }

    /// After a label, a numeric reference without its `;` is read both as markup takes it (one
    /// character: `&#32` a space) and as the text it is written as (its digits count): a BSN
    /// read either way is refused in an upload; twins with a wrong check digit pass.
    #[test]
    fn a_reference_without_its_semicolon_is_read_both_ways_after_a_label() {
        for (text, twin) in [
            ("BSN &#x20 12345672 ", "BSN &#x20 12345673 "),
            ("BSN: 1234&#32 5672 ", "BSN: 1234&#32 5673 "),
            ("BSN: 1234 &#32 5672 einde", "BSN: 1234 &#32 5673 einde"),
            (
                "BSN &#32&#49;&#50;&#51;&#52;&#53;&#54;&#55;&#50; ",
                "BSN &#32&#49;&#50;&#51;&#52;&#53;&#54;&#55;&#51; ",
            ),
            (
                "BSN &#49;&#50;&#51;&#52;&#32&#53;&#54;&#55;&#50; ",
                "BSN &#49;&#50;&#51;&#52;&#32&#53;&#54;&#55;&#51; ",
            ),
            ("BSN 12&#345672 ", "BSN 12&#345673 "),
            ("BSN 12&#3 45672 ", "BSN 12&#3 45673 "),
        ] {
            for (how, data) in embeddings(text) {
                for chunk in [3, data.len()] {
                    assert!(
                        scan_refuses(&data, 100, chunk),
                        "{text} as {how} in {chunk}s"
                    );
                }
            }
            for (how, data) in embeddings(twin) {
                if how.starts_with("UTF-8") {
                    assert!(!scan_refuses(&data, 100, 3), "{twin} as {how}");
                }
            }
        }
    }

    /// `text` is refused in every embedding (in 3-byte and whole writes) and as a value; its
    /// `twin` (a failing check digit) is stored both ways.
    fn refused_as_upload_and_value_and_twin_not(text: &str, twin: &str) {
        for (how, data) in embeddings(text) {
            for chunk in [3, data.len()] {
                assert!(
                    scan_refuses(&data, 100, chunk),
                    "{text} as {how} in {chunk}s"
                );
            }
        }
        assert!(check_text("v", text).is_err(), "{text} as a value");
        for (how, data) in embeddings(twin) {
            if how.starts_with("UTF-8") {
                assert!(!scan_refuses(&data, 100, 3), "{twin} as {how}");
            }
        }
        assert!(check_text("v", twin).is_ok(), "{twin} as a value");
    }

    /// Markup reads a legacy name (`&nbsp`, `&shy`, `&middot`) without its `;`, and a numeric
    /// reference without it that no digit follows: between a number's groups they separate
    /// as their closed twins do, labelled or not.
    #[test]
    fn references_markup_reads_without_their_semicolon_separate_groups() {
        for (text, twin) in [
            ("111&#32 222&#32 333 ", "111&#32 222&#32 334 "),
            ("111&#160 222&#160 333 ", "111&#160 222&#160 334 "),
            ("111&#xa0 222&#xa0 333 ", "111&#xa0 222&#xa0 334 "),
            (
                "<p>111&#x20 222&#x20 333</p>",
                "<p>111&#x20 222&#x20 334</p>",
            ),
            ("111&nbsp222&nbsp333 ", "111&nbsp222&nbsp334 "),
            ("111&shy222&shy333 ", "111&shy222&shy334 "),
            ("111&middot222&middot333 ", "111&middot222&middot334 "),
            ("111&NBSP222&Shy333 ", "111&NBSP222&Shy334 "),
            ("BSN: 1234&nbsp 5672 ", "BSN: 1234&nbsp 5673 "),
            ("BSN 1234&shy5672 ", "BSN 1234&shy5673 "),
            ("BSN 123&nbsp 456&nbsp 782 ", "BSN 123&nbsp 456&nbsp 783 "),
            (
                "Burgerservicenummer 123&nbsp 456&nbsp 782 ",
                "Burgerservicenummer 123&nbsp 456&nbsp 783 ",
            ),
        ] {
            refused_as_upload_and_value_and_twin_not(text, twin);
        }
        // Markup reads `&#32222` as one character that is no separator, and `&notice` as `¬`
        // and a word, neither a number: nothing is refused.
        for text in ["111&#32222&#32333 ", "111&notice222&notice333 "] {
            assert!(!scan_refuses(text.as_bytes(), 100, 3), "{text}");
        }
    }

    /// A label glued to a letter written for the number's first digit (`BSNl23456782`) is read
    /// with that letter as the digit, whether or not the word with the letter says BSN too.
    #[test]
    fn a_label_glued_to_a_letter_for_the_first_digit_is_read_with_it() {
        for (text, twin) in [
            ("BSNl23456782 ", "BSNl23456783 "),
            ("BSNI23456782 ", "BSNI23456783 "),
            ("sofinummerl23456782 ", "sofinummerl23456783 "),
            ("BSN-nummerl23456782 ", "BSN-nummerl23456783 "),
            (
                "burgerservicenummer\u{200B}l23456782 ",
                "burgerservicenummer\u{200B}l23456783 ",
            ),
        ] {
            refused_as_upload_and_value_and_twin_not(text, twin);
        }
        // A word that is no label, with a letter glued to digits, is not read as one.
        for text in ["modell23456782 ", "artikel l23456782 "] {
            assert!(!scan_refuses(text.as_bytes(), 100, 3), "{text}");
        }
    }

    /// A character reference cut by a write is read whole: every two-way cut, and writes of
    /// one to seven bytes, give the answer of one write, refused or not, in UTF-8 and UTF-16.
    #[test]
    fn a_reference_cut_between_writes_is_read_whole() {
        for text in [
            "BSN: &#x31 23456782 einde",
            "BSN: &#x31&#x32&#x33&#x34&#x35&#x36&#x37&#x38&#x32 ",
            "&#50;12345672 ",
            "&#x32;12345672 ",
            "&#49;-1 23456782 ",
            "&x2;12345672 ",
            "zie &#x31 23456783 einde",
        ] {
            for (how, bytes) in [
                ("UTF-8", text.as_bytes().to_vec()),
                ("UTF-16LE", le(text)),
                ("UTF-16BE", be(text)),
            ] {
                let whole = scan_answer(&bytes, SCAN_AT, bytes.len(), usize::MAX).is_err();
                assert_eq!(whole, !text.contains("23456783"), "{text} as {how}");
                for cut in 1..bytes.len() {
                    let (a, b) = bytes.split_at(cut);
                    let mut s = Scanner::new();
                    let answer = s
                        .write("data", a)
                        .and_then(|()| s.write("data", b))
                        .and_then(|()| s.finish("data"));
                    assert_eq!(answer.is_err(), whole, "{text} as {how} cut at {cut}");
                }
                for chunk in 1..=7 {
                    assert_eq!(
                        scan_answer(&bytes, SCAN_AT, chunk, usize::MAX).is_err(),
                        whole,
                        "{text} as {how} in {chunk}s"
                    );
                }
            }
        }
    }

    /// After a BSN label, a number written all in character references (decimal or hex, nine
    /// digits or eight with the leading zero left off) is read as a person reads it: refused in
    /// every embedding and every cut, as a value and streamed; the same with a wrong check
    /// digit passes.
    #[test]
    fn a_number_in_character_references_after_a_label_is_refused() {
        let refs = |digits: &str, hex: bool| -> String {
            digits
                .chars()
                .map(|c| {
                    if hex {
                        format!("&#x{:x};", u32::from(c))
                    } else {
                        format!("&#{};", u32::from(c))
                    }
                })
                .collect()
        };
        for (digits, wrong) in [("123456782", "123456783"), ("12345672", "12345673")] {
            for hex in [false, true] {
                for label in ["BSN: ", "bsn nr ", "BSN nummer "] {
                    let text = format!("{label}{} en verder", refs(digits, hex));
                    let twin = format!("{label}{} en verder", refs(wrong, hex));
                    for (how, data) in embeddings(&text) {
                        assert!(check_binary("f", &data).is_err(), "{text} as {how}");
                        for chunk in [1, 7, 4096] {
                            assert!(scan_refuses(&data, 100, chunk), "{text} as {how} {chunk}");
                        }
                    }
                    // As UTF-8 only: read as UTF-8, the same text in UTF-16 is its digits
                    // spaced out by NULs, which may pass the eleven-test in some window.
                    for (how, data) in embeddings(&twin) {
                        if how.starts_with("UTF-8") {
                            assert!(check_binary("f", &data).is_ok(), "{twin} as {how}");
                        }
                    }
                }
            }
        }
    }

    /// Text in UTF-16 that runs straight into data that is not text: whatever unit the next
    /// two bytes make, a BSN at its end is refused, unless they read as a Latin letter or a
    /// digit (about 62 of the 65,536 units). Both byte orders, a thousand tails each.
    #[test]
    fn a_bsn_in_utf16_followed_by_binary_data_is_refused() {
        let continues = |unit: u16| {
            char::from_u32(u32::from(unit)).is_some_and(|c| {
                let mut folded = Vec::new();
                Folds::get().fold(c, &mut |u| folded.push(u));
                folded.first().is_some_and(|u| u.binds() || u.is_digit())
            })
        };
        for big_endian in [false, true] {
            let (mut refused, mut tails) = (0, 0);
            for seed in 1..=1000 {
                let tail = noise(seed, 64);
                let unit = if big_endian {
                    u16::from_be_bytes([tail[0], tail[1]])
                } else {
                    u16::from_le_bytes([tail[0], tail[1]])
                };
                // An ignorable unit (a combining mark, a zero-width character) shows nothing:
                // the next one touches the digits.
                if continues(unit) || Folds::get().direct(unit) == Folds::NONE {
                    continue;
                }
                let text = if big_endian {
                    be("bsn 111222333")
                } else {
                    le("bsn 111222333")
                };
                let data = [noise(seed + 5000, 33), vec![0, 0], text, tail].concat();
                tails += 1;
                if check_binary("f", &data).is_err() {
                    refused += 1;
                }
            }
            assert!(tails > 900, "{tails} tails tried");
            assert_eq!(
                refused, tails,
                "big endian: {big_endian}: {refused} of {tails} refused"
            );
        }
        // The bytes of an attack: U+20E2 (a combining mark) and U+A0B8 (a Yi letter) after
        // the number, in UTF-16 big-endian.
        let data = [
            noise(9, 41),
            vec![0, 0],
            be("bsn 111222333"),
            vec![0x20, 0xE2, 0xA0, 0xB8],
            noise(10, 4096),
        ]
        .concat();
        assert!(check_binary("f", &data).is_err());
        for chunk in [1, 3, 4096] {
            assert!(scan_refuses(&data, 512, chunk), "in chunks of {chunk}");
        }
    }

    /// The character Windows-1252 gives a byte from `80` to `BF` (`None` for the five it
    /// leaves undefined and every other byte): what [`windows_1252_separator`] is held to.
    fn windows_1252(b: u8) -> Option<char> {
        const HIGH: [u16; 32] = [
            0x20AC, 0, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
            0x2039, 0x0152, 0, 0x017D, 0, 0, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013,
            0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0, 0x017E, 0x0178,
        ];
        match b {
            0x80..=0x9F => {
                char::from_u32(u32::from(HIGH[usize::from(b - 0x80)])).filter(|&c| c != '\0')
            }
            0xA0..=0xBF => Some(char::from(b)),
            _ => None,
        }
    }

    /// A byte that is not UTF-8 where it stands, and that Windows-1252 shows as a separator
    /// of the groups of a number (a no-break space, a dash, a middle dot or bullet, the right
    /// single quote, a soft hyphen), is read as that character: a number whose groups such
    /// bytes separate is refused as the same text in UTF-8 is, in one piece, in every cut of
    /// an upload, and with binary data around it; the same spacing around a number that is no
    /// BSN passes. Other bytes, and such a byte that continues a sequence begun before it,
    /// stay breaks.
    #[test]
    fn windows_1252_separators_between_groups_do_not_hide_a_bsn() {
        let folds = Folds::get();
        let separators: Vec<u8> = (0..=255u8)
            .filter(|&b| windows_1252_separator(b).is_some())
            .collect();
        assert_eq!(separators, [0x92, 0x95, 0x96, 0x97, 0xA0, 0xAD, 0xB7]);
        let templates = [
            "BSN:{}111{}222{}333 ",
            "zie 111{}222{}333 ",
            "111{}222{}333 ",
            "1{}1{}1{}2{}2{}2{}3{}3{}3 ",
            "1112{}22333 ",
            "1112{}{}{}22333 ",
        ];
        for b in separators {
            let c = windows_1252_separator(b).unwrap();
            assert_eq!(Some(c), windows_1252(b), "{b:02X}");
            let mut units = Vec::new();
            folds.fold(c, &mut |u| units.push(u));
            assert!(
                units
                    .iter()
                    .all(|u| u.is_separator() && mrz_char(*u).is_none()),
                "{b:02X} {units:?}"
            );
            for template in templates {
                let utf8 = template.replace("{}", c.encode_utf8(&mut [0; 4]));
                assert!(check_binary("f", utf8.as_bytes()).is_err(), "{utf8:?}");
                // The same spacing with two of the digits changed: no BSN.
                let no_bsn = template.replacen("333", "334", 1).replacen('2', "3", 1);
                for (text, want) in [(template, true), (no_bsn.as_str(), false)] {
                    let pieces: Vec<&[u8]> = text.split("{}").map(str::as_bytes).collect();
                    let bytes = pieces.join(&b);
                    assert_eq!(check_binary("f", &bytes).is_err(), want, "{b:02X} {text}");
                    let mut data = noise(u64::from(b), 300);
                    data.push(0xFF);
                    data.extend_from_slice(&bytes);
                    data.push(0);
                    data.extend(noise(3, 300));
                    for chunk in [1, 7, 64, data.len()] {
                        assert_eq!(scan_refuses(&data, 100, chunk), want, "{b:02X} {text}");
                    }
                }
            }
        }
        // Read as letters, digits or signs, or as part of a sequence, bytes do not separate.
        for bytes in [
            b"111\x9A222\x9A333 ".as_slice(),
            b"111\xB2222\xB2333 ",
            b"111\x80222\x80333 ",
            b"111\xE2\xA0222\xE2\xA0333 ",
            b"111\xF0\x90\xA0222\xF0\x90\xA0333 ",
        ] {
            assert!(check_binary("f", bytes).is_ok(), "{bytes:02X?}");
            assert!(!scan_refuses(bytes, 100, 3), "{bytes:02X?}");
        }
    }

    /// The false-positive rate on data that is not text, measured: README.md states it. Eight
    /// MiB of pseudo-random bytes, read in chunks as an upload is, and as binary values of a
    /// MiB each, pass.
    #[test]
    fn random_bytes_are_not_taken_for_a_bsn_or_mrz() {
        let data = noise(2024, 8 << 20);
        let mut s = Scanner::new();
        for chunk in data.chunks(256 * 1024 + 17) {
            s.write("data", chunk).unwrap();
        }
        s.finish("data").unwrap();
        for block in data.chunks(1 << 20) {
            check_binary("f", block).unwrap();
        }
    }

    /// A scanner once refused stays refused: whatever comes after (innocent bytes, `settle`,
    /// `finish`) is refused for the same finding, on one thread and with the helper, whether
    /// the caller's readings found it or the helper's.
    #[test]
    fn a_refused_scanner_refuses_everything_after() {
        let bsn = "bsn 111222333 ";
        for (data, parallel_from) in [
            (bsn.as_bytes().to_vec(), usize::MAX),
            (bsn.as_bytes().to_vec(), 1),
            (be(bsn), 1),
            ([b"x".as_slice(), &be(bsn)].concat(), 1),
        ] {
            let mut s = Scanner::new();
            s.parallel_from = parallel_from;
            let innocent = noise(5, 20_000);
            s.write("data", &innocent).unwrap();
            // A number at the end of what the readings gathered is decided once more text
            // came, or at `finish`.
            let first = s
                .write("data", &data)
                .and_then(|()| s.write("data", &innocent))
                .and_then(|()| s.settle("data"))
                .and_then(|()| s.finish("data"));
            let refusal = first.unwrap_err().to_string();
            assert!(refusal.contains("BSN"), "{refusal}");
            for _ in 0..2 {
                let (again, ran) = s.write_beside("data", &innocent, || true);
                assert_eq!(again.unwrap_err().to_string(), refusal);
                assert!(ran);
            }
            assert_eq!(s.settle("data").unwrap_err().to_string(), refusal);
            assert_eq!(s.finish("data").unwrap_err().to_string(), refusal);
            assert_eq!(s.finish("data").unwrap_err().to_string(), refusal);
        }
    }

    /// Counts refusals of pseudo-random binary data: `cargo test --release -- --ignored
    /// --nocapture random_bytes_false_positive_rate` (README.md, "False positives").
    #[test]
    #[ignore = "reads 4 GiB; run on demand with --release"]
    fn random_bytes_false_positive_rate() {
        let blocks = 4096;
        let refused = (0..blocks)
            .filter(|&i| check_binary("f", &noise(i + 1, 1 << 20)).is_err())
            .count();
        println!("{refused} of {blocks} blocks of 1 MiB refused");
    }

    /// An MRZ line with eight spaces after each character.
    fn spaced(line: &str) -> String {
        line.chars().map(|c| format!("{c}        ")).collect()
    }

    /// Chunking changes nothing: whatever the bytes and wherever they are cut, a scanner that
    /// reads often comes to the same answer as one reading everything at once, and text that
    /// `check_text` refuses is refused as binary data too.
    #[test]
    fn a_row_or_mrz_split_across_passes_is_read_whole() {
        let filler = "\u{200B}".repeat(5000);
        let cases = [
            format!("111{filler}222{filler}333"),
            format!("{}111 222 333", "x ".repeat(10_000)),
            format!("{}bsn: 1234 5672", "a b c ".repeat(3000)),
            format!("{} 1 1 1 2 2 2 3 3 3 ", "z".repeat(30_000)),
            format!("{}{TD3_NAME}\n{TD3_DATA}", ". ".repeat(9000)),
            format!("{}{}", "- ".repeat(8000), spaced(TD3_NAME)),
            format!("{} 1&#160;1&nbsp;1<b>2</b>2 2 3 3 3", "q".repeat(17_000)),
        ];
        for text in &cases {
            assert!(
                check_text("f", text).is_err(),
                "{:?}",
                text.get(text.len() - 60..)
            );
            for scan_at in [100, 1000, 5000] {
                for chunk in [1, 13, 1000] {
                    assert!(
                        scan_refuses(text.as_bytes(), scan_at, chunk),
                        "{scan_at} {chunk}"
                    );
                }
            }
        }
        // The same with the last digit changed: no BSN, and no refusal from the cuts.
        for text in &cases[..4] {
            let twin = text.replacen("333", "334", 1).replacen("5672", "5673", 1);
            let twin = twin.replacen("3 3 3 ", "3 3 4 ", 1);
            assert!(check_text("f", &twin).is_ok());
            for scan_at in [100, 1000, 5000] {
                assert!(!scan_refuses(twin.as_bytes(), scan_at, 13), "{scan_at}");
            }
        }
    }

    /// A row of numbers longer than [`LONG_ROW`] is read in overlapping parts: a BSN in its
    /// groupings is found in any part, and its twin is not.
    #[test]
    fn a_long_row_of_numbers_is_read_in_parts() {
        let long = "5 5 5 ".repeat(2000);
        for (text, refused) in [
            (format!("{long}111 222 333 {long}"), true),
            (format!("{long}123 456 789 {long}"), false),
            (format!("{long}1,5 1 1 1 2 2 2 3 3 3 2,5 {long}"), true),
            (format!("{long}1,5 1 2 3 4 5 6 7 8 9 2,5 {long}"), false),
            (format!("{long}111222333 {long}"), true),
            (format!("{long}1 1 1 2 2 2 3 3 3"), false),
        ] {
            assert_eq!(check_text("f", &text).is_err(), refused, "{refused}");
            assert_eq!(check_binary("f", text.as_bytes()).is_err(), refused);
            for scan_at in [64, 700, 5000] {
                for chunk in [3, 1000] {
                    assert_eq!(scan_refuses(text.as_bytes(), scan_at, chunk), refused);
                }
            }
        }
    }

    /// A view never grows past the room it was given, however the data is made: its buffers
    /// are wiped when dropped, and a reallocation would leave a copy behind.
    #[test]
    fn a_scanner_holds_a_bounded_amount_of_text() {
        // All five readings on this thread, where the test can see them.
        let mut s = Scanner::new();
        s.parallel_from = usize::MAX;
        let capacity: Vec<usize> = s.views.iter().map(|v| v.units.capacity()).collect();
        let widest = "\u{FDFA}".repeat(100_000);
        let long_row = "1 ".repeat(100_000);
        let tags = "1<span class=\"a-very-long-class-name-indeed-it-is-long\">".repeat(10_000);
        for data in [
            widest.as_bytes(),
            long_row.as_bytes(),
            tags.as_bytes(),
            &le(&widest),
        ] {
            for chunk in data.chunks(65_536) {
                s.write("data", chunk).unwrap();
            }
        }
        s.finish("data").unwrap();
        let after: Vec<usize> = s.views.iter().map(|v| v.units.capacity()).collect();
        assert_eq!(after, capacity);
    }

    #[test]
    fn identity_document_file_names_are_refused_however_they_are_spelled() {
        for name in [
            "p\u{0430}spoort.jpg",
            "\u{0440}\u{0430}sp\u{043E}\u{043E}rt.jpg",
            "\u{03A1}\u{0391}SSP\u{039F}RT.PNG",
            "pasp0ort.jpg",
            "PA5P00RT.JPG",
            "r1jbewijs.png",
            "1d-kaart.jpg",
            "p a s p o o r t.jpg",
            "p.a.s.p.o.o.r.t.pdf",
            "pas\u{200B}poort.jpg",
            "Pa\u{00DF}port.jpg",
            "REISEPA\u{1E9E}.jpg",
            "passeport.jpg",
            "PASSEPORT.PDF",
            "copie passeport.pdf",
            "carte d'identit\u{00E9}.pdf",
            "Carte_nationale_d_identite.png",
            "titre de s\u{00E9}jour.pdf",
            "permis de conduire.jpg",
            "Personalausweis.jpg",
            "Reisepass.jpg",
            "F\u{00FC}hrerschein.jpg",
            "Aufenthaltstitel.pdf",
            "vreemdelingendocument.pdf",
            "verblijfsdocument.pdf",
            "ID-bewijs.pdf",
            "kinderpaspoort.jpg",
            "noodpaspoort_2024.pdf",
            "Kinderreisepass.jpg",
            "vluchtelingenpaspoortkopie.png",
        ] {
            let err = check_file_name("start.file_name", name)
                .err()
                .unwrap_or_else(|| panic!("accepted: {name:?}"));
            assert_eq!(err.field, "start.file_name");
            assert!(!err.problem.contains(name));
        }
        for name in [
            "pasfoto.jpg",
            "paspoortfoto-beleid.pdf",
            "passe-partout.jpg",
            "sport.jpg",
            "compas sport.jpg",
            "transport.pdf",
            "rapport 2024.pdf",
            "Reisplan.pdf",
            "Ausweichroute.pdf",
            "Mitgliedsausweis.pdf",
            "cartes.pdf",
            "DSC_0001.JPG",
            "IMG_1035.jpg",
            "5can.jpg",
            "scan 2024-03-12.pdf",
        ] {
            assert!(
                check_file_name("start.file_name", name).is_ok(),
                "refused: {name:?}"
            );
        }
    }

    /// Whether `s` shows a date (`d-m-yyyy`, `yyyy-mm-dd`, one and the same dash, slash or dot
    /// between the parts): such a rendering of a BSN reads as a date and a number, and is
    /// accepted as documented.
    fn reads_as_date(s: &str) -> bool {
        let folded: String = units(s)
            .iter()
            .map(|x| match *x {
                Unit(d @ b'0'..=b'9') => char::from(d),
                Unit::JOINER => '-',
                Unit::DOT => '.',
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

    /// Pieces of text that a BSN, an MRZ or their spellings are made of, for the property tests
    /// of the scanner.
    const PIECES: &[&str] = &[
        "111",
        "222",
        "333",
        "1",
        "2",
        "3",
        " ",
        "-",
        " -- ",
        "x",
        "bsn",
        "BSN: ",
        "\u{200B}",
        "\u{FE0F}",
        "<b>",
        "</b>",
        "&nbsp;",
        "&#160;",
        ",",
        ":",
        ".",
        "\u{20AC}",
        "+",
        "(",
        ")",
        "a",
        "NL",
        "B01",
        "\n",
        "12-03-2024",
        "\u{FF11}",
        "\u{0661}",
        "1\u{0301}",
        "\u{0}",
        "\u{1}",
        "q",
        "<",
        "12345672",
        "123456789",
        "\u{FDFA}",
        "\u{2488}",
        "P<NLDDE<BRUIJN<<WILLEKE<LISELOTTE<<<<<<<<<<<",
        "SPECI20142NLD6503101F2403096999999990<<<<<84",
        // Long stretches, so that rows and runs are read in different passes.
        "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        ". . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . ",
        "\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}",
    ];

    /// The decoders' one-load table says what folding says, for every character of the
    /// plane: one unit, nothing, or (`SLOW`) several or a surrogate.
    #[test]
    fn the_direct_table_agrees_with_folding() {
        let folds = Folds::get();
        for cp in 0..=0xFFFFu16 {
            let slow = char::from_u32(u32::from(cp)).map(|c| {
                let mut v = Vec::new();
                fold_slowly(c, &mut |u| v.push(u));
                v
            });
            match (folds.direct(cp), slow.as_deref()) {
                (Folds::NONE, Some([])) => {}
                (Folds::SLOW, None | Some([_, _, ..])) => {}
                (u, Some([one])) if u <= Unit::OTHER.0 => assert_eq!(Unit(u), *one, "{cp:#x}"),
                (u, slow) => panic!("{cp:#x}: table {u:#x}, folding {slow:?}"),
            }
            // And `fold`, which reads the table first, folds as `fold_slowly` does.
            if let (Some(c), Some(slow)) = (char::from_u32(u32::from(cp)), &slow) {
                let mut fast = Vec::new();
                folds.fold(c, &mut |u| fast.push(u));
                assert_eq!(&fast, slow, "{cp:#x}");
            }
        }
    }

    /// The units of `bytes` read one byte at a time ([`View::utf8_byte`]), with a break for a
    /// sequence left unfinished: the reading [`decode_utf8`] is held to.
    fn utf8_reference(bytes: &[u8]) -> Vec<Unit> {
        let mut v = View::new(Encoding::Utf8, false, 1 << 16);
        for &b in bytes {
            v.utf8_byte(b);
        }
        if v.need > 0 {
            v.push_break();
        }
        v.units.to_vec()
    }

    /// What [`decode_utf8`] makes of `bytes` on its own, ended by three `FF` bytes: breaks
    /// that end any sequence, so that it reads every byte.
    fn utf8_fast(bytes: &[u8]) -> Vec<Unit> {
        let padded = [bytes, &[0xFF; 3]].concat();
        let mut units = Vec::new();
        let done = decode_utf8(&mut units, Folds::get(), &padded, padded.len(), &mut 0);
        assert_eq!(done, padded.len(), "{bytes:x?}");
        units
    }

    /// `units` with every stretch between two breaks that cannot hold a finding left out, and
    /// breaks in a row as one; counted here unit by unit, as the rule says, not as
    /// [`may_hold_finding`] counts.
    fn left_out(units: &[Unit]) -> Vec<Unit> {
        let mut out = Vec::new();
        // The first stretch counts as one that may hold a finding: no break began it.
        let (mut since, mut digits, mut mrz) = (0, SHORTEST_FINDING, 0);
        for &u in units {
            if u == Unit::BREAK {
                if since > 0 && digits < SHORTEST_FINDING && mrz < MRZ_LINE {
                    out.truncate(out.len() - since);
                } else if out.last() != Some(&Unit::BREAK) {
                    out.push(u);
                }
                (since, digits, mrz) = (0, 0, 0);
            } else {
                out.push(u);
                since += 1;
                digits += usize::from(u.digit().is_some());
                mrz += usize::from(mrz_char(u).is_some());
            }
        }
        out
    }

    /// One UTF-8 sequence is read as the standard library reads it, by the byte-by-byte
    /// decoder and by [`decode_utf8`]: every two- and three-byte sequence, and four-byte ones
    /// at every lead with the edges of each range. A sequence that is not UTF-8 begins with a
    /// break, and both decoders read the rest alike.
    #[test]
    fn utf8_sequences_are_read_as_the_standard_library_reads_them() {
        let folds = Folds::get();
        let check = |seq: &[u8]| {
            let std_char = std::str::from_utf8(seq).ok().and_then(|s| s.chars().next());
            let reference = utf8_reference(seq);
            let fast = utf8_fast(seq);
            match std_char {
                Some(c) => {
                    let mut want = Vec::new();
                    folds.fold(c, &mut |u| want.push(u));
                    assert_eq!(reference, want, "{seq:x?}");
                    want.push(Unit::BREAK);
                    assert_eq!(fast, want, "{seq:x?}");
                }
                None => {
                    assert_eq!(reference.first(), Some(&Unit::BREAK), "{seq:x?}");
                    assert_eq!(fast.first(), Some(&Unit::BREAK), "{seq:x?}");
                }
            }
            let reference = [reference, vec![Unit::BREAK]].concat();
            assert_eq!(left_out(&fast), left_out(&reference), "{seq:x?}");
            // With eight digits after it the stretch is kept, and compared unit by unit: a
            // sequence that is not UTF-8 is one break, and what follows it is read alike.
            let kept = [seq, b"12345678"].concat();
            let reference = [utf8_reference(&kept), vec![Unit::BREAK]].concat();
            assert_eq!(utf8_fast(&kept), left_out(&reference), "{seq:x?}");
        };
        for lead in 0xC2..=0xDFu8 {
            for b in 0..=0xFFu8 {
                check(&[lead, b]);
            }
        }
        for lead in 0xE0..=0xEFu8 {
            for b in 0..=0xFFu8 {
                for c in 0..=0xFFu8 {
                    check(&[lead, b, c]);
                }
            }
        }
        let edges = [0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF];
        for lead in 0xF0..=0xF4u8 {
            for b in 0..=0xFFu8 {
                for c in edges {
                    for d in edges {
                        check(&[lead, b, c, d]);
                    }
                }
            }
        }
    }

    /// Every byte read in one pass gives the units of the byte-by-byte decoder, less the short
    /// stretches between breaks: on noise, on text, and on noise with text in it.
    #[test]
    fn utf8_in_one_pass_reads_what_byte_by_byte_reads() {
        let mut inputs = vec![noise(1, 1 << 16), "Geachte heer, bsn 111 222 333.".into()];
        for (_, data) in embeddings("bsn 111222333 \u{0661}\u{0662} \u{FF11}\u{FF12}") {
            inputs.push(data);
        }
        for data in inputs {
            let fast = utf8_fast(&data);
            let reference = [utf8_reference(&data), vec![Unit::BREAK]].concat();
            assert_eq!(fast, left_out(&reference));
            // Stretches are left out as they are read: only the first, which no break of the
            // call began, may stay.
            let first = fast
                .iter()
                .position(|&u| u == Unit::BREAK)
                .unwrap_or(fast.len());
            assert!(fast.len() <= left_out(&fast).len() + first);
        }
    }

    /// The units of `bytes` read as UTF-16, one code unit at a time with every break kept: the
    /// reading [`View::write_utf16`] is held to.
    fn utf16_reference(bytes: &[u8], big_endian: bool) -> Vec<Unit> {
        let (mut units, mut high) = (Vec::new(), None);
        let mut keep = Stretch {
            open: None,
            leaves_out: false,
        };
        for pair in bytes.chunks_exact(2) {
            let cu = match pair {
                [a, b] if big_endian => u16::from_be_bytes([*a, *b]),
                [a, b] => u16::from_le_bytes([*a, *b]),
                _ => continue,
            };
            code_unit(&mut units, &mut high, Folds::get(), cu, &mut keep);
        }
        if high.is_some() {
            push_break(&mut units);
        }
        units
    }

    /// What a UTF-16 view makes of `bytes` in one write, with the units it has not read yet.
    fn utf16_fast(bytes: &[u8], big_endian: bool) -> Vec<Unit> {
        let mut view = View::new(Encoding::Utf16 { big_endian }, false, 1 << 20);
        view.write(bytes).expect("nothing is read before the end");
        view.units.to_vec()
    }

    /// Read as UTF-16, noise leaves almost nothing for the scanners: its stretches between
    /// unpaired surrogates hold neither eight digits nor an MRZ line's characters. Text, and
    /// noise with text in it, gives the units of the code-unit-by-code-unit reading less the
    /// stretches that cannot hold a finding.
    #[test]
    fn utf16_in_one_pass_leaves_out_what_cannot_hold_a_finding() {
        for big_endian in [false, true] {
            let data = noise(3, 1 << 16);
            let fast = utf16_fast(&data, big_endian);
            let reference = utf16_reference(&data, big_endian);
            assert!(
                fast.len() * 20 < reference.len(),
                "{} of {} units left",
                fast.len(),
                reference.len()
            );
            let mut inputs = vec![data];
            let text =
                "Geachte heer, bsn 111 222 333. P<NLDDE<BRUIJN<<WILLEKE<LISELOTTE<<<<<<<<<<<";
            inputs.push(if big_endian { be(text) } else { le(text) });
            for (_, data) in embeddings("bsn 111222333 \u{0661}\u{0662} \u{FF11}\u{FF12}") {
                inputs.push(data);
            }
            for data in inputs {
                // A lone surrogate at the end ends the last stretch as a break of the call.
                let lone: &[u8] = if big_endian { &[0xDC, 0] } else { &[0, 0xDC] };
                let data = [&data[..data.len() & !1], lone].concat();
                let fast = utf16_fast(&data, big_endian);
                let reference = utf16_reference(&data, big_endian);
                assert_eq!(fast, left_out(&reference));
                let first = fast
                    .iter()
                    .position(|&u| u == Unit::BREAK)
                    .unwrap_or(fast.len());
                assert!(fast.len() <= left_out(&fast).len() + first);
            }
        }
    }

    /// Units for the block passes: MRZ characters, spaces and the rest, in runs.
    fn unit_runs(runs: &[(u8, usize)]) -> Vec<Unit> {
        const ALPHABET: &[u8] = b"0a9z< .-$&\x80\x81\xff";
        runs.iter()
            .flat_map(|&(k, n)| {
                let u = ALPHABET.get(usize::from(k) % ALPHABET.len()).copied();
                std::iter::repeat_n(Unit(u.unwrap_or(b' ')), n)
            })
            .collect()
    }

    /// Stretches of text of about the shortest length that can hold a finding, findings among
    /// them (a BSN of nine and of eight digits, an MRZ line), for
    /// `leaving_out_short_stretches_never_changes_the_answer` to put between breaks.
    const STRETCHES: &[&str] = &[
        "111222333",
        "11122233",
        "12345672",
        "1234567",
        "bsn",
        "bsn 12345672",
        "111 222 333",
        "111",
        "222 333",
        " ",
        "<b>",
        "&#160;",
        "\u{0661}\u{0661}\u{0661}",
        "\u{FF12}\u{FF12}\u{FF12}",
        "P<NLDDE<BRUIJN<<WILLEKE<LISELOTTE<<<<<<<<<<<",
        "P<NLDDE<BRUIJN<<WILLEKE<<<<",
        "a",
    ];

    /// Lines of a real MRZ and stretches just long and just short of a line, for the block
    /// pass of `scan_mrz` to meet at every offset of a block.
    const MRZ_PIECES: &[&str] = &[
        "P<NLDDE<BRUIJN<<WILLEKE<LISELOTTE<<<<<<<<<<<",
        "SPECI20142NLD6503101F2403096999999990<<<<<84",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "a a a a a a a a a a a a a a a a a a a a a a a a a a a a",
        "         ",
        ".",
        "\u{4E00}",
        "1",
        "I<NLDSPECI20212999999990<<<<<<",
        "6503101F2403096NLD<<<<<<<<<<<8",
        "DE<BRUIJN<<WILLEKE<LISELOTTE<<",
    ];

    /// The block pass of `quiet_utf8` (a block of bytes at a time) leaves out exactly what
    /// leaving out stretches would: stretches of seven and of eight digits in every length of
    /// UTF-8 (ASCII, two, three and four bytes), with letters of two bytes between them, and
    /// of 27 and 28 MRZ characters, each begun by a certain break after noise of every length
    /// up to two blocks (so at every offset from where a block begins), and more noise after.
    #[test]
    fn the_block_pass_leaves_out_exactly_what_cannot_hold_a_finding() {
        let stretches = [
            "1234567",
            "12345678",
            "\u{0661}\u{0662}\u{0663}\u{0664}\u{0665}\u{0666}\u{0667}",
            "\u{0661}\u{0662}\u{0663}\u{0664}\u{0665}\u{0666}\u{0667}\u{0668}",
            "\u{FF11}\u{FF12}\u{FF13}\u{FF14}\u{FF15}\u{FF16}\u{FF17}",
            "\u{FF11}\u{FF12}\u{FF13}\u{FF14}\u{FF15}\u{FF16}\u{FF17}\u{FF18}",
            "\u{1D7CF}\u{1D7D0}\u{1D7D1}\u{1D7D2}\u{1D7D3}\u{1D7D4}\u{1D7D5}",
            "\u{1D7CF}\u{1D7D0}\u{1D7D1}\u{1D7D2}\u{1D7D3}\u{1D7D4}\u{1D7D5}\u{1D7D6}",
            "\u{0661}\u{0662}\u{0663}\u{00E9}\u{0664}\u{0665}\u{0666}\u{0667}\u{0668}",
            "12\u{00E9}34\u{00E9}56\u{00E9}78",
            "\u{FF11}\u{FF12}\u{00E9}\u{FF13}\u{FF14}\u{00E9}\u{FF15}\u{FF16}\u{00E9}\u{FF17}\u{FF18}",
            "\u{00E9}1\u{00E9}2\u{00E9}3\u{00E9}4\u{00E9}5\u{00E9}6\u{00E9}7\u{00E9}8\u{00E9}",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZA",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZAB",
            "\u{00E9}\u{00E9}ABCDEFGHIJ\u{00E9}KLMNOPQRST\u{00E9}UVWXYZ\u{FF21}B",
        ];
        for stretch in stretches {
            for before in 0..2 * QUIET_BLOCK {
                let mut data = noise(before as u64 + 1, 200 + before);
                data.extend(b"x\x80");
                data.extend(stretch.as_bytes());
                data.push(0xFF);
                data.extend(noise(7, 100));
                let reference = [utf8_reference(&data), vec![Unit::BREAK]].concat();
                assert_eq!(
                    utf8_fast(&data),
                    left_out(&reference),
                    "{stretch} after {before}"
                );
            }
        }
    }

    /// A sequence begun in one write and finished in the next is read whole, even when the
    /// room of a pass runs out inside it: no decoding or look ahead starts in the middle of a
    /// sequence. Here `E2 82` ends the first write and `80` begins the second: whole, they are
    /// `₀`, a digit that puts eight digits in a row that passes the eleven-test with a leading
    /// zero. Read from the `80` on as if it began anew, the digit would be lost; so at every
    /// room a pass may have, the answer is the refusal.
    #[test]
    fn no_look_ahead_starts_inside_a_sequence() {
        let writes: [&[u8]; 2] = [b"\xFF\xE2", b"\x82\x801234560\xFF\xFF\xFF\xFF"];
        let whole = writes.concat();
        assert!(check_units(&utf8_reference(&whole)).is_err());
        // Without the `E2 82` before it, the `80` gives no digit, and there is no BSN.
        assert!(check_units(&utf8_reference(b"\xFF\x801234560\xFF")).is_ok());
        for scan_at in (16..=48).chain([1000]) {
            let mut view = View::new(Encoding::Utf8, false, scan_at);
            let answer = writes
                .iter()
                .try_for_each(|w| view.write(w))
                .and_then(|()| view.finish());
            assert!(answer.is_err(), "scan_at {scan_at}");
        }
    }

    /// The bounds the block pass of `quiet_utf8` counts a character by, from its first two
    /// bytes: exact for two bytes, at least what it folds to for three, and for four a constant
    /// this test holds to every character outside the Basic Multilingual Plane.
    #[test]
    fn no_character_folds_to_more_marks_than_the_block_pass_counts() {
        let folds = Folds::get();
        let (mut exact, mut above) = (0, 0);
        for c in (0x80..=0x10_FFFF).filter_map(char::from_u32) {
            let mut utf8 = [0; 4];
            let bytes = c.encode_utf8(&mut utf8).as_bytes();
            let (marks, bound) = (folds.marks(c), folds.lead_marks(bytes[0], bytes[1]));
            assert!(
                marks.0 <= bound.0 && marks.1 <= bound.1,
                "{:X}",
                u32::from(c)
            );
            if bytes.len() == 2 {
                assert_eq!(marks, bound, "{:X}", u32::from(c));
            }
            if bytes.len() == 4 {
                assert_eq!(bound, MOST_OUTSIDE_PLANE);
            }
            if bytes.len() < 4 && marks == bound {
                exact += 1;
            } else if bytes.len() < 4 {
                above += 1;
            }
        }
        let most = (0x10000..=0x10_FFFF)
            .filter_map(char::from_u32)
            .fold((0, 0), |(d, m), c| {
                let (cd, cm) = folds.marks(c);
                (d.max(cd), m.max(cm))
            });
        assert_eq!(most, MOST_OUTSIDE_PLANE);
        // The bounds are tight for most characters of the plane: random bytes seldom add up to
        // a region the pass must decode.
        assert!(exact > 10 * above, "{exact} exact, {above} above");
    }

    /// Code units for the block pass of `quiet_utf16`: a character that folds to nothing the
    /// guard counts, digits and MRZ characters of ASCII and beyond, characters that fold to
    /// several, surrogates alone and a pair that folds to a digit.
    const QUIET_SAMPLES: &[&[u16]] = &[
        &[0x4E00],
        &[0x31],
        &[0x0661],
        &[0xFF11],
        &[0x41],
        &[0xC9],
        &[0x3C],
        &[0x2474],
        &[0x3392],
        &[0x20],
        &[0xD800],
        &[0xDBFF],
        &[0xDC00],
        &[0xDFFF],
        &[0xD835, 0xDFCE],
    ];

    /// Reading a block at once (`Quiet16::block`) gives every answer of `quiet_utf16` that
    /// reading its code units one by one gives, and the table it reads says what folding says.
    #[test]
    fn the_utf16_block_pass_answers_as_unit_by_unit() {
        let folds = Folds::get();
        for cp in 0..=0xFFFF_u16 {
            let want = match char::from_u32(u32::from(cp)) {
                None if cp < 0xDC00 => Folds::HIGH,
                None => Folds::LOW,
                Some(c) => match folds.marks(c) {
                    (d @ 0..=6, m @ 0..=6) => (d | m << 3) as u8,
                    _ => Folds::MANY_MARKS,
                },
            };
            assert_eq!(folds.quiet(cp), want, "U+{cp:04X}");
        }
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for round in 0..4_000 {
            let big_endian = round % 2 == 1;
            let mut bytes = Vec::new();
            for _ in 0..next(24) {
                let sample = QUIET_SAMPLES[next(QUIET_SAMPLES.len())];
                for _ in 0..next(40) {
                    for &cu in sample {
                        bytes.extend(if big_endian {
                            cu.to_be_bytes()
                        } else {
                            cu.to_le_bytes()
                        });
                    }
                }
                if next(4) == 0 {
                    let (seed, len) = (next(1 << 30) as u64, 2 * next(100));
                    bytes.extend(noise(seed, len));
                }
            }
            bytes.extend(vec![0x41; next(2)]);
            let from = (2 * next(80)).min(bytes.len() & !1);
            let mut q = Quiet16 {
                resume: from,
                digits: 0,
                mrz: 0,
                after_high: false,
            };
            let want = q
                .units(&bytes, from, bytes.len(), big_endian, folds)
                .unwrap_or((q.resume, bytes.len()));
            assert_eq!(
                quiet_utf16(&bytes, from, big_endian, folds),
                want,
                "round {round}: {bytes:02X?} from {from}"
            );
        }
    }

    /// The block pass of `quiet_utf8` reads every block as the byte-by-byte pass would: the
    /// same breaks, the last of them, and marks that bound what the characters after it fold
    /// to.
    #[test]
    fn the_block_pass_reads_breaks_and_marks_as_byte_by_byte() {
        use utf8_class::{NEVER, OF};
        let folds = Folds::get();
        let class = |b: u8| OF[usize::from(b)];
        // Random bytes, and bytes drawn from the classes that matter (ASCII marks, lead and
        // continuation bytes, bytes never in UTF-8).
        const PICKS: &[u8] = &[
            b'0', b'9', b'a', b'Z', b'<', b' ', 0x80, 0xBF, 0xC0, 0xC2, 0xC3, 0xD9, 0xDF, 0xE0,
            0xE2, 0xE3, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF,
        ];
        for round in 0..20_000u64 {
            let raw = noise(round + 1, QUIET_BLOCK + 1);
            let mut block = [0u8; QUIET_BLOCK + 1];
            for (b, &r) in block.iter_mut().zip(&raw) {
                *b = if round.is_multiple_of(2) {
                    r
                } else {
                    PICKS[usize::from(r) % PICKS.len()]
                };
            }
            let bits = BlockBits::of(&block);
            let breaks: Vec<usize> = (0..QUIET_BLOCK)
                .filter(|&j| class(block[j]) & NEVER != 0)
                .collect();
            assert_eq!(bits.last_break(), breaks.last().copied(), "{block:02X?}");
            for from in 0..=QUIET_BLOCK {
                let (mut digits, mut mrz) = (0, 0);
                for j in from..QUIET_BLOCK {
                    let b = block[j];
                    if b < 0x80 {
                        let (d, m) = folds.marks(char::from(b));
                        (digits, mrz) = (digits + d, mrz + m);
                    } else if let Some(need) = continuation_bytes(b)
                        && block[j + 1] & 0xC0 == 0x80
                    {
                        // What the character may fold to, whatever bytes follow its second.
                        let bound = folds.lead_marks(b, block[j + 1]);
                        let seq = block.get(j..=j + need);
                        if let Some(c) = seq.and_then(utf8_char) {
                            let (d, m) = folds.marks(c);
                            assert!(d <= bound.0 && m <= bound.1);
                        }
                        (digits, mrz) = (digits + bound.0, mrz + bound.1);
                    }
                }
                assert_eq!(
                    bits.marks_from(&block, from, folds),
                    (digits, mrz),
                    "{block:02X?} from {from}"
                );
            }
        }
    }

    /// Whether `view` refuses `bytes` written to it in pieces of `chunk` bytes.
    fn view_refuses(mut view: View, bytes: &[u8], chunk: usize) -> bool {
        bytes
            .chunks(chunk)
            .try_for_each(|c| view.write(c))
            .and_then(|()| view.finish())
            .is_err()
    }

    /// Pieces of text for `looking_ahead_leaves_out_exactly_what_cannot_hold_a_finding`: ASCII
    /// digits and MRZ characters in runs that add up to either side of the thresholds, and
    /// characters outside ASCII that fold to digits (Arabic-Indic, full-width, mathematical,
    /// a vulgar fraction) or to letters.
    const LOOK_AHEAD_TEXT: &[&str] = &[
        "1234567",
        "8",
        "0",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZA",
        "<<",
        "z",
        "- ",
        "\u{0661}",
        "\u{FF11}\u{FF12}",
        "\u{1D7CF}",
        "\u{00BD}",
        "\u{00E9}",
        "\u{FB00}",
        "\u{4E00}\u{AC00}",
        "",
    ];

    /// A case the property below found: U+FDFA is a ligature of Arabic words, a sign to the
    /// scanner and letters that look like Latin ones read as shown. Streamed in chunks of one
    /// byte the scanner answers as it does given everything at once; `check_binary` refuses
    /// more, as it reads the UTF-8 text as it shows too.
    #[test]
    fn a_scanner_in_chunks_answers_as_it_does_at_once() {
        let bytes = "bsn12345672222\u{FDFA}222".as_bytes();
        let at_once = scan_answer(bytes, SCAN_AT, bytes.len(), usize::MAX).is_err();
        assert_eq!(scan_refuses(bytes, 20, 1), at_once);
        assert_eq!(scan_answer(bytes, 20, 65, 64).is_err(), at_once);
        assert!(
            !at_once,
            "read as written, it holds eleven digits and a sign"
        );
        assert!(read_as_shown("bsn12345672222\u{FDFA}222").is_err());
        assert!(check_binary("f", bytes).is_err());
    }

    proptest::proptest! {
        /// Whatever the bytes and wherever they are cut, a scanner that reads what it holds
        /// often comes to the answer of one that is given everything in one write; what it
        /// refuses `check_binary` refuses (which reads UTF-8 a second time as it shows, so
        /// refuses more); and binary data that is text `check_text` refuses is refused.
        #[test]
        fn chunking_never_changes_the_answer(
            pieces in proptest::collection::vec(0usize..PIECES.len(), 0..120),
            encoding in 0u8..3,
            seed in proptest::num::u64::ANY,
            scan_at in 20usize..400,
            chunk in 1usize..200,
        ) {
            let text: String = pieces.iter().filter_map(|&p| PIECES.get(p).copied()).collect();
            let bytes = match encoding {
                0 => text.as_bytes().to_vec(),
                1 => le(&text),
                _ => {
                    // Binary noise between the pieces.
                    let mut out = Vec::new();
                    for (i, &p) in pieces.iter().enumerate() {
                        out.extend(PIECES.get(p).map_or(&[][..], |s| s.as_bytes()));
                        out.extend(noise(seed ^ i as u64, (seed as usize >> (i % 60)) % 4));
                    }
                    out
                }
            };
            let at_once = scan_answer(&bytes, SCAN_AT, bytes.len(), usize::MAX).is_err();
            proptest::prop_assert_eq!(scan_refuses(&bytes, scan_at, chunk), at_once);
            // On two threads, the same.
            proptest::prop_assert_eq!(
                scan_answer(&bytes, scan_at, chunk + 64, 64).is_err(),
                at_once
            );
            let whole = check_binary("f", &bytes).is_err();
            proptest::prop_assert!(whole || !at_once);
            if encoding == 0 && check_text("f", &text).is_err() {
                proptest::prop_assert!(whole);
            }
        }

        /// Read as UTF-8 in one pass with the short stretches between breaks left out, and
        /// in passes of any length, data gets the answer of its units read byte by byte and
        /// all at once: pieces of numbers, labels, markup and MRZ lines with breaks (bytes that
        /// are not UTF-8, cut sequences) and noise between them.
        #[test]
        fn leaving_out_short_stretches_never_changes_the_answer(
            pieces in proptest::collection::vec((0usize..STRETCHES.len(), 0usize..6), 0..10),
            seed in proptest::num::u64::ANY,
            scan_at in 20usize..4000,
            chunk in 1usize..3000,
        ) {
            let breaks: [&[u8]; 6] = [b"", b"\xFF", b"\x80", b"\xE0\xA0", b"\xC3", b"\xF0\x9F\x98"];
            let mut bytes = Vec::new();
            for (i, &(p, b)) in pieces.iter().enumerate() {
                bytes.extend(STRETCHES.get(p).map_or(&[][..], |t| t.as_bytes()));
                bytes.extend(breaks.get(b).copied().unwrap_or_default());
                if seed >> (i % 64) & 1 == 1 {
                    bytes.extend(noise(seed ^ i as u64, i % 5));
                }
            }
            let want = check_units(&utf8_reference(&bytes)).is_err();
            // In one pass, the short stretches left out.
            proptest::prop_assert_eq!(check_units(&utf8_fast(&bytes)).is_err(), want);
            let view = View::new(Encoding::Utf8, false, scan_at);
            proptest::prop_assert_eq!(view_refuses(view, &bytes, chunk), want);
        }

        /// Read as UTF-16 (either order, from an even or an odd byte) with the stretches
        /// that cannot hold a finding left out, in passes of any length, data gets the answer
        /// of its code units read one at a time and all at once: the same pieces with lone
        /// surrogates and noise between them.
        #[test]
        fn leaving_out_utf16_stretches_never_changes_the_answer(
            pieces in proptest::collection::vec((0usize..STRETCHES.len(), 0usize..5), 0..10),
            seed in proptest::num::u64::ANY,
            order in 0u8..4,
            scan_at in 20usize..4000,
            chunk in 1usize..3000,
        ) {
            let big_endian = order & 1 == 1;
            let odd = order & 2 == 2;
            let encode = |t: &str| if big_endian { be(t) } else { le(t) };
            // A lone high and a lone low surrogate, two highs, a pair (a character).
            let breaks: [&[u16]; 5] = [&[], &[0xD800], &[0xDC00], &[0xDBFF, 0xD800], &[0xD83D, 0xDE00]];
            let mut bytes = if odd { vec![0x41] } else { Vec::new() };
            for (i, &(p, b)) in pieces.iter().enumerate() {
                bytes.extend(encode(STRETCHES.get(p).copied().unwrap_or_default()));
                for &cu in breaks.get(b).copied().unwrap_or_default() {
                    bytes.extend(if big_endian { cu.to_be_bytes() } else { cu.to_le_bytes() });
                }
                if seed >> (i % 64) & 1 == 1 {
                    bytes.extend(noise(seed ^ i as u64, 2 * (i % 5)));
                }
            }
            let from = usize::from(odd);
            let want = check_units(&utf16_reference(&bytes[from..], big_endian)).is_err();
            let view = View::new(Encoding::Utf16 { big_endian }, odd, scan_at);
            proptest::prop_assert_eq!(view_refuses(view, &bytes, chunk), want);
        }

        /// The look ahead of the decoders (`quiet_utf8`, `quiet_utf16`) leaves out only what
        /// leaving out stretches would: in one pass, the units are those of the reading that
        /// keeps every break, less the stretches that cannot hold a finding, exactly. The
        /// pieces put the counts on either side of eight digits and 28 MRZ characters, with
        /// characters outside ASCII that fold to digits and letters, and breaks of every kind
        /// between them: certain ones (a byte never in UTF-8, a lone low surrogate), ones that
        /// depend on what comes before, and bytes that are no break (a Windows-1252 separator,
        /// alone or after a lead byte it does not continue).
        #[test]
        fn looking_ahead_leaves_out_exactly_what_cannot_hold_a_finding(
            pieces in proptest::collection::vec((0usize..LOOK_AHEAD_TEXT.len(), 0usize..11), 0..40),
            order in 0u8..2,
        ) {
            let big_endian = order == 1;
            let utf8_breaks: [&[u8]; 11] = [
                b"", b"\x80", b"\xFF", b"\xC0\x80", b"\xE1\x41", b"\xC3", b"\xF0\x9F\x98", b"\x41\xBF",
                b"\xA0", b"\xE2\x96", b"\x41\xB7\x96",
            ];
            let utf16_breaks: [&[u16]; 11] = [
                &[], &[0xDC00], &[0xD800], &[0xDBFF, 0xD800], &[0xD835, 0xDFCF], &[0xDFFF], &[0xD800, 0x41], &[0x41, 0xDC00],
                &[0xA0], &[0xD800, 0xA0], &[0xDC00, 0xB7],
            ];
            let (mut utf8, mut utf16) = (Vec::new(), Vec::new());
            for &(p, b) in &pieces {
                let text = LOOK_AHEAD_TEXT.get(p).copied().unwrap_or_default();
                utf8.extend(text.as_bytes());
                utf8.extend(utf8_breaks.get(b).copied().unwrap_or_default());
                utf16.extend(text.encode_utf16());
                utf16.extend(utf16_breaks.get(b).copied().unwrap_or_default());
            }
            let reference = [utf8_reference(&utf8), vec![Unit::BREAK]].concat();
            proptest::prop_assert_eq!(utf8_fast(&utf8), left_out(&reference));
            // A lone low surrogate at the end ends the last stretch as a break of the call.
            utf16.push(0xDC00);
            let bytes: Vec<u8> = utf16
                .iter()
                .flat_map(|cu| if big_endian { cu.to_be_bytes() } else { cu.to_le_bytes() })
                .collect();
            let reference = utf16_reference(&bytes, big_endian);
            proptest::prop_assert_eq!(utf16_fast(&bytes, big_endian), left_out(&reference));
        }

        /// The block pass of `scan_mrz` says what reading every unit says.
        #[test]
        fn the_mrz_block_pass_agrees_with_the_whole_pass(
            runs in proptest::collection::vec((0u8..13, 0usize..40), 0..60),
            pieces in proptest::collection::vec(0usize..MRZ_PIECES.len(), 0..12),
            pad in 0usize..64,
        ) {
            // The pieces after `pad` units that end a run, at every offset of a block.
            let mut u = vec![Unit(b'.'); pad];
            for &p in &pieces {
                u.extend(MRZ_PIECES.get(p).map_or(Vec::new(), |t| units(t).to_vec()));
            }
            u.extend(unit_runs(&runs));
            let mut run = Zeroizing::new(Vec::new());
            let fast = scan_mrz(&u, &mut run);
            proptest::prop_assert_eq!(fast, scan_mrz_whole(&u, &mut run));
        }

        /// The block search for the start of a number finds the first digit or `&`.
        #[test]
        fn the_number_search_finds_the_first_digit_or_reference(
            runs in proptest::collection::vec((0u8..13, 0usize..70), 0..40),
            from in 0usize..3000,
        ) {
            let u = unit_runs(&runs);
            let naive = u
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, x)| x.is_digit() || x.0 == b'&')
                .map_or(u.len(), |(i, _)| i);
            proptest::prop_assert_eq!(number_start(&u, from), naive);
        }

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
