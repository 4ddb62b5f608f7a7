//! Evidence throughput and memory, in one run on one machine:
//!
//! 1. the crypto floor: the same AEAD (AES-256-GCM) sealing and opening 64 KiB segments in
//!    process, bare and through `crypto::stream`;
//! 2. upload and download of a 256 MiB file over loopback gRPC to a `kluis serve --dev` (release
//!    build, SQLite store in a temporary directory), as MB/s and as a ratio to the floor;
//! 3. the gRPC floor: the same file streamed unencrypted, in the same messages, to and from a
//!    bare tonic service (`kluis.bench.v1.Stream`) in its own process (this benchmark binary
//!    started again with `--stream-server`) with kluis's transport settings;
//! 4. the server's peak memory while it takes in and hands out a 1 GiB file, above its idle
//!    resident size (Linux: `VmHWM` after resetting it through `/proc/<pid>/clear_refs`).
//!
//! ```text
//! cargo bench --bench evidence
//! KLUIS_BENCH_EVIDENCE_MIB=64 KLUIS_BENCH_MEMORY_MIB=256 cargo bench --bench evidence  # smaller
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_methods,
    clippy::indexing_slicing,
    missing_docs,
    reason = "a benchmark binary: panics on setup failure, prints its figures, reads its size from the environment"
)]

#[path = "shared/evidence.rs"]
mod evidence_io;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use evidence_io::{
    Bare, CHUNK, MIB, bare_floor, crypto_floor, download, mb_per_s, upload, upload_in,
};
use kluis::pb::{bench::stream_server::StreamServer, vault_client::VaultClient};

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_mib(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn serve(dir: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kluis"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("KLUIS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("kluis exited before its banner")
            .unwrap();
        if let Some(rest) = line.strip_prefix("kluis dev server on http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server(child, addr)
}

/// CPU time `pid` has used so far (user and system, all its threads).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    // Linux counts them in clock ticks of 1/100 s (USER_HZ).
    Duration::from_millis(ticks * 10)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Serves `Bare` on a loopback port with kluis's transport settings; prints the address.
fn stream_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(256))
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(1024 * 1024))
            .initial_connection_window_size(Some(4 * 1024 * 1024))
            .add_service(StreamServer::new(Bare).max_decoding_message_size(4 * 1024 * 1024))
            .serve_with_incoming(kluis::server::incoming(listener))
            .await
            .unwrap();
    });
}

/// Starts this binary again as the bare stream server.
fn spawn_stream_server() -> Server {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--stream-server")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Server(child, line.trim().to_owned())
}

fn main() {
    if std::env::args().any(|a| a == "--stream-server") {
        stream_server();
        return;
    }
    const TINY_CHUNK: usize = 16;
    const TINY_MIB: u64 = 4;
    let size = env_mib("KLUIS_BENCH_EVIDENCE_MIB", 256) * MIB;
    let memory_size = env_mib("KLUIS_BENCH_MEMORY_MIB", 1024) * MIB;
    let (bare_seal, seal, open) = crypto_floor(size);

    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let bare = spawn_stream_server();
    let server = serve(dir.path());
    let pid = server.0.id();
    let tokens: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("dev-tokens.json")).unwrap())
            .unwrap();
    let token = tokens["nuisance-officer"].as_str().unwrap().to_owned();
    let block = evidence_io::block();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = evidence_io::connect(&server.1).await;
        let mut client = VaultClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
        // Warm up: connections, the subject key, the first pages of the database.
        let id = upload(&mut client, &token, &block, 4 * MIB).await;
        download(&mut client, &token, &id).await;

        // kluis and the bare service in turn, twice: drift of the shared machine hits both.
        let (mut up, mut down, mut bare_up, mut bare_down) = (0.0, 0.0, 0.0, 0.0);
        let (mut up_cpu, mut tiny_up, mut tiny_cpu) = (Duration::ZERO, 0.0, Duration::ZERO);
        for _round in 0..2 {
            let (t, cpu) = (Instant::now(), cpu_time(pid));
            let id = upload(&mut client, &token, &block, size).await;
            up += mb_per_s(size, t.elapsed()) / 2.0;
            up_cpu += cpu_time(pid) - cpu;
            // A client that sends the file a few bytes at a time.
            let (t, cpu) = (Instant::now(), cpu_time(pid));
            upload_in(&mut client, &token, &block, TINY_MIB * MIB, TINY_CHUNK).await;
            tiny_up += mb_per_s(TINY_MIB * MIB, t.elapsed()) / 2.0;
            tiny_cpu += cpu_time(pid) - cpu;
            let t = Instant::now();
            assert_eq!(download(&mut client, &token, &id).await, size);
            down += mb_per_s(size, t.elapsed()) / 2.0;
            let (u, d) = bare_floor(&bare.1, &block, size).await;
            bare_up += u / 2.0;
            bare_down += d / 2.0;
        }

        // Memory: the resident size at rest, then the peak while a large file goes in and out.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = status_kib(pid, "VmRSS:");
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let id = upload(&mut client, &token, &block, memory_size).await;
        assert_eq!(download(&mut client, &token, &id).await, memory_size);
        let peak = status_kib(pid, "VmHWM:");

        println!(
            "evidence, {} MiB file, AES-256-GCM, 64 KiB segments",
            size / MIB
        );
        println!("  crypto floor, bare AEAD seal     {bare_seal:>8.0} MB/s");
        println!("  crypto::stream seal / open       {seal:>8.0} / {open:.0} MB/s");
        println!("  gRPC floor, unencrypted up       {bare_up:>8.0} MB/s");
        println!("  gRPC floor, unencrypted down     {bare_down:>8.0} MB/s");
        println!(
            "  upload over gRPC                 {up:>8.0} MB/s   {:.2} x crypto floor   {:.2} x gRPC floor",
            up / bare_seal,
            up / bare_up
        );
        println!(
            "  download over gRPC               {down:>8.0} MB/s   {:.2} x crypto floor   {:.2} x gRPC floor",
            down / bare_seal,
            down / bare_down
        );
        let per_mib = |cpu: Duration, mib: u64| cpu.as_secs_f64() * 1e3 / (2 * mib) as f64;
        let (tiny_ms, whole_ms) = (
            per_mib(tiny_cpu, TINY_MIB),
            per_mib(up_cpu, size / MIB),
        );
        println!(
            "  upload, {TINY_CHUNK}-byte messages         {tiny_up:>8.1} MB/s   server CPU {tiny_ms:.0} ms per MiB, {:.1} x that of {} KiB messages ({whole_ms:.1} ms)",
            tiny_ms / whole_ms,
            CHUNK / 1024
        );
        if reset {
            println!(
                "  server memory, {} MiB up and down: idle {} MiB, peak {} MiB, +{} MiB",
                memory_size / MIB,
                idle / 1024,
                peak / 1024,
                peak.saturating_sub(idle) / 1024
            );
        } else {
            println!(
                "  server memory: /proc/<pid>/clear_refs not writable here; peak not measured"
            );
        }
    });
}
