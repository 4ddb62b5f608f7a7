//! The checks behind the fuzz targets in `fuzz/`: one function per parser of untrusted bytes.
//! libFuzzer runs them for minutes (`fuzz/`, README "Reliability tests"); the test suite runs
//! them over a few thousand random inputs each, so CI exercises the same code briefly.
//!
//! Each function panics when the property it checks does not hold.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "fuzz checks: a broken property must panic so the fuzzer records the input"
)]

use crate::{
    crypto::{
        self, Algorithm, Header, SubjectKey,
        stream::{FileKey, SALT_LEN, SegmentHeader},
    },
    domain::{
        FieldName, Need, RecordId, SubjectId, check_free_text, parse_category, parse_purpose,
        parse_role,
    },
    policy::{DEFAULT_SCHEMA, Engine},
    vault::guard,
};

/// The ciphertext envelope: the parsers never panic, garbage never opens, a genuine ciphertext
/// of the input opens to it and one flipped bit does not.
pub fn envelope(data: &[u8]) {
    let _ = Header::parse(data);
    let subject = SubjectKey::from_bytes(&[7; 32]);
    let key = subject.fields();
    assert!(crypto::open(&key, b"aad", data).is_err());
    let sealed = crypto::seal(&key, Algorithm::Aes256Gcm, 1, b"aad", data).unwrap();
    assert_eq!(
        crypto::open(&key, b"aad", &sealed).unwrap().as_slice(),
        data
    );
    let mut bad = sealed.clone();
    let i = data.len() % bad.len();
    bad[i] ^= 1;
    assert!(crypto::open(&key, b"aad", &bad).is_err());
    // Under the same key, another use does not open it.
    assert!(crypto::open(&subject.evidence_names(), b"aad", &sealed).is_err());
}

/// Evidence segments: the header parser and the open never panic; garbage never opens; a
/// genuine segment opens only at its own position and end flag.
pub fn segment(data: &[u8]) {
    let _ = SegmentHeader::parse(data);
    for alg in [Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305] {
        let key = FileKey::derive(
            &SubjectKey::from_bytes(&[3; 32]),
            alg,
            1,
            &[5; SALT_LEN],
            b"file",
        )
        .unwrap();
        assert!(key.open_segment(0, true, data).is_err());
        let sealed = key.seal_segment(2, false, data).unwrap();
        assert_eq!(
            key.open_segment(2, false, &sealed).unwrap().as_slice(),
            data
        );
        assert!(key.open_segment(2, true, &sealed).is_err());
        assert!(key.open_segment(3, false, &sealed).is_err());
    }
}

/// The bearer token as it arrives in metadata: never a panic, never an empty or overlong token.
pub fn token(data: &[u8]) {
    let Ok(value) = tonic::metadata::MetadataValue::try_from(data) else {
        return;
    };
    let mut map = tonic::metadata::MetadataMap::new();
    map.insert("authorization", value);
    if let Ok(token) = crate::api::bearer_token(&map) {
        let t = token.expose_secret();
        assert!(!t.is_empty() && t.len() <= crate::api::MAX_TOKEN_BYTES);
    }
}

/// An employee's provider token and a client certificate, as they arrive: the parsers never
/// panic, and no input authenticates (the provider's public key is known, its private key is
/// not); a refusal never repeats the token.
pub fn identity(data: &[u8]) {
    use std::sync::OnceLock;
    static IDENTITY: OnceLock<crate::identity::Identity> = OnceLock::new();
    let _ = crate::identity::PeerCertificate::parse(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let identity = IDENTITY.get_or_init(crate::identity::Identity::for_fuzzing);
    match identity.verify(text, "x-kluis-user") {
        Ok(_) => panic!("a token without a signature by the provider authenticated"),
        Err(e) => {
            let message = e.to_string();
            assert!(text.len() < 8 || !message.contains(text), "{message}");
        }
    }
}

/// The configuration file: parsing and validation never panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = toml::from_str::<crate::config::RawConfig>(text) {
        let _ = raw.validate(false);
    }
}

/// Policy text from an operator: parsed and validated against the schema without a panic.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Engine::from_sources(DEFAULT_SCHEMA, text);
    let _ = Engine::from_files(DEFAULT_SCHEMA, &[("fuzz.cedar".into(), text.into())]);
}

/// Request fields: every parser and the BSN/MRZ guard never panic, and a refusal never repeats
/// the value.
pub fn inputs(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        let _ = guard::check_binary("f", data);
        let _ = guard::check_binary_labelled("f", data);
        return;
    };
    // A subject has one spelling: what parses is ASCII in upper case, parses to itself, and
    // every other case of it is the same subject.
    if let Ok(id) = SubjectId::parse("f", s) {
        assert!(id.as_str().is_ascii() && id.as_str() == id.as_str().to_ascii_uppercase());
        assert_eq!(
            SubjectId::parse_stored(id.as_str()).ok().as_ref(),
            Some(&id)
        );
        assert_eq!(
            SubjectId::parse("f", &s.to_ascii_lowercase()).ok().as_ref(),
            Some(&id)
        );
    }
    if let Err(e) = check_free_text("f", s, "text", 1024, Need::Optional) {
        assert!(s.len() < 9 || !e.to_string().contains(s));
    }
    let _ = RecordId::parse("f", s);
    let _ = FieldName::parse("f", s);
    let _ = parse_purpose("f", s);
    let _ = parse_category("f", s);
    let _ = parse_role("f", s);
    if let Err(e) = guard::check_text("f", s) {
        assert!(s.len() < 9 || !e.to_string().contains(s));
    }
    // A value of something named for a BSN: refused never with the value in the message.
    if let Err(e) = guard::check_labelled_text("f", s) {
        assert!(s.len() < 9 || !e.to_string().contains(s));
    }
    let _ = guard::names_a_bsn(s);
    let _ = guard::check_binary_labelled("f", data);
}

/// A share as a custodian gives it: parsing never panics, a refusal never repeats the value,
/// and no input passes a store's record of its shares (its digests are of shares no input
/// knows); a genuine share with one character changed fails its checksum.
pub fn share(data: &[u8]) {
    use crate::seal::shares::{self, Share, ShareSetMeta};
    use std::sync::OnceLock;
    static RECORD: OnceLock<(ShareSetMeta, String)> = OnceLock::new();
    let (record, genuine) = RECORD.get_or_init(|| {
        let set = shares::split(&crate::crypto::RootKey::generate(), 2, 3).unwrap();
        (
            ShareSetMeta::of(&set).unwrap(),
            set[0].to_text().to_string(),
        )
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Share::parse("fuzz", text) {
        Ok(share) => assert!(record.check(&share).is_err(), "an unknown share passed"),
        Err(e) => {
            let message = e.to_string();
            assert!(
                text.len() < 8 || !message.contains(text.trim()),
                "{message}"
            );
        }
    }
    if let Some(&b) = data.first() {
        let at = usize::from(b) % genuine.len();
        let mut changed = genuine.clone().into_bytes();
        let c = changed[at];
        changed[at] = if c == b'0' { b'1' } else { b'0' };
        if let Ok(changed) = String::from_utf8(changed)
            && changed != *genuine
        {
            assert!(
                Share::parse("fuzz", &changed).is_err(),
                "a changed share parsed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short variant of the fuzzing: random inputs and a few seeds for every target.
    #[test]
    fn every_fuzz_check_holds_on_random_and_seed_inputs() {
        use rand::{Rng, SeedableRng};
        let seeds: &[&[u8]] = &[
            b"",
            b"\x01\x01\x00\x00\x00\x01",
            b"Bearer abc",
            b"listen = \"0.0.0.0:1\"\n[limits]\nmax_fields = 99999999999999999999",
            b"permit(principal, action, resource);",
            b"@id(\"x\") forbid(principal, action, resource) when { resource.category == \"medical\" };",
            b"111 222 333",
            b"P<NLDDE<BRUIJN<<WILLEKE<LISELOTTE<<<<<<<<<<<",
            b"eyJhbGciOiJFUzI1NiIsImtpZCI6Im9uZSJ9.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwiYXVkIjoia2x1aXMiLCJzdWIiOiJ4IiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjF9.c2ln",
            b"eyJhbGciOiJub25lIn0.e30.",
            b"kluis-share-v1:0011223344556677:1:3:2:00:00000000",
            b"<td data-label=\"B&amp;#83;N\">1234 5672</td><!-- --!><style>x</style><bsn/>",
            "BSN 2024-03-12T09:30:00.123456789Z \u{2113}23456782 <input name=bsn value='l2'>"
                .as_bytes(),
            b"<!--<!--<!---><script><svg></template>&amp;amp;#49;&#x6c&Bopf;burger-\nservicenr",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x006b_6c75_6973);
        let targets: [fn(&[u8]); 8] = [
            envelope, segment, token, config, policy, inputs, identity, share,
        ];
        for target in targets {
            for seed in seeds {
                target(seed);
            }
            for _ in 0..500 {
                let len = rng.gen_range(0..200);
                let mut data: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
                if rng.gen_bool(0.5) {
                    // Mostly printable, so the text parsers get past UTF-8.
                    data.iter_mut().for_each(|b| *b = b' ' + *b % 95);
                }
                if rng.gen_bool(0.3) {
                    // The pieces the guard's readings of markup, clocks and labels look for.
                    const PIECES: &[&str] = &[
                        "<",
                        ">",
                        "</",
                        "/>",
                        "<!--",
                        "-->",
                        "--!>",
                        "<?",
                        "&",
                        "&#",
                        "&#x",
                        ";",
                        "&amp;",
                        "&nbsp",
                        "bsn",
                        "BSN",
                        "b.s.n",
                        "burger",
                        "service",
                        "nummer",
                        "value=",
                        "\"",
                        "data-label=",
                        "<style>",
                        "</style>",
                        "<input ",
                        "-\n",
                        "T",
                        "Z",
                        "+01",
                        ":",
                        ".",
                        ",",
                        "9u",
                        "0",
                        "1",
                        "2",
                        "l",
                        "l23456782",
                        "1234 5672",
                        " ",
                        "en",
                        "van",
                        "\u{2113}",
                        "\u{A731}",
                        "?",
                        "|",
                    ];
                    data = (0..rng.gen_range(0..40))
                        .flat_map(|_| PIECES[rng.gen_range(0..PIECES.len())].bytes())
                        .collect();
                }
                target(&data);
            }
        }
    }
}
