//! Evidence streams for the benchmarks (`evidence.rs`, `load.rs`): upload and download through
//! kluis, the crypto floor (the same AEAD in process), and the gRPC floor (the same bytes,
//! unencrypted, through a bare tonic service).

use std::time::{Duration, Instant};

use aes_gcm::{
    Aes256Gcm,
    aead::{AeadInOut, KeyInit},
};
use bytes::Bytes;
use kluis::{
    crypto::{
        Algorithm,
        stream::{FileKey, SEGMENT_SIZE, new_salt},
    },
    pb::{
        self,
        bench::{Chunk, DownloadRequest, Size, stream_client::StreamClient, stream_server::Stream},
        vault_client::VaultClient,
    },
};
use tonic::{Request, Response, Status, Streaming, transport::Channel};

pub const MIB: u64 = 1024 * 1024;
pub const CHUNK: usize = 256 * 1024;

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

/// The number of the next clip's field name.
static NEXT_CLIP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Uploads `size` bytes taken round-robin from `block`; returns the evidence id.
pub async fn upload(
    client: &mut VaultClient<Channel>,
    token: &str,
    block: &Bytes,
    size: u64,
) -> String {
    upload_in(client, token, block, size, CHUNK).await
}

/// Uploads `size` bytes taken from `block` in messages of `chunk` bytes; returns the evidence
/// id.
pub async fn upload_in(
    client: &mut VaultClient<Channel>,
    token: &str,
    block: &Bytes,
    size: u64,
    chunk: usize,
) -> String {
    assert!(chunk <= block.len(), "a chunk is cut from one block");
    let start = pb::EvidenceChunk {
        part: Some(pb::evidence_chunk::Part::Start(pb::EvidenceStart {
            context: context(),
            subject_id: "REL-BENCH".into(),
            // A short counter: a random number of nine digits would pass the eleven-test one
            // time in eleven and be refused as a BSN.
            field: format!(
                "clip-{}",
                NEXT_CLIP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            category: "nuisance-evidence".into(),
            media_type: "video/mp4".into(),
            file_name: "doorbell.mp4".into(),
            ..Default::default()
        })),
    };
    let block = block.clone();
    let chunks = size.div_ceil(chunk as u64);
    let data = (0..chunks).map(move |i| {
        let n = (size - i * chunk as u64).min(chunk as u64) as usize;
        // Each message from another place in the block: bytes that do not repeat every chunk.
        let at = (i as usize * chunk) % (block.len() - n + 1);
        pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(block.slice(at..at + n))),
        }
    });
    let end = pb::EvidenceChunk {
        part: Some(pb::evidence_chunk::Part::End(pb::EvidenceEnd {
            size,
            sha256: String::new(),
        })),
    };
    let messages = std::iter::once(start)
        .chain(data)
        .chain(std::iter::once(end));
    client
        .put_evidence(request(token, tokio_stream::iter(messages)))
        .await
        .unwrap()
        .into_inner()
        .evidence_id
}

/// Downloads a whole file; returns its size.
pub async fn download(client: &mut VaultClient<Channel>, token: &str, id: &str) -> u64 {
    let mut stream = client
        .get_evidence(request(
            token,
            pb::GetEvidenceRequest {
                context: context(),
                evidence_id: id.into(),
                range: None,
                export: false,
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

pub fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// The crypto floor: bare AES-256-GCM over 64 KiB buffers, and the same through `FileKey`.
pub fn crypto_floor(total: u64) -> (f64, f64, f64) {
    let key = [7u8; 32];
    let segments = total / SEGMENT_SIZE as u64;
    let mut buf = vec![0x5au8; SEGMENT_SIZE];
    let cipher = Aes256Gcm::new((&key).into());
    let nonce = aes_gcm::Nonce::from([1u8; 12]);
    let t = Instant::now();
    for _ in 0..segments {
        let tag = cipher
            .encrypt_inout_detached(&nonce, b"", buf.as_mut_slice().into())
            .unwrap();
        std::hint::black_box(tag);
    }
    let bare = mb_per_s(total, t.elapsed());
    let subject_key = kluis::crypto::SubjectKey::from_bytes(&key);
    let file =
        FileKey::derive(&subject_key, Algorithm::Aes256Gcm, 1, &new_salt(), b"bench").unwrap();
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
pub struct Bare;

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

/// A channel for streaming files, with the windows kluis's server uses.
pub async fn connect(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(Some(1024 * 1024))
        .initial_connection_window_size(Some(4 * 1024 * 1024))
        .tcp_nodelay(true)
        .buffer_size(64)
        .connect()
        .await
        .unwrap()
}

/// The bytes of every chunk an upload sends.
pub fn block() -> Bytes {
    Bytes::from(
        (0..CHUNK)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Streams `size` bytes up and then down through the bare service; returns MB/s each way.
pub async fn bare_floor(addr: &str, block: &Bytes, size: u64) -> (f64, f64) {
    let channel = connect(addr).await;
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
