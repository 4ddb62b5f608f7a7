//! The `.proto` files as other toolchains read them. kluis builds its own code with `protox`,
//! but case apps and operators generate clients with `protoc` (Python's `grpcio-tools`, Go's
//! `protoc-gen-go`), which resolves a type named in a service in the service's scope first:
//! a message named like an rpc of the same service must be written in full there.

use std::path::Path;

/// An rpc: its name, and the types it takes and returns as written.
type Rpc = (String, Vec<String>);

/// The services of a `.proto` file, each with its rpcs.
fn services(text: &str) -> Vec<(String, Vec<Rpc>)> {
    let mut out: Vec<(String, Vec<Rpc>)> = Vec::new();
    // Comments out, then read statement by statement.
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut words = code
        .split(|c: char| c.is_whitespace() || "(){};".contains(c))
        .filter(|w| !w.is_empty())
        .peekable();
    while let Some(w) = words.next() {
        match w {
            "service" => {
                if let Some(name) = words.next() {
                    out.push((name.to_string(), Vec::new()));
                }
            }
            "rpc" => {
                let name = words.next().unwrap_or_default().to_string();
                let mut types = Vec::new();
                // `Name(Req) returns (Resp)`, either side possibly `stream`.
                while let Some(&t) = words.peek() {
                    if t == "rpc" || t == "service" || t == "message" || t == "option" {
                        break;
                    }
                    words.next();
                    if t != "returns" && t != "stream" {
                        types.push(t.to_string());
                    }
                    if types.len() == 2 {
                        break;
                    }
                }
                if let Some((_, rpcs)) = out.last_mut() {
                    rpcs.push((name, types));
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn no_rpc_names_a_type_that_protoc_would_read_as_a_method() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/kluis/v1");
    let mut read = 0;
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "proto") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (service, rpcs) in services(&text) {
            let methods: Vec<&str> = rpcs.iter().map(|(n, _)| n.as_str()).collect();
            for (rpc, types) in &rpcs {
                read += 1;
                assert_eq!(types.len(), 2, "{service}.{rpc}: {types:?}");
                for t in types {
                    if methods.contains(&t.as_str()) {
                        wrong.push(format!("{}: {service}.{rpc} names `{t}`", path.display()));
                    }
                }
            }
        }
    }
    // The reader found the services: an empty read would pass anything.
    assert!(read > 50, "only {read} rpcs read");
    assert!(
        wrong.is_empty(),
        "write these types in full (`.kluis.v1.X`): {wrong:#?}"
    );
}

#[test]
fn the_reader_finds_a_type_named_like_a_method() {
    let text = "service S {\n  // c\n  rpc Status(StatusRequest) returns (Status);\n  \
                rpc Get(GetRequest) returns (stream .pkg.Status);\n}\n";
    let found = services(text);
    assert_eq!(
        found,
        vec![(
            "S".to_string(),
            vec![
                (
                    "Status".to_string(),
                    vec!["StatusRequest".to_string(), "Status".to_string()]
                ),
                (
                    "Get".to_string(),
                    vec!["GetRequest".to_string(), ".pkg.Status".to_string()]
                ),
            ]
        )]
    );
}
