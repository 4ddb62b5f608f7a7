//! The input guard's reading rate on evidence-like data (`kluis::vault::guard::Scanner`, which
//! every evidence upload streams through), against AES-256-GCM sealing the same bytes in the same
//! run: the upload's aim is 600 MB/s, so the guard must read several times that.
//!
//! Three kinds of data, 32 MiB each, fed in 64 KiB chunks as an upload arrives: random bytes (a
//! photo, a film or sound: compressed data), Dutch letter text in ASCII (a scanned letter's text
//! layer), and the same text in UTF-16LE (a Word document's text). `cargo bench --bench guard`;
//! `-- --mib N` for another size, `-- --only random` (or `ascii`, `utf-16`, `fields`) for one
//! kind. After them, field values of 4 KiB through `check_text`: ASCII prose, the same with
//! accents, and as HTML (both read a second time as they show), against the ASCII rate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs,
    reason = "benchmark code"
)]

use std::time::{Duration, Instant};

use aes_gcm::{
    Aes256Gcm,
    aead::{AeadInOut, KeyInit},
};
use rand::{RngCore, SeedableRng};

use kluis::vault::guard::{Scanner, check_text};

const CHUNK: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .map_or(32, |v| v.parse().expect("--mib N"));
    // `cargo test --benches` runs this as a smoke test: a small size.
    let mib = if args.iter().any(|a| a == "--bench") {
        mib
    } else {
        1
    };
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|k| k.to_lowercase());
    let size = mib * 1024 * 1024;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);

    let mut random = vec![0u8; size];
    rng.fill_bytes(&mut random);
    let prose = "Geachte heer De Vries, naar aanleiding van de melding van 12 maart over \
                 geluidsoverlast aan de Kastanjelaan 12, 3512 AB Utrecht, laten wij u weten dat \
                 de buurtbemiddelaar op 3-4-2026 om 14:30 langskomt. Dossier 2026/0412, kamer \
                 1.04, telefoon 030 - 123 45 67. Met vriendelijke groet, Wooncorporatie.\n";
    let text: Vec<u8> = prose.bytes().cycle().take(size).collect();
    let utf16: Vec<u8> = prose
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .cycle()
        .take(size)
        .collect();

    let cipher = Aes256Gcm::new(&[7u8; 32].into());
    println!("guard, {mib} MiB per kind, {CHUNK}-byte chunks (2 cores shared)");
    println!(" data          guard MB/s   AES-256-GCM MB/s   guard × AES");
    for (name, data) in [
        ("random bytes", &random),
        ("ASCII text", &text),
        ("UTF-16 text", &utf16),
    ] {
        if only
            .as_deref()
            .is_some_and(|k| !name.to_lowercase().starts_with(k))
        {
            continue;
        }
        // The baseline, then the guard, then both again: the better of each.
        let mut aes = Duration::MAX;
        let mut guard = Duration::MAX;
        for _ in 0..2 {
            aes = aes.min(seal_all(&cipher, data));
            guard = guard.min(scan_all(data));
        }
        let rate = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
        println!(
            " {name:<13} {:>10.0}   {:>16.0}   {:>11.2}",
            rate(guard),
            rate(aes),
            aes.as_secs_f64() / guard.as_secs_f64()
        );
    }

    // Field values of 4 KiB through `check_text`: plain ASCII is read once; text with accents
    // or markup is read a second time as it shows.
    let accented = prose
        .replace("Geachte heer", "Geachte meneer Öztürk, één")
        .replace("laten wij", "laten wíj");
    let html = format!(
        "<p>{}</p>",
        prose.replace(", ", ",&nbsp;<b>").replace(". ", "</b>. ")
    );
    let field = |p: &str| -> Vec<String> {
        let value: String = p.chars().cycle().take(4096).collect();
        vec![value; size / 4096]
    };
    println!(" field values   check_text MB/s   × ASCII field values");
    let mut ascii_rate = None;
    for (name, values) in [
        ("ASCII", field(prose)),
        ("accented", field(&accented)),
        ("HTML", field(&html)),
    ] {
        if only.as_deref().is_some_and(|k| k != "fields") {
            continue;
        }
        let mut best = Duration::MAX;
        for _ in 0..2 {
            let start = Instant::now();
            for v in &values {
                check_text("value", v).unwrap();
            }
            best = best.min(start.elapsed());
        }
        let bytes: usize = values.iter().map(String::len).sum();
        let rate = bytes as f64 / best.as_secs_f64() / 1e6;
        let base = *ascii_rate.get_or_insert(rate);
        println!(" {name:<13} {rate:>16.0}   {:>20.2}", rate / base);
    }
}

fn scan_all(data: &[u8]) -> Duration {
    let start = Instant::now();
    let mut scanner = Scanner::new();
    for chunk in data.chunks(CHUNK) {
        scanner.write("file", chunk).unwrap();
    }
    scanner.finish("file").unwrap();
    start.elapsed()
}

fn seal_all(cipher: &Aes256Gcm, data: &[u8]) -> Duration {
    let mut buf = Vec::with_capacity(CHUNK + 16);
    let start = Instant::now();
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        buf.clear();
        buf.extend_from_slice(chunk);
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        cipher
            .encrypt_in_place(&nonce.into(), b"", &mut buf)
            .unwrap();
    }
    start.elapsed()
}
