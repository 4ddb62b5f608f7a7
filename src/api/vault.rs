//! The `kluis.v1.Vault` service: thin handlers that parse, call the core and convert back.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status, Streaming};

use super::{
    Backend, convert,
    judge::Judge,
    run, run_then,
    stream::{Long, ServerStream, Streams},
};
use crate::{
    domain::{FieldName, InputError, RecordId, SubjectId},
    identity::Identity,
    pb::{self, vault_server::Vault as VaultRpc},
    vault::{
        FieldInfo, ListPage, RecordMeta, Vault, VaultError,
        evidence::{Download, Upload, UploadEnd},
        places::CallerKey,
    },
};

/// The gRPC face of a `Vault`.
#[derive(Clone, Debug)]
pub struct VaultApi {
    vault: Backend,
    streams: Arc<Streams>,
}

impl VaultApi {
    /// Serves `vault` to callers with kluis tokens.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self::with_identity(vault, Arc::new(Identity::none()))
    }

    /// Serves `vault` to the callers `identity` establishes.
    pub fn with_identity(vault: Arc<Vault>, identity: Arc<Identity>) -> Self {
        Self {
            vault: Backend { vault, identity },
            streams: Arc::default(),
        }
    }

    /// Sends server streams under `streams` (shared with `AdminApi`: one cap on exports).
    #[must_use]
    pub fn with_streams(mut self, streams: Arc<Streams>) -> Self {
        self.streams = streams;
        self
    }
}

/// Largest `data` chunk of an upload.
pub const MAX_EVIDENCE_CHUNK: usize = 1024 * 1024;
/// How long an upload may wait for the client's next message.
const EVIDENCE_IDLE: Duration = Duration::from_secs(30);

/// Data messages of an upload shorter than this are joined with the data messages that have
/// already come behind them, up to this many bytes, into one write (see [`gather`]).
const GATHER_BYTES: usize = 64 * 1024;
/// The most data messages [`gather`] joins into one write.
const GATHER_MESSAGES: usize = 1024;

/// A message of an upload as the stream answers it: the message, the stream's end (`None`), or
/// the status of one that could not be read.
type Received = Result<Option<pb::EvidenceChunk>, Status>;

/// Joins `first`, a data message shorter than [`GATHER_BYTES`], with the short data messages
/// that have already come behind it (at most [`GATHER_MESSAGES`] and about [`GATHER_BYTES`] in
/// all), so that an upload sent in tiny messages costs one write, one hand-off to a blocking
/// thread and one pass of the guard per gathering, not per message: 1-byte messages cost the
/// server about 45 µs each when written one by one. It stops at the first message that has not
/// come yet, so that a client that waits has what it sent written (and a finding in it answered)
/// while it waits. A message that has come and is not joined (`start`, `end`, a larger chunk,
/// the stream's end or an error) is handed back, to be taken once the joined bytes are written.
async fn gather<S>(stream: &mut S, first: bytes::Bytes) -> (bytes::Bytes, Option<Received>)
where
    S: tokio_stream::Stream<Item = Result<pb::EvidenceChunk, Status>> + Unpin,
{
    if first.len() >= GATHER_BYTES {
        return (first, None);
    }
    let mut joined: Option<bytes::BytesMut> = None;
    let mut messages = 1;
    let held = loop {
        let len = joined.as_ref().map_or(first.len(), |j| j.len());
        if len >= GATHER_BYTES || messages >= GATHER_MESSAGES {
            break None;
        }
        // Polled once: what has not come yet is not waited for.
        let ready = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *stream).poll_next(cx) {
                std::task::Poll::Ready(item) => Some(item),
                std::task::Poll::Pending => None,
            })
        })
        .await;
        match ready {
            None => break None,
            Some(Some(Ok(pb::EvidenceChunk {
                part: Some(pb::evidence_chunk::Part::Data(more)),
            }))) if more.len() < GATHER_BYTES => {
                joined
                    .get_or_insert_with(|| {
                        let mut j = bytes::BytesMut::with_capacity(2 * GATHER_BYTES);
                        j.extend_from_slice(&first);
                        j
                    })
                    .extend_from_slice(&more);
                messages += 1;
            }
            Some(Some(Ok(message))) => break Some(Ok(Some(message))),
            Some(Some(Err(status))) => break Some(Err(status)),
            Some(None) => break Some(Ok(None)),
        }
    };
    (joined.map_or(first, bytes::BytesMut::freeze), held)
}

/// How long an upload waits after `end` for its client to close the request stream: a client
/// closes it with `end`, and one that does not holds its place among the uploads meanwhile.
const AFTER_END: Duration = Duration::from_secs(5);

/// The outcome of a chunk written on a blocking thread: the upload back with its judge, or the
/// call's status. On an error the upload was dropped on that thread, which discards it.
fn written(
    done: Result<Result<(Upload, Judge), VaultError>, crate::vault::places::CallFailed>,
) -> Result<(Upload, Judge), Status> {
    done.map_err(|e| {
        tracing::error!(error = %e, "request task failed");
        Status::internal("internal error")
    })?
    .map_err(super::status::to_status)
}

/// Where in an upload a message that could not be read came.
#[derive(Clone, Copy)]
enum Expected {
    Start,
    Chunk,
    AfterEnd,
}

/// The status of a message of an upload that could not be read: one larger than any message
/// may be (tonic's own `OUT_OF_RANGE`, which speaks of a decoded length) is named for what was
/// `expected` there, with the limit.
fn unreadable(status: Status, expected: Expected) -> Status {
    if status.code() != tonic::Code::OutOfRange {
        return status;
    }
    let most = crate::server::MAX_MESSAGE_BYTES;
    Status::invalid_argument(match expected {
        Expected::Start => format!(
            "`start`: the first message was larger than the {most} bytes any message may hold; \
             nothing was stored"
        ),
        Expected::Chunk => format!(
            "`data`: a chunk holds at most {MAX_EVIDENCE_CHUNK} bytes, and this message was \
             larger than the {most} bytes any message may hold; nothing was stored. Send the \
             file in chunks of at most {MAX_EVIDENCE_CHUNK} bytes"
        ),
        Expected::AfterEnd => format!(
            "`end`: a message came after `end`, which must be the last (and was larger than the \
             {most} bytes any message may hold); nothing was stored. Send the file again, `end` \
             last"
        ),
    })
}

/// An upload in progress in a handler: when the handler ends without finishing it (an error, a
/// timeout, the client gone), the upload is dropped, and so discarded, on a blocking thread,
/// under a place among the calls running (`discard`): thousands of uploads abandoned at once
/// wait their turn instead of taking a thread each.
struct UploadGuard {
    upload: Option<Upload>,
    vault: Arc<Vault>,
    key: CallerKey,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            discard(Arc::clone(&self.vault), self.key, upload);
        }
    }
}

/// Drops (and so discards) `upload` on a blocking thread once the caller `key` has a place among
/// the calls running; at once when the node is stopping.
fn discard(vault: Arc<Vault>, key: CallerKey, upload: Upload) {
    tokio::spawn(async move {
        match super::take_place(&vault, key).await {
            Ok(place) => drop(place.run(move || drop(upload))),
            // The node is stopping: no call thread waits for it.
            Err(_) => drop(tokio::task::spawn_blocking(move || drop(upload))),
        }
    });
}

/// Discards a refused upload before its refusal is answered: the chunk being written lands
/// first, then the upload is dropped on a call thread and awaited. "Nothing was stored" holds
/// when the client reads it, and a client that sends the file again at once, into the same
/// field, finds nothing of the refused one in its way. When the node is stopping, the guard
/// discards it as it would for a client that went.
async fn discard_before_answering(
    vault: &Arc<Vault>,
    key: CallerKey,
    upload: &mut UploadGuard,
    writing: &mut WriteGuard,
) {
    if let Some(task) = writing.task.as_mut() {
        let done = task.await;
        writing.task = None;
        // On an error the upload was dropped, and so discarded, on its thread.
        if let Ok(Ok((u, _))) = done {
            upload.upload = Some(u);
        }
    }
    let Some(u) = upload.upload.take() else {
        return;
    };
    match super::take_place(vault, key).await {
        Ok(place) => {
            if place.run(move || drop(u)).await.is_err() {
                tracing::error!("discarding a refused upload failed unexpectedly");
            }
        }
        Err(_) => upload.upload = Some(u),
    }
}

/// A chunk being written on a blocking thread. Dropped before the write is awaited (the handler
/// ended early), it hands the upload, once written, to a blocking thread to be discarded.
struct WriteGuard {
    task: Option<crate::vault::places::CallTask<Result<(Upload, Judge), VaultError>>>,
    vault: Arc<Vault>,
    key: CallerKey,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            let (vault, key) = (Arc::clone(&self.vault), self.key);
            tokio::spawn(async move {
                if let Ok(Ok((upload, _))) = task.await {
                    discard(vault, key, upload);
                }
            });
        }
    }
}

/// Runs `f` on a blocking thread, under a place among `vault`'s calls running
/// (`super::take_place`), and maps its error to a status.
async fn blocking<T: Send + 'static>(
    vault: &Vault,
    key: crate::vault::places::CallerKey,
    f: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
) -> Result<T, Status> {
    let place = super::take_place(vault, key).await?;
    place
        .run(f)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "request task failed");
            Status::internal("internal error")
        })?
        .map_err(super::status::to_status)
}

/// Segments read and opened per blocking call of a download.
const DOWNLOAD_BATCH: usize = 16;

/// `read_batch` on a blocking thread, under a place among the calls running of the caller
/// `key` (`super::take_place`): downloads nobody reads take no thread each. `None` when it
/// failed or the node is stopping.
fn next_batch(
    vault: Arc<Vault>,
    key: crate::vault::places::CallerKey,
    download: Download,
) -> tokio::task::JoinHandle<Option<DownloadBatch>> {
    tokio::spawn(async move {
        let place = super::take_place(&vault, key).await.ok()?;
        place.run(move || read_batch(download)).await.ok()
    })
}

/// A download's next messages, and the download when it has more.
type DownloadBatch = (Option<Download>, Vec<Result<pb::EvidenceData, Status>>);

/// The next `DOWNLOAD_BATCH` messages of a download, and the download when it has more.
fn read_batch(mut download: Download) -> DownloadBatch {
    let mut batch = Vec::with_capacity(DOWNLOAD_BATCH);
    for _ in 0..DOWNLOAD_BATCH {
        match download.next_chunk() {
            // The opened piece is moved into the message, not copied: the message's bytes are
            // not wiped either way (THREAT_MODEL.md, "Plaintext copies that remain").
            Ok(Some(piece)) => batch.push(Ok(pb::EvidenceData {
                part: Some(pb::evidence_data::Part::Data(piece.into_bytes())),
            })),
            Ok(None) => return (None, batch),
            Err(e) => {
                batch.push(Err(super::status::to_status(e)));
                return (None, batch);
            }
        }
    }
    (Some(download), batch)
}

#[tonic::async_trait]
impl VaultRpc for VaultApi {
    type ExportSubjectStream = ServerStream<pb::ExportLine>;
    type GetEvidenceStream = ServerStream<pb::EvidenceData>;

    async fn put_evidence(
        &self,
        request: Request<Streaming<pb::EvidenceChunk>>,
    ) -> Result<Response<pb::PutEvidenceResponse>, Status> {
        let creds = super::credentials(&request)?;
        let key = super::caller_key(&creds);
        let mut judge = Judge::new(&self.vault.vault, &self.vault.identity, creds);
        let creds = Arc::clone(judge.credentials());
        let identity = Arc::clone(&self.vault.identity);
        let mut stream = request.into_inner();
        let first = tokio::time::timeout(EVIDENCE_IDLE, stream.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no `start` message within 30 s"))?
            .map_err(|s| unreadable(s, Expected::Start))?;
        let Some(pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Start(start)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "`start`: the first message of PutEvidence must be `start` (context, subject or \
                 record, field, category, media type, file name)",
            ));
        };
        let vault = Arc::clone(&self.vault.vault);
        let streams = Arc::clone(&self.streams);
        let (upload, _open, ctx) = blocking(&self.vault.vault, key, move || {
            let principal = identity.authenticate(&vault, &creds)?;
            // One of the caller's places among the uploads open, held while this one is.
            let open = streams
                .admit(Long::Upload, &principal.id)
                .map_err(|s| VaultError::Exhausted(s.message().to_owned()))?;
            let ctx = convert::context(start.context.clone(), vault.channels())?;
            let start = convert::evidence_start(start)?;
            vault
                .begin_evidence(&principal, &ctx, start)
                .map(|upload| (upload, open, ctx))
        })
        .await?;
        // The caller is judged again while the upload runs, when a judgement is due, and
        // always before it is stored: a revoked token, or a policy or facts that no longer let
        // it write the file, end the upload with nothing stored.
        let ctx = Arc::new(ctx);
        // Each chunk is guarded, hashed and sealed on a blocking thread while the client's next
        // message is read; the message after that is read only when that is done
        // (back-pressure: at most two chunks are held, and the upload's batches: `Upload`
        // stores a full one on a thread of its own while the next is sealed), and no thread
        // waits for a client.
        let mut upload = UploadGuard {
            upload: Some(upload),
            vault: Arc::clone(&self.vault.vault),
            key,
        };
        let mut writing = WriteGuard {
            task: None,
            vault: Arc::clone(&self.vault.vault),
            key,
        };
        // A message that came while short data messages were joined, taken next.
        let mut held: Option<Received> = None;
        let outcome: Result<Response<pb::PutEvidenceResponse>, Status> = async {
            loop {
                let message = match held.take() {
                Some(message) => message,
                None => {
                    let next = tokio::time::timeout(EVIDENCE_IDLE, stream.message());
                    tokio::pin!(next);
                    // The chunk before is read while the next message comes: a refusal is
                    // answered as soon as it is made, not with the client's next message.
                    let mut received = None;
                    if let Some(task) = writing.task.as_mut() {
                        tokio::select! {
                            biased;
                            done = task => {
                                writing.task = None;
                                (upload.upload, judge) = written(done).map(|(u, j)| (Some(u), j))?;
                            }
                            message = &mut next => received = Some(message),
                        }
                    }
                    match received {
                        Some(message) => message,
                        None => next.await,
                    }
                    .map_err(|_| {
                        Status::deadline_exceeded(
                            "no data for 30 s; the upload was discarded, send it again",
                        )
                    })?
                }
            }
            .map_err(|s| unreadable(s, Expected::Chunk))?;
                if let Some(task) = writing.task.take() {
                    (upload.upload, judge) = written(task.await).map(|(u, j)| (Some(u), j))?;
                }
                match message {
                    // A call that ends without `end` is not an upload finished: a client that
                    // stopped, or cancelled the call (HTTP/2 ends such a request body as if it were
                    // complete), leaves nothing stored.
                    None => {
                        return Err(Status::invalid_argument(
                            "`end`: the upload ended without its `end` message; nothing was \
                         stored. Send the file again, and `end` with its size last",
                        ));
                    }
                    Some(pb::EvidenceChunk {
                        part: Some(pb::evidence_chunk::Part::End(end)),
                    }) => {
                        let end = UploadEnd::parse(end.size, &end.sha256)
                            .map_err(|e| super::status::to_status(VaultError::from(e)))?;
                        // `end` is the last message: the file is stored once the client has
                        // closed its side of the call with nothing after it (a message after
                        // `end` would be data the receipt does not cover).
                        let after = tokio::time::timeout(AFTER_END, stream.message())
                            .await
                            .map_err(|_| {
                                Status::deadline_exceeded(
                                    "`end`: the call was not closed within 5 s of `end`; nothing \
                                 was stored. Close the request stream after `end`",
                                )
                            })?
                            .map_err(|s| unreadable(s, Expected::AfterEnd))?;
                        if after.is_some() {
                            return Err(Status::invalid_argument(
                                "`end`: a message came after `end`, which must be the last; \
                             nothing was stored. Send the file again, `end` last",
                            ));
                        }
                        let Some(mut u) = upload.upload.take() else {
                            return Err(Status::internal("internal error"));
                        };
                        let ctx = Arc::clone(&ctx);
                        let receipt = blocking(&self.vault.vault, key, move || {
                            judge
                                .judge(|_, principal| u.keep(principal, &ctx))
                                .map_err(|e| u.ended(e))?;
                            u.finish(&end)
                        })
                        .await?;
                        return Ok(Response::new(pb::PutEvidenceResponse {
                            evidence_id: receipt.evidence_id,
                            record_id: receipt.record_id,
                            size: receipt.size,
                            sha256: receipt.sha256,
                            expires_at: receipt.expires_at.map(convert::timestamp),
                        }));
                    }
                    Some(pb::EvidenceChunk {
                        part: Some(pb::evidence_chunk::Part::Data(data)),
                    }) => {
                        if data.len() > MAX_EVIDENCE_CHUNK {
                            return Err(Status::invalid_argument(format!(
                                "`data`: a chunk holds at most {MAX_EVIDENCE_CHUNK} bytes"
                            )));
                        }
                        let (data, next) = gather(&mut stream, data).await;
                        held = next;
                        // Each chunk is sealed and stored under a place among the calls running,
                        // as every call's blocking work is: a flood of uploads waits its turn.
                        let place = super::take_place(&self.vault.vault, key).await?;
                        let Some(mut u) = upload.upload.take() else {
                            return Err(Status::internal("internal error"));
                        };
                        let (mut judged, ctx) = (judge.clone(), Arc::clone(&ctx));
                        writing.task = Some(place.run(move || {
                            judged
                                .keep_up(|_, principal| u.keep(principal, &ctx))
                                .map_err(|e| u.ended(e))?;
                            u.write(&data)?;
                            Ok((u, judged))
                        }));
                    }
                    Some(pb::EvidenceChunk {
                        part: Some(pb::evidence_chunk::Part::Start(_)),
                    }) => {
                        return Err(Status::invalid_argument(
                            "`start`: only the first message may be `start`; send `data` after it",
                        ));
                    }
                    Some(pb::EvidenceChunk { part: None }) => {
                        return Err(Status::invalid_argument(
                            "`part`: a message of PutEvidence holds `start`, `data` or `end`; this \
                         one holds none. Nothing was stored",
                        ));
                    }
                }
            }
        }
        .await;
        if outcome.is_err() {
            discard_before_answering(&self.vault.vault, key, &mut upload, &mut writing).await;
        }
        outcome
    }

    async fn get_evidence(
        &self,
        request: Request<pb::GetEvidenceRequest>,
    ) -> Result<Response<Self::GetEvidenceStream>, Status> {
        // Everything that can refuse the read happens before the stream starts, so a denied
        // caller gets a status and no byte.
        let creds = super::credentials(&request)?;
        let key = super::caller_key(&creds);
        let judge = Judge::new(&self.vault.vault, &self.vault.identity, creds);
        let creds = Arc::clone(judge.credentials());
        let identity = Arc::clone(&self.vault.identity);
        let req = request.into_inner();
        let vault = Arc::clone(&self.vault.vault);
        let streams = Arc::clone(&self.streams);
        let (info, download, permit, keep, principal) =
            blocking(&self.vault.vault, key, move || {
                let principal = identity.authenticate(&vault, &creds)?;
                // One of the caller's places among the downloads being sent, held until this one
                // ends: each holds up to two batches of opened segments while its client reads.
                let permit = streams
                    .admit(Long::Download, &principal.id)
                    .map_err(|s| VaultError::Exhausted(s.message().to_owned()))?;
                let ctx = convert::context(req.context, vault.channels())?;
                let id = convert::evidence_id("evidence_id", &req.evidence_id)?;
                let range = req.range.map(|r| (r.offset, r.length));
                let action = if req.export {
                    crate::policy::Action::Export
                } else {
                    crate::policy::Action::Read
                };
                // What the download is judged on again while it is sent.
                let keep = (ctx.clone(), id.as_str().to_owned(), action);
                vault
                    .open_evidence_as(&principal, &ctx, &id, range, action)
                    .map(|(info, download)| (info, download, permit, keep, principal))
            })
            .await?;
        let entry = if keep.2 == crate::policy::Action::Export {
            "evidence-export"
        } else {
            "evidence-read"
        };
        let mut judge = judge.for_call(principal, entry, None, Some(keep.1.clone()));
        let (tx, stream) = self.streams.channel(4);
        let vault = Arc::clone(&self.vault.vault);
        tokio::spawn(async move {
            let _permit = permit;
            let first = pb::EvidenceData {
                part: Some(pb::evidence_data::Part::Info(pb::EvidenceInfo {
                    evidence_id: info.evidence_id,
                    record_id: info.record_id,
                    field: info.name,
                    category: info.category.as_str().into(),
                    media_type: info.media_type,
                    file_name: info.file_name.as_str().into(),
                    size: info.size,
                    sha256: info.sha256,
                    offset: info.offset,
                    length: info.length,
                })),
            };
            // A full channel waits here until the client reads (back-pressure), but not for
            // ever: a client that stops reading loses the stream, and no task waits for it.
            let send = |message| tx.send(message);
            if !send(Ok(first)).await {
                return;
            }
            // Segments are read and opened a batch at a time on a blocking thread, the next batch
            // while the current one is sent: at most two batches (2 MiB) are held.
            let mut next = Some(next_batch(Arc::clone(&vault), key, download));
            while let Some(task) = next.take() {
                let Ok(Some((download, batch))) = task.await else {
                    // Never end as if the file were complete.
                    tracing::error!("evidence read task failed");
                    send(Err(Status::internal(
                        "internal error; the download is incomplete",
                    )))
                    .await;
                    return;
                };
                next = download.map(|d| next_batch(Arc::clone(&vault), key, d));
                for message in batch {
                    // A revoked or expired token, an erasure, or a policy or facts (a mandate
                    // revoked, a restriction) that no longer let the caller read the file, end
                    // the download before its next piece goes out, once the client has made
                    // room for it.
                    let Some(slot) = tx.reserve().await else {
                        return;
                    };
                    if judge.due() {
                        let (ctx, id, action) = keep.clone();
                        let judged = judge
                            .judge_on_place(key, move |vault, principal| {
                                vault.keep_evidence(principal, &ctx, &id, action)
                            })
                            .await;
                        if let Err(status) = judged {
                            slot.send(Err(status));
                            return;
                        }
                    }
                    if !slot.send(message) {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn export_subject(
        &self,
        request: Request<pb::ExportSubjectRequest>,
    ) -> Result<Response<Self::ExportSubjectStream>, Status> {
        let creds = super::credentials(&request)?;
        let key = super::caller_key(&creds);
        let judge = Judge::new(&self.vault.vault, &self.vault.identity, creds);
        let creds = Arc::clone(judge.credentials());
        let identity = Arc::clone(&self.vault.identity);
        let req = request.into_inner();
        let vault = Arc::clone(&self.vault.vault);
        let (principal, ctx, subject, portable) = blocking(&self.vault.vault, key, move || {
            let principal = identity.authenticate(&vault, &creds)?;
            let ctx = convert::context(req.context, vault.channels())?;
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            Ok((principal, ctx, subject, req.portable))
        })
        .await?;
        let permit = self.streams.admit(Long::Export, &principal.id)?;
        let mut judge = judge.for_call(
            principal.clone(),
            "export",
            Some(subject.as_str().to_owned()),
            None,
        );
        // A line is a whole record (up to twice `limits.max_record_bytes` as JSON): two wait
        // for the client at most.
        let (tx, stream) = self.streams.channel(2);
        let vault = Arc::clone(&self.vault.vault);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // A revoked or expired token, or a policy or facts (a mandate revoked, a
            // restriction) that no longer let the caller export what the next line holds, end
            // the export before that line goes out. False then, and when the client went away
            // or stopped reading: stop.
            let emit = |line: serde_json::Value, holds: &[crate::policy::FieldResource]| {
                let message = Ok(pb::ExportLine {
                    json: line.to_string(),
                });
                judge.send_blocking(&tx, message, |vault, principal| {
                    vault.keep_export(principal, &ctx, &subject, holds)
                })
            };
            let result = if portable {
                vault.export_portable(&principal, &ctx, &subject, emit)
            } else {
                vault.export_subject(&principal, &ctx, &subject, emit)
            };
            if let Err(e) = result {
                tx.send_blocking(Err(super::status::to_status(vault.after_failure(e))));
            }
        });
        Ok(Response::new(stream))
    }

    async fn put_record(
        &self,
        request: Request<pb::PutRecordRequest>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        run_then(&self.vault, request, |vault, principal, req, reply| {
            let ctx = convert::context(req.context, vault.channels())?;
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let fields = convert::new_fields(req.fields, vault.limits())?;
            let labels = convert::labels(req.labels, vault.limits())?;
            // The answer comes once the write and its entry are committed, from the thread
            // that committed them.
            vault.put_record_then(principal, &ctx, &subject, fields, labels, move |put| {
                reply.send(put);
            })
        })
        .await
        .map(|(id, expires_at)| {
            Response::new(pb::PutRecordResponse {
                record_id: id.as_str().into(),
                expires_at: expires_at.map(convert::timestamp),
            })
        })
    }

    async fn record_disclosure(
        &self,
        request: Request<pb::RecordDisclosureRequest>,
    ) -> Result<Response<pb::Disclosure>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context, vault.channels())?;
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let id = RecordId::parse("record_id", &req.record_id)?;
            if req.fields.len() > vault.limits().max_fields {
                return Err(InputError::new(
                    "fields",
                    format!("at most {} field names", vault.limits().max_fields),
                )
                .into());
            }
            let fields = req
                .fields
                .iter()
                .enumerate()
                .map(|(i, f)| FieldName::parse(&format!("fields[{i}]"), f))
                .collect::<Result<Vec<_>, _>>()?;
            let input = crate::domain::DisclosureInput::parse(
                &req.recipient,
                &req.recipient_kind,
                &req.legal_basis,
                &req.case_ref,
            )?;
            let row = vault.record_disclosure(principal, &ctx, &subject, &id, &fields, input)?;
            Ok(convert::disclosure(row))
        })
        .await
        .map(Response::new)
    }

    async fn get_record(
        &self,
        request: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::GetRecordResponse>, Status> {
        run_then(&self.vault, request, |vault, principal, req, reply| {
            let ctx = convert::context(req.context, vault.channels())?;
            let id = RecordId::parse("record_id", &req.record_id)?;
            if req.fields.len() > vault.limits().max_fields {
                return Err(InputError::new(
                    "fields",
                    format!("at most {} field names", vault.limits().max_fields),
                )
                .into());
            }
            let wanted = req
                .fields
                .iter()
                .enumerate()
                .map(|(i, f)| FieldName::parse(&format!("fields[{i}]"), f))
                .collect::<Result<Vec<_>, _>>()?;
            // The answer comes once the read's entry is committed, from the thread that
            // committed it.
            vault.get_record_then(principal, &ctx, &id, &wanted, move |view| {
                reply.send(view);
            })
        })
        .await
        .map(|view| {
            let hold = view.hold();
            let meta = view.meta;
            let answer = pb::GetRecordResponse {
                record_id: meta.id,
                subject_id: meta.subject,
                purpose: meta.purpose.as_str().into(),
                fields: view
                    .fields
                    .into_iter()
                    .map(|f| pb::FieldValue {
                        name: f.name,
                        category: f.category.as_str().into(),
                        value: Some(convert::value(f.value)),
                        masked: f.masked,
                    })
                    .collect(),
                withheld: view
                    .withheld
                    .into_iter()
                    .map(|w| pb::WithheldField {
                        name: w.name,
                        reason: w.reason,
                    })
                    .collect(),
                labels: meta.labels.into_iter().collect(),
                created_at: Some(convert::timestamp(meta.created_at)),
                updated_at: Some(convert::timestamp(meta.updated_at)),
                expires_at: meta.expires_at.map(convert::timestamp),
            };
            // The answer's place goes with the response until it is handed on
            // (`server::metered`).
            let mut response = Response::new(answer);
            if let Some(hold) = hold {
                response.extensions_mut().insert(hold);
            }
            response
        })
    }

    async fn update_record(
        &self,
        request: Request<pb::UpdateRecordRequest>,
    ) -> Result<Response<pb::UpdateRecordResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context, vault.channels())?;
            let id = RecordId::parse("record_id", &req.record_id)?;
            let fields = convert::new_fields(req.fields, vault.limits())?;
            let updated_at = vault.update_record(principal, &ctx, &id, fields)?;
            Ok(pb::UpdateRecordResponse {
                record_id: id.as_str().into(),
                updated_at: Some(convert::timestamp(updated_at)),
            })
        })
        .await
        .map(Response::new)
    }

    async fn delete_record(
        &self,
        request: Request<pb::DeleteRecordRequest>,
    ) -> Result<Response<pb::DeleteRecordResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context, vault.channels())?;
            let id = RecordId::parse("record_id", &req.record_id)?;
            vault.delete_record(principal, &ctx, &id)?;
            Ok(pb::DeleteRecordResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn close_record(
        &self,
        request: Request<pb::CloseRecordRequest>,
    ) -> Result<Response<pb::CloseRecordResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context, vault.channels())?;
            let id = RecordId::parse("record_id", &req.record_id)?;
            let expires_at = vault.close_record(principal, &ctx, &id)?;
            Ok(pb::CloseRecordResponse {
                expires_at: expires_at.map(convert::timestamp),
            })
        })
        .await
        .map(Response::new)
    }

    async fn list_records(
        &self,
        request: Request<pb::ListRecordsRequest>,
    ) -> Result<Response<pb::ListRecordsResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context, vault.channels())?;
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let page = ListPage::parse(req.page_size, &req.page_token)?;
            let (records, next) = vault.list_records(principal, &ctx, &subject, &page)?;
            Ok(pb::ListRecordsResponse {
                records: records.into_iter().map(record_info).collect(),
                next_page_token: next.map(|c| c.token()).unwrap_or_default(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn find_records(
        &self,
        request: Request<pb::FindRecordsRequest>,
    ) -> Result<Response<pb::FindRecordsResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context, vault.channels())?;
            let field = FieldName::parse("field", &req.field)?;
            let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
            let value = zeroize::Zeroizing::new(req.value);
            let records = vault.find_records(principal, &ctx, &field, &value, limit)?;
            Ok(pb::FindRecordsResponse {
                records: records.into_iter().map(record_info).collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        run(&self.vault, request, |_vault, principal, _req| {
            Ok(pb::WhoAmIResponse {
                principal_id: principal.id.as_str().into(),
                roles: principal
                    .roles
                    .iter()
                    .map(|r| r.as_str().to_owned())
                    .collect(),
                scope_subject_id: principal
                    .scope_subject
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                expires_at: Some(convert::timestamp(principal.expires_at)),
                token_id: principal.token_id.clone(),
                service_id: principal
                    .service
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                employee_issuer: principal
                    .employee
                    .as_ref()
                    .map(|e| e.issuer.clone())
                    .unwrap_or_default(),
                employee_sub: principal
                    .employee
                    .as_ref()
                    .map(|e| e.sub.clone())
                    .unwrap_or_default(),
                employee_display_name: principal
                    .employee
                    .as_ref()
                    .and_then(|e| e.display.clone())
                    .unwrap_or_default(),
            })
        })
        .await
        .map(Response::new)
    }
}

fn record_info((meta, fields): (RecordMeta, Vec<FieldInfo>)) -> pb::RecordInfo {
    pb::RecordInfo {
        record_id: meta.id,
        subject_id: meta.subject,
        purpose: meta.purpose.as_str().into(),
        fields: fields
            .into_iter()
            .map(|f| pb::FieldInfo {
                name: f.name,
                category: f.category,
                size: f.size,
                evidence: f.evidence.map(|e| pb::EvidenceMeta {
                    evidence_id: e.id,
                    media_type: e.media_type,
                    sha256: e.sha256,
                }),
            })
            .collect(),
        labels: meta.labels.into_iter().collect(),
        created_at: Some(convert::timestamp(meta.created_at)),
        updated_at: Some(convert::timestamp(meta.updated_at)),
        expires_at: meta.expires_at.map(convert::timestamp),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        pin::Pin,
        task::{Context, Poll},
    };

    use bytes::Bytes;

    use super::*;

    /// A step of a [`Scripted`] stream: a message or error that has come, or `None`, one that
    /// has not come yet (the stream answers `Pending` once).
    type Step = Option<Result<pb::EvidenceChunk, Status>>;

    /// A request stream whose messages come as scripted; the script's end is the stream's end.
    struct Scripted {
        script: VecDeque<Step>,
        polls: usize,
    }

    impl Scripted {
        fn new(script: impl IntoIterator<Item = Step>) -> Self {
            Self {
                script: script.into_iter().collect(),
                polls: 0,
            }
        }
    }

    impl tokio_stream::Stream for Scripted {
        type Item = Result<pb::EvidenceChunk, Status>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.polls += 1;
            match self.script.pop_front() {
                Some(Some(item)) => Poll::Ready(Some(item)),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(None),
            }
        }
    }

    fn data(bytes: &[u8]) -> pb::EvidenceChunk {
        pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(Bytes::copy_from_slice(
                bytes,
            ))),
        }
    }

    fn came(message: pb::EvidenceChunk) -> Step {
        Some(Ok(message))
    }

    fn end() -> pb::EvidenceChunk {
        pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::End(pb::EvidenceEnd {
                size: 9,
                sha256: String::new(),
            })),
        }
    }

    #[tokio::test]
    async fn tiny_messages_that_have_come_are_written_together_in_order() {
        let file: Vec<u8> = (0..2000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut stream = Scripted::new(
            file[1..]
                .iter()
                .map(|b| came(data(&[*b])))
                .chain([came(end())]),
        );
        let (first, held) = gather(&mut stream, Bytes::copy_from_slice(&file[..1])).await;
        assert_eq!(&first[..], &file[..GATHER_MESSAGES]);
        assert!(held.is_none(), "a full gathering holds nothing back");
        // The rest, from the next message the stream answers.
        let Some(Ok(pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(next)),
        })) = tokio_stream::StreamExt::next(&mut stream).await
        else {
            panic!("the message after a full gathering was taken");
        };
        let (second, held) = gather(&mut stream, next).await;
        assert_eq!(&second[..], &file[GATHER_MESSAGES..]);
        assert!(
            held.unwrap().unwrap() == Some(end()),
            "`end` is handed back"
        );
    }

    #[tokio::test]
    async fn a_message_that_has_not_come_is_not_waited_for() {
        let mut stream = Scripted::new([came(data(b"bc")), None, came(data(b"d")), came(end())]);
        let (joined, held) = gather(&mut stream, Bytes::from_static(b"a")).await;
        assert_eq!(&joined[..], b"abc");
        assert!(held.is_none());
        assert_eq!(
            stream.polls, 2,
            "polled once past the messages that had come"
        );
        assert_eq!(
            stream.script.len(),
            2,
            "what comes later is left to the stream"
        );
    }

    #[tokio::test]
    async fn a_message_that_is_not_short_data_is_handed_back_after_the_joined_bytes() {
        let large = data(&vec![7; GATHER_BYTES]);
        let start = pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Start(pb::EvidenceStart::default())),
        };
        let empty = pb::EvidenceChunk { part: None };
        for (how, next) in [
            ("a chunk of the gathering's size", came(large.clone())),
            ("`end`", came(end())),
            ("`start`", came(start.clone())),
            ("a message with no part", came(empty.clone())),
            (
                "an unreadable message",
                Some(Err(Status::out_of_range("too large"))),
            ),
        ] {
            let expected = match &next {
                Some(Ok(m)) => Some(m.clone()),
                _ => None,
            };
            let mut stream = Scripted::new([came(data(b"y")), next, came(data(b"z"))]);
            let (joined, held) = gather(&mut stream, Bytes::from_static(b"x")).await;
            assert_eq!(&joined[..], b"xy", "{how}");
            match (held, expected) {
                (Some(Ok(Some(m))), Some(e)) => assert!(m == e, "{how}: another message"),
                (Some(Err(s)), None) => assert_eq!(s.code(), tonic::Code::OutOfRange, "{how}"),
                (other, _) => panic!(
                    "{how}: handed back {}",
                    match other {
                        None => "nothing",
                        Some(Ok(None)) => "the stream's end",
                        Some(Ok(Some(_))) => "a message",
                        Some(Err(_)) => "an error",
                    }
                ),
            }
            assert_eq!(
                stream.script.len(),
                1,
                "{how}: read past the message handed back"
            );
        }
        // The stream's end.
        let mut stream = Scripted::new([came(data(b"y"))]);
        let (joined, held) = gather(&mut stream, Bytes::from_static(b"x")).await;
        assert_eq!(&joined[..], b"xy");
        assert!(matches!(held, Some(Ok(None))), "the end is handed back");
    }

    #[tokio::test]
    async fn chunks_of_the_gathering_size_are_written_alone_and_joining_stops_near_it() {
        let mut stream = Scripted::new([came(data(b"never read"))]);
        let whole = Bytes::from(vec![1; GATHER_BYTES]);
        let (alone, held) = gather(&mut stream, whole.clone()).await;
        assert_eq!(alone, whole);
        assert!(held.is_none());
        assert_eq!(
            stream.polls, 0,
            "a chunk of the gathering's size waits for nothing"
        );

        let mut stream = Scripted::new((0..200).map(|_| came(data(&[2; 1000]))));
        let (joined, held) = gather(&mut stream, Bytes::from(vec![2; 1000])).await;
        assert_eq!(joined.len(), GATHER_BYTES.div_ceil(1000) * 1000);
        assert!(held.is_none());
    }
}
