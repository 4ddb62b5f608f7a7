//! `kluis admin export`: a subject's export (GDPR art. 15, or art. 20 with `--portable`) as
//! JSON lines, and with `--with-evidence DIR` each evidence file it lists written beside them.
//!
//! Every file is written to a temporary name in its directory and renamed into place only once
//! complete and its SHA-256 equals the digest the export states; a file that does not match is
//! removed and the command fails (exit 4). An existing file is never replaced without `--force`.
//! Progress goes to stderr; stdout carries the JSON lines when no `--output` is given.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use kluis::pb::{self, vault_client::VaultClient};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::{Exit, authed, fail, status_exit};

/// Arguments of `kluis admin export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The subject.
    #[arg(long)]
    pub subject: String,
    /// Only the data the subject provided, in the portable schema `kluis.portable.v1`
    /// (docs/portability.schema.json), for a request under GDPR art. 20.
    #[arg(long)]
    pub portable: bool,
    /// Write each evidence file the export lists into DIR (created if missing), checked
    /// against its SHA-256 digest.
    #[arg(long, value_name = "DIR")]
    pub with_evidence: Option<PathBuf>,
    /// Write the JSON lines to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace files that exist already.
    #[arg(long)]
    pub force: bool,
    /// The purpose the export is made under (decided and audited with it).
    #[arg(long, default_value = "customer-service")]
    pub purpose: String,
    /// The reference of the subject's request (needed for special categories; audited).
    #[arg(long, default_value = "")]
    pub case_ref: String,
    /// Why (needed for special categories; audited).
    #[arg(long, default_value = "")]
    pub justification: String,
}

/// One evidence file an export line lists.
#[derive(Debug)]
struct Listed {
    evidence_id: String,
    file_name: String,
    sha256: String,
    size: u64,
}

/// Runs `export`.
pub async fn run(channel: Channel, token: &str, args: &ExportArgs, json: bool) -> Exit {
    let mut client = VaultClient::new(channel);
    let context = Some(pb::AccessContext {
        purpose: args.purpose.clone(),
        case_ref: args.case_ref.clone(),
        justification: args.justification.clone(),
        channel: "app".into(),
        break_glass: false,
    });
    // Nothing is asked of the server before the places to write are known to be free.
    if let Some(out) = &args.output
        && !args.force
        && out.exists()
    {
        return fail(format!(
            "`{}` exists already; give --force to replace it",
            out.display()
        ));
    }
    let request = pb::ExportSubjectRequest {
        context: context.clone(),
        subject_id: args.subject.clone(),
        portable: args.portable,
    };
    let mut stream = match client.export_subject(authed(token, request)).await {
        Ok(s) => s.into_inner(),
        Err(s) => return status_exit(&s),
    };
    let mut lines = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(line)) => lines.push(line.json),
            Ok(None) => break,
            Err(s) => return status_exit(&s),
        }
    }
    let listed = match listed_evidence(&lines) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if let Some(dir) = &args.with_evidence {
        if let Err(e) = create_private_dir(dir) {
            return fail(e);
        }
        let targets: Vec<PathBuf> = listed.iter().map(|l| dir.join(local_name(l))).collect();
        if !args.force
            && let Some(taken) = targets.iter().find(|t| t.exists())
        {
            return fail(format!(
                "`{}` exists already; give --force to replace it",
                taken.display()
            ));
        }
        let total: u64 = listed.iter().map(|l| l.size).sum();
        let mut bar = crate::cli::progress::Progress::new("evidence", json);
        let mut done = 0u64;
        for (n, (l, target)) in listed.iter().zip(&targets).enumerate() {
            bar.update(
                done,
                total,
                format_args!("file {} of {}: {}", n + 1, listed.len(), l.evidence_id),
            );
            let got = fetch(&mut client, token, context.clone(), l, target, args.force).await;
            match got {
                Ok(()) => done = done.saturating_add(l.size),
                Err(Failure::Status(s)) => return status_exit(&s),
                Err(Failure::Mismatch(e)) => {
                    bar.finish();
                    eprintln!("error: {}", kluis::escape::controls(&e.to_string()));
                    return Exit::CheckFailed;
                }
                Err(Failure::Io(e)) => return fail(e),
            }
        }
        bar.update(done, total, format_args!("{} files written", listed.len()));
        bar.finish();
    } else if !listed.is_empty() && !json {
        eprintln!(
            "note: the export lists {} evidence file(s); --with-evidence DIR writes them",
            listed.len()
        );
    }
    let mut text = lines.join("\n");
    text.push('\n');
    match &args.output {
        Some(out) => match write_atomically(out, text.as_bytes(), args.force) {
            Ok(()) => {
                eprintln!("{} lines written to {}", lines.len(), out.display());
                Exit::Success
            }
            Err(e) => fail(e),
        },
        None => {
            for line in &lines {
                out!("{line}");
            }
            Exit::Success
        }
    }
}

/// Why a file was not written.
enum Failure {
    Status(tonic::Status),
    Mismatch(String),
    Io(String),
}

/// The evidence files the export's record lines list.
fn listed_evidence(lines: &[String]) -> Result<Vec<Listed>, String> {
    let mut out = Vec::new();
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("the server sent a bad line: {e}"))?;
        if v.get("type").and_then(|t| t.as_str()) != Some("record") {
            continue;
        }
        let Some(files) = v.get("evidence").and_then(|e| e.as_array()) else {
            continue;
        };
        for f in files {
            let s = |k: &str| f.get(k).and_then(|x| x.as_str()).unwrap_or_default();
            let listed = Listed {
                evidence_id: s("evidence_id").to_owned(),
                file_name: s("file_name").to_owned(),
                sha256: s("sha256").to_owned(),
                size: f
                    .get("size")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
            };
            if listed.evidence_id.is_empty() || listed.sha256.len() != 64 {
                return Err("the server listed an evidence file without id or digest".into());
            }
            out.push(listed);
        }
    }
    Ok(out)
}

/// The name an evidence file gets in the directory: its id, then its own name reduced to
/// letters, digits, `.`, `-` and `_` (never a path, never hidden), at most 100 characters.
fn local_name(l: &Listed) -> String {
    let id: String = l
        .evidence_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let own: String = l
        .file_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let own = own.trim_start_matches('.');
    if own.is_empty() {
        id
    } else {
        format!("{id}-{own}")
    }
}

/// Downloads one evidence file into `target`, checked against the export's digest.
async fn fetch(
    client: &mut VaultClient<Channel>,
    token: &str,
    context: Option<pb::AccessContext>,
    l: &Listed,
    target: &Path,
    force: bool,
) -> Result<(), Failure> {
    let request = pb::GetEvidenceRequest {
        context,
        evidence_id: l.evidence_id.clone(),
        range: None,
        export: true,
    };
    let mut stream = client
        .get_evidence(authed(token, request))
        .await
        .map_err(Failure::Status)?
        .into_inner();
    let mut file = Checked::create(target, &l.sha256, force).map_err(Failure::Io)?;
    loop {
        match stream.message().await {
            Ok(Some(pb::EvidenceData {
                part: Some(pb::evidence_data::Part::Data(bytes)),
            })) => file.write(&bytes).map_err(Failure::Io)?,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(s) => return Err(Failure::Status(s)),
        }
    }
    file.finish().map_err(|e| match e {
        Finish::Mismatch(m) => Failure::Mismatch(format!("evidence `{}`: {m}", l.evidence_id)),
        Finish::Io(e) => Failure::Io(e),
    })
}

/// A file being written under a temporary name, hashed as it is written. Dropped unfinished,
/// the temporary file is removed.
struct Checked {
    temp: PathBuf,
    target: PathBuf,
    file: Option<std::fs::File>,
    hasher: Sha256,
    want: String,
    force: bool,
}

/// Why `Checked::finish` did not put the file in place.
#[derive(Debug)]
enum Finish {
    Mismatch(String),
    Io(String),
}

impl Checked {
    fn create(target: &Path, want: &str, force: bool) -> Result<Self, String> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = target.with_file_name(format!(
            ".{name}.{}.part",
            hex::encode(rand::random::<[u8; 4]>())
        ));
        let file = create_private_file(&temp)?;
        Ok(Self {
            temp,
            target: target.to_owned(),
            file: Some(file),
            hasher: Sha256::new(),
            want: want.to_ascii_lowercase(),
            force,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.hasher.update(bytes);
        match &mut self.file {
            Some(f) => f
                .write_all(bytes)
                .map_err(|e| format!("cannot write `{}`: {e}", self.temp.display())),
            None => Err("file closed".into()),
        }
    }

    fn finish(mut self) -> Result<(), Finish> {
        let Some(file) = self.file.take() else {
            return Err(Finish::Io("file closed".into()));
        };
        file.sync_all()
            .map_err(|e| Finish::Io(format!("cannot write `{}`: {e}", self.temp.display())))?;
        drop(file);
        let got = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if got != self.want {
            // Dropping `self` removes the temporary file.
            return Err(Finish::Mismatch(format!(
                "the SHA-256 of the bytes received ({got}) is not the digest the export states \
                 ({}); the file was removed",
                self.want
            )));
        }
        if !self.force && self.target.exists() {
            return Err(Finish::Io(format!(
                "`{}` exists already; give --force to replace it",
                self.target.display()
            )));
        }
        std::fs::rename(&self.temp, &self.target).map_err(|e| {
            Finish::Io(format!(
                "cannot move the file into `{}`: {e}",
                self.target.display()
            ))
        })?;
        self.temp = PathBuf::new();
        Ok(())
    }
}

impl Drop for Checked {
    fn drop(&mut self) {
        self.file = None;
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `path` through a temporary file beside it and a rename.
fn write_atomically(path: &Path, bytes: &[u8], force: bool) -> Result<(), String> {
    let want = hex::encode(Sha256::digest(bytes));
    let mut f = Checked::create(path, &want, force)?;
    f.write(bytes)?;
    f.finish().map_err(|e| match e {
        Finish::Mismatch(m) | Finish::Io(m) => m,
    })
}

fn create_private_file(path: &Path) -> Result<std::fs::File, String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| format!("cannot create `{}`: {e}", path.display()))
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[test]
    fn a_file_matching_its_digest_is_moved_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ev_1-photo.jpg");
        let mut f = Checked::create(&target, &sha(b"abcdef"), false).unwrap();
        f.write(b"abc").unwrap();
        f.write(b"def").unwrap();
        f.finish().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"abcdef");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_not_matching_its_digest_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ev_1-photo.jpg");
        let mut f = Checked::create(&target, &sha(b"abcdef"), false).unwrap();
        f.write(b"abcdeF").unwrap();
        let e = f.finish().unwrap_err();
        assert!(
            matches!(&e, Finish::Mismatch(m) if m.contains(&sha(b"abcdef"))),
            "{e:?}"
        );
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_existing_file_is_replaced_only_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        std::fs::write(&target, b"old").unwrap();
        let e = write_atomically(&target, b"new", false).unwrap_err();
        assert!(e.contains("--force"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomically(&target, b"new", true).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn local_names_are_never_paths_or_hidden() {
        let l = |name: &str| Listed {
            evidence_id: "ev_ab12".into(),
            file_name: name.into(),
            sha256: "0".repeat(64),
            size: 1,
        };
        assert_eq!(local_name(&l("photo 1.jpg")), "ev_ab12-photo_1.jpg");
        assert_eq!(local_name(&l("../../etc/passwd")), "ev_ab12-_.._etc_passwd");
        assert_eq!(local_name(&l(".hidden")), "ev_ab12-hidden");
        assert_eq!(local_name(&l("")), "ev_ab12");
        assert!(!local_name(&l("a/b\\c")).contains(['/', '\\']));
    }
}
