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

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aes_gcm::{
    Aes256Gcm,
    aead::{AeadInPlace, KeyInit},
};
use bytes::Bytes;
use kluis::{
    crypto::{
        Algorithm,
        stream::{FileKey, SEGMENT_SIZE, new_salt},
    },
    pb::{
        self,
        bench::{
            Chunk, DownloadRequest, Size,
            stream_client::StreamClient,
            stream_server::{Stream, StreamServer},
        },
        vault_client::VaultClient,
    },
};
use tonic::{Request, Response, Status, Streaming, transport::Channel};

const MIB: u64 = 1024 * 1024;
const CHUNK: usize = 256 * 1024;

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

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn request<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn context() -> Option<pb::AccessContext> {
    Some(pb::AccessContext {
        purpose: "nuisance".into(),
        case_ref: "N-BENCH".into(),
        justification: "benchmark".into(),
        channel: "app".into(),
        break_glass: false,
    })
}

/// Uploads `size` bytes taken round-robin from `block`; returns the evidence id.
async fn upload(
    client: &mut VaultClient<Channel>,
    token: &str,
    block: &Bytes,
    size: u64,
) -> String {
    let start = pb::EvidenceChunk {
        part: Some(pb::evidence_chunk::Part::Start(pb::EvidenceStart {
            context: context(),
            subject_id: "REL-BENCH".into(),
            field: format!("clip-{}", rand::random::<u32>()),
            category: "nuisance-evidence".into(),
            media_type: "video/mp4".into(),
            file_name: "doorbell.mp4".into(),
            ..Default::default()
        })),
    };
    let block = block.clone();
    let chunks = size.div_ceil(CHUNK as u64);
    let data = (0..chunks).map(move |i| {
        let n = (size - i * CHUNK as u64).min(CHUNK as u64) as usize;
        pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(block.slice(..n))),
        }
    });
    let messages = std::iter::once(start).chain(data);
    client
        .put_evidence(request(token, tokio_stream::iter(messages)))
        .await
        .unwrap()
        .into_inner()
        .evidence_id
}

/// Downloads a whole file; returns its size.
async fn download(client: &mut VaultClient<Channel>, token: &str, id: &str) -> u64 {
    let mut stream = client
        .get_evidence(request(
            token,
            pb::GetEvidenceRequest {
                context: context(),
                evidence_id: id.into(),
                range: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = stream.message().await.unwrap() {
        if let Some(pb::evidence_data::Part::Data(d)) = m.part {
            n += d.len() as u64;
        }
    }
    n
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// The crypto floor: bare AES-256-GCM over 64 KiB buffers, and the same through `FileKey`.
fn crypto_floor(total: u64) -> (f64, f64, f64) {
    let key = [7u8; 32];
    let segments = total / SEGMENT_SIZE as u64;
    let mut buf = vec![0x5au8; SEGMENT_SIZE];
    let cipher = Aes256Gcm::new((&key).into());
    let nonce = aes_gcm::Nonce::from([1u8; 12]);
    let t = Instant::now();
    for _ in 0..segments {
        let tag = cipher
            .encrypt_in_place_detached(&nonce, b"", &mut buf)
            .unwrap();
        std::hint::black_box(tag);
    }
    let bare = mb_per_s(total, t.elapsed());
    let file = FileKey::derive(&key, Algorithm::Aes256Gcm, 1, &new_salt(), b"bench").unwrap();
    let plain = vec![0x5au8; SEGMENT_SIZE];
    let t = Instant::now();
    let mut sealed = Vec::new();
    for i in 0..segments {
        sealed = file.seal_segment(i as u32, false, &plain).unwrap();
    }
    let seal = mb_per_s(total, t.elapsed());
    let t = Instant::now();
    for _ in 0..segments {
        std::hint::black_box(
            file.open_segment((segments - 1) as u32, false, &sealed)
                .unwrap(),
        );
    }
    let open = mb_per_s(total, t.elapsed());
    (bare, seal, open)
}

/// The bytes of a kluis download message: one segment's plaintext.
const DOWNLOAD_CHUNK: u32 = SEGMENT_SIZE as u32;

/// A bare streaming service: no store, no crypto, no policy.
struct Bare;

#[tonic::async_trait]
impl Stream for Bare {
    async fn upload(&self, request: Request<Streaming<Chunk>>) -> Result<Response<Size>, Status> {
        let mut stream = request.into_inner();
        let mut size = 0u64;
        while let Some(chunk) = stream.message().await? {
            size += chunk.data.len() as u64;
        }
        Ok(Response::new(Size { size }))
    }

    type DownloadStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Chunk, Status>> + Send>>;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let DownloadRequest { size, chunk } = request.into_inner();
        let chunk = u64::from(chunk.max(1));
        let block = Bytes::from(vec![0x5au8; chunk as usize]);
        let chunks = (0..size.div_ceil(chunk)).map(move |i| {
            let n = (size - i * chunk).min(chunk) as usize;
            Ok(Chunk {
                data: block.slice(..n),
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
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

/// Streams `size` bytes up and then down through the bare service; returns MB/s each way.
async fn bare_floor(addr: &str, block: &Bytes, size: u64) -> (f64, f64) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(Some(1024 * 1024))
        .initial_connection_window_size(Some(4 * 1024 * 1024))
        .tcp_nodelay(true)
        .buffer_size(64)
        .connect()
        .await
        .unwrap();
    let mut client = StreamClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    let up = |size: u64| {
        let block = block.clone();
        let chunks = (0..size.div_ceil(CHUNK as u64)).map(move |i| {
            let n = (size - i * CHUNK as u64).min(CHUNK as u64) as usize;
            Chunk {
                data: block.slice(..n),
            }
        });
        tokio_stream::iter(chunks)
    };
    let down = |mut client: StreamClient<Channel>, size: u64| async move {
        let mut stream = client
            .download(DownloadRequest {
                size,
                chunk: DOWNLOAD_CHUNK,
            })
            .await
            .unwrap()
            .into_inner();
        let mut n = 0u64;
        while let Some(c) = stream.message().await.unwrap() {
            n += c.data.len() as u64;
        }
        n
    };
    // Warm up as the kluis run does.
    client.upload(up(4 * MIB)).await.unwrap();
    down(client.clone(), 4 * MIB).await;
    let t = Instant::now();
    let got = client.upload(up(size)).await.unwrap().into_inner().size;
    let upload = mb_per_s(size, t.elapsed());
    assert_eq!(got, size);
    let t = Instant::now();
    assert_eq!(down(client.clone(), size).await, size);
    (upload, mb_per_s(size, t.elapsed()))
}

fn main() {
    if std::env::args().any(|a| a == "--stream-server") {
        stream_server();
        return;
    }
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
    let block = Bytes::from(
        (0..CHUNK)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>(),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.1))
            .unwrap()
            .initial_stream_window_size(Some(1024 * 1024))
            .initial_connection_window_size(Some(4 * 1024 * 1024))
            .tcp_nodelay(true)
            .buffer_size(64)
            .connect()
            .await
            .unwrap();
        let mut client = VaultClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
        // Warm up: connections, the subject key, the first pages of the database.
        let id = upload(&mut client, &token, &block, 4 * MIB).await;
        download(&mut client, &token, &id).await;

        // kluis and the bare service in turn, twice: drift of the shared machine hits both.
        let (mut up, mut down, mut bare_up, mut bare_down) = (0.0, 0.0, 0.0, 0.0);
        for _round in 0..2 {
            let t = Instant::now();
            let id = upload(&mut client, &token, &block, size).await;
            up += mb_per_s(size, t.elapsed()) / 2.0;
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
