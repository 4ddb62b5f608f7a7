//! A small case-management client: stores a nuisance record and reads it back, the way a case
//! app would. Run `kluis serve --dev` in one terminal, then in another:
//!
//! ```text
//! cargo run --example case_app            # uses .kluis-dev/dev-tokens.json and 127.0.0.1:50051
//! cargo run --example case_app -- DIR URL # another data dir or server
//! ```

#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use kluis::pb::{self, vault_client::VaultClient};
use tonic::Request;

/// What the server said, for a person: its status code and message.
fn said(status: tonic::Status) -> String {
    format!("kluis answered {:?}: {}", status.code(), status.message())
}

fn with_token<T>(token: &str, msg: T) -> Result<Request<T>, Box<dyn std::error::Error>> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A message for a person, not the error's debug form.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("case_app: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| ".kluis-dev".into());
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let tokens_file = format!("{dir}/dev-tokens.json");
    let tokens: std::collections::HashMap<String, String> =
        serde_json::from_slice(&std::fs::read(&tokens_file).map_err(|e| {
            format!(
                "cannot read `{tokens_file}` ({e}): start the development server first \
                 (`cargo run -- serve --dev`), or name its data directory: \
                 `cargo run --example case_app -- DIR URL`"
            )
        })?)?;
    let officer = tokens
        .get("nuisance-officer")
        .ok_or("no nuisance-officer token")?;
    let service = tokens
        .get("customer-service")
        .ok_or("no customer-service token")?;
    let context = |purpose: &str| pb::AccessContext {
        purpose: purpose.into(),
        case_ref: "N-2026-0042".into(),
        justification: "complaint by the neighbours of 12B".into(),
        channel: "app".into(),
        break_glass: false,
    };
    let mut client = VaultClient::connect(url.clone()).await.map_err(|_| {
        format!(
            "cannot reach kluis at {url}: is the server running (`cargo run -- serve --dev`)? \
             Another address: `cargo run --example case_app -- DIR URL`"
        )
    })?;

    let put = client
        .put_record(with_token(
            officer,
            pb::PutRecordRequest {
                context: Some(context("nuisance")),
                subject_id: "REL-0001".into(),
                fields: vec![
                    pb::FieldValue {
                        name: "phone".into(),
                        category: "contact".into(),
                        value: Some(pb::field_value::Value::Text("06-11223344".into())),
                        masked: false,
                    },
                    pb::FieldValue {
                        name: "incident".into(),
                        category: "nuisance-evidence".into(),
                        value: Some(pb::field_value::Value::Text(
                            "loud music after midnight, 3 nights".into(),
                        )),
                        masked: false,
                    },
                ],
                labels: [("case".to_owned(), "N-2026-0042".to_owned())].into(),
            },
        )?)
        .await
        .map_err(said)?
        .into_inner();
    println!("stored {}", put.record_id);

    let got = client
        .get_record(with_token(
            officer,
            pb::GetRecordRequest {
                context: Some(context("nuisance")),
                record_id: put.record_id.clone(),
                fields: vec![],
            },
        )?)
        .await
        .map_err(said)?
        .into_inner();
    for f in &got.fields {
        if let Some(pb::field_value::Value::Text(t)) = &f.value {
            println!("nuisance-officer reads {} ({}): {t}", f.name, f.category);
        }
    }

    match client
        .get_record(with_token(
            service,
            pb::GetRecordRequest {
                context: Some(context("customer-service")),
                record_id: put.record_id,
                fields: vec![],
            },
        )?)
        .await
    {
        Ok(_) => println!("customer-service read it (unexpected!)"),
        Err(status) => println!(
            "customer-service: {:?}: {}",
            status.code(),
            status.message()
        ),
    }
    Ok(())
}
