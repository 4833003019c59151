//! The deployment files (deploy/): none of them can run here (no container engine, no cluster),
//! so each is parsed and held to the real hub: the production config and every `SSF_HUB_*`
//! variable go through the hub's own loader (the real binary's `check-config`, so the real
//! environment layering), ports equal the configured listeners, probe, health-check and
//! ext_authz paths are requested from a running hub built from the production config, the
//! binary name is Cargo's, and the image carries the libraries the binary links. Renaming a
//! key, a port, a route or the binary fails a test here.
//!
//! YAML is read with PyYAML (tests/requirements.txt) in a subprocess, as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use ssf_hub::config::{Config, LogUrl};

use crate::support::process::{HubProcess, BIN};
use crate::support::*;

// --- reading the files ---------------------------------------------------------------------

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Every document of a YAML file, as JSON values (PyYAML's safe loader, merge keys included).
fn yaml_docs(rel: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
             json.dump(docs, sys.stdout)",
        ])
        .arg(repo(rel))
        .output()
        .expect("python3 runs (the test command installs tests/requirements.txt: PyYAML)");
    assert!(
        out.status.success(),
        "{rel} is not valid YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json from python")
}

fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel} holds one document");
    docs.remove(0)
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string: {v}"))
}

/// The `[[bin]]` name in Cargo.toml.
fn bin_name() -> String {
    use figment::providers::{Format, Toml};
    let manifest: Value = figment::Figment::from(Toml::file_exact(repo("Cargo.toml")))
        .extract()
        .expect("Cargo.toml");
    let bins = manifest["bin"].as_array().expect("[[bin]]");
    assert_eq!(bins.len(), 1, "one binary");
    s(&bins[0]["name"]).to_owned()
}

const PRODUCTION: &str = "deploy/config/production.toml";

/// deploy/config/production.toml through the hub's loader, with no environment layer.
fn production() -> Config {
    Config::load_from(
        Some(&repo(PRODUCTION)),
        figment::providers::Env::prefixed("SSF_HUB_DEPLOY_TEST_NONE_"),
    )
    .unwrap_or_else(|e| panic!("{PRODUCTION} must load and validate: {e}"))
}

fn metrics_addr(c: &Config) -> SocketAddr {
    c.http
        .metrics_listen
        .expect("production serves /metrics on http.metrics_listen")
}

/// `ssf-hub check-config --config production.toml` with exactly `env` (nothing inherited, so a
/// developer's SSF_HUB_* cannot leak in): the real binary's layering of defaults, file and
/// environment, and its validation. Returns the printed configuration.
fn check_config(env: &[(String, String)]) -> Result<String, String> {
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(repo(PRODUCTION))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run ssf-hub check-config");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A field of check-config's `{:#?}` dump: `name: value,` or `name: Some(\n value,\n)`.
fn dumped(dump: &str, name: &str) -> String {
    let mut lines = dump.lines();
    let prefix = format!("{name}: ");
    while let Some(line) = lines.next() {
        if let Some(v) = line.trim().strip_prefix(&prefix) {
            let v = if v == "Some(" {
                lines.next().expect("Some value").trim()
            } else {
                v
            };
            return v.trim_end_matches(',').trim_matches('"').to_owned();
        }
    }
    panic!("check-config printed no `{name}`:\n{dump}")
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// A Dockerfile as (instruction, arguments) pairs: continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("deploy/Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((op.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// The instructions of the final stage (after the last FROM).
fn final_stage(df: &[(String, String)]) -> &[(String, String)] {
    let last = df.iter().rposition(|(op, _)| op == "FROM").expect("FROM");
    &df[last + 1..]
}

fn json_array(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not a JSON array ({e}): {args}"))
}

fn one<'a>(stage: &'a [(String, String)], op: &str) -> &'a str {
    let found: Vec<_> = stage.iter().filter(|(o, _)| o == op).collect();
    assert_eq!(found.len(), 1, "exactly one {op}");
    &found[0].1
}

/// The image's ENTRYPOINT + CMD, and the numeric user it runs as.
struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    uid: u64,
    volume: String,
    config_path: String,
}

fn image() -> Image {
    let df = dockerfile();
    let stage = final_stage(&df);
    let user = one(stage, "USER");
    let uid: u64 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER must be numeric (runAsNonRoot checks it): {user}"));
    let cmd = json_array(one(stage, "CMD"));
    let config_path = match cmd.as_slice() {
        [serve, flag, path] if serve == "serve" && flag == "--config" => path.clone(),
        other => panic!("CMD must be `serve --config FILE`: {other:?}"),
    };
    let volume = json_array(one(stage, "VOLUME"));
    assert_eq!(volume.len(), 1, "one data volume");
    Image {
        entrypoint: json_array(one(stage, "ENTRYPOINT")),
        cmd,
        uid,
        volume: volume[0].clone(),
        config_path,
    }
}

// --- the production configuration ----------------------------------------------------------

#[test]
fn the_production_config_is_kafka_mode_with_only_real_keys() {
    let c = production();
    assert!(
        matches!(c.log_url().expect("log.url"), LogUrl::Kafka { .. }),
        "production runs in Kafka mode"
    );
    assert!(
        !c.log.kafka.create_topics,
        "production creates its topics by hand"
    );
    assert!(c.log.kafka.replication_factor >= 3);
    assert!(
        c.listen.ip().is_unspecified(),
        "reachable from the load balancer"
    );
    assert_ne!(metrics_addr(&c).port(), c.listen.port());
    assert!(
        c.issuer.starts_with("https://"),
        "TLS in front: {}",
        c.issuer
    );
    assert!(c.data_dir.is_absolute());
    assert!(
        c.log.retention.max_events > 0,
        "memory holds the kept log: bound it"
    );
    assert_eq!(c.http.max_connections_per_ip, 0, "behind a load balancer");
    // The topic commands in the file's comments create exactly the topics of its log.url.
    let LogUrl::Kafka { prefix, .. } = c.log_url().expect("log.url") else {
        unreachable!()
    };
    let text = read(PRODUCTION);
    let topics: BTreeSet<&str> = text
        .split("--topic ")
        .skip(1)
        .filter_map(|t| t.split_whitespace().next())
        .collect();
    assert_eq!(
        topics,
        BTreeSet::from([&*format!("{prefix}.events"), &*format!("{prefix}.state")])
    );
    assert_eq!(
        text.matches("--partitions 1 ").count(),
        2,
        "one partition each"
    );
    // The check bites: the same text with one misspelt key is refused, naming it.
    let text = read(PRODUCTION).replace("create_topics = false", "create_topic = false");
    let err = Config::from_toml(&text)
        .expect_err("unknown key")
        .to_string();
    assert!(err.contains("create_topic"), "{err}");
}

// --- the image -----------------------------------------------------------------------------

#[test]
fn the_dockerfile_builds_the_kafka_binary_and_runs_it_as_a_non_root_user() {
    let df = dockerfile();
    let bin = bin_name();
    let froms: Vec<&String> = df
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let build_stage = froms[0]
        .split_whitespace()
        .last()
        .expect("FROM ... AS name")
        .to_owned();
    let builds: Vec<&String> = df
        .iter()
        .filter(|(op, a)| op == "RUN" && a.contains("cargo build"))
        .map(|(_, a)| a)
        .collect();
    assert!(!builds.is_empty(), "a cargo build");
    for b in &builds {
        for flag in ["--release", "--locked", "--features kafka"] {
            assert!(b.contains(flag), "every cargo build has {flag}: {b}");
        }
    }
    assert!(
        builds.iter().any(|b| b.contains(&format!("--bin {bin}"))),
        "the binary is built by name"
    );

    let img = image();
    assert_ne!(img.uid, 0, "runs as non-root");
    let stage = final_stage(&df);
    let copied = |from: &str| -> Vec<(String, String)> {
        stage
            .iter()
            .filter(|(op, _)| op == "COPY")
            .filter_map(|(_, a)| {
                let parts: Vec<&str> = a.split_whitespace().collect();
                let (flags, rest): (Vec<&str>, Vec<&str>) =
                    parts.iter().partition(|p| p.starts_with("--"));
                let is_from = flags.iter().any(|f| f.starts_with("--from="));
                (is_from == (from == "stage")).then(|| (rest[0].to_owned(), rest[1].to_owned()))
            })
            .collect()
    };
    let binary = copied("stage");
    let entry = &img.entrypoint[0];
    assert!(
        binary.iter().any(|(src, dest)| dest == entry
            && Path::new(src).file_name().and_then(|f| f.to_str()) == Some(bin.as_str())),
        "ENTRYPOINT {entry} is the copied `{bin}` binary: {binary:?}"
    );
    assert!(stage
        .iter()
        .any(|(op, a)| op == "COPY" && a.starts_with(&format!("--from={build_stage} "))));
    assert_eq!(img.entrypoint.len(), 1, "ENTRYPOINT is the binary alone");
    assert_eq!(
        Path::new(entry).file_name().and_then(|f| f.to_str()),
        Some(bin.as_str())
    );
    assert!(
        copied("context")
            .iter()
            .any(|(src, dest)| src == PRODUCTION && *dest == img.config_path),
        "CMD's --config {} is the production config",
        img.config_path
    );

    // Ports: exactly the API listener and the metrics listener of the production config.
    let c = production();
    let exposed: BTreeSet<u16> = one(stage, "EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().expect("port"))
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([c.listen.port(), metrics_addr(&c).port()])
    );
    assert!(
        c.data_dir.starts_with(&img.volume),
        "data_dir {} lies in the VOLUME {}",
        c.data_dir.display(),
        img.volume
    );

    // Every file copied from the context exists, is let through the .dockerignore, and together
    // they hold everything the build compiles in (include_str!/include_bytes!).
    let ignore = read("deploy/Dockerfile.dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .collect();
    let sources: Vec<String> = df
        .iter()
        .filter(|(op, a)| op == "COPY" && !a.starts_with("--from"))
        .flat_map(|(_, a)| {
            let parts: Vec<&str> = a.split_whitespace().collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for src in &sources {
        assert!(repo(src).exists(), "COPY {src}: no such path");
        assert!(
            allowed.iter().any(|a| a == src
                || a.strip_suffix("/**")
                    .is_some_and(|dir| src == dir || src.starts_with(&format!("{dir}/")))),
            "{src} is excluded by deploy/Dockerfile.dockerignore"
        );
    }
    for included in compiled_in_files() {
        assert!(
            sources
                .iter()
                .any(|s| included == *s || included.starts_with(&format!("{s}/"))),
            "the build compiles in {included}, which the Dockerfile does not copy"
        );
    }
}

/// Repository-relative paths of the files `src/` compiles in.
fn compiled_in_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = repo("");
    let mut files = Vec::new();
    walk(&repo("src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for macro_ in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in text.match_indices(macro_) {
                let rest = &text[at + macro_.len()..];
                let rel = &rest[..rest.find('"').expect("closing quote")];
                let mut path = file.parent().expect("dir").to_path_buf();
                for part in Path::new(rel).components() {
                    match part {
                        std::path::Component::ParentDir => {
                            path.pop();
                        }
                        other => path.push(other),
                    }
                }
                let rel = path.strip_prefix(&root).expect("inside the repository");
                found.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    assert!(!found.is_empty(), "the defaults are compiled in");
    found
}

/// The runtime stage installs the Debian package of every shared library the binary links
/// (ldd of the binary under test: same dependencies and features as the release build).
#[test]
fn the_runtime_image_installs_every_library_the_binary_links() {
    let out = Command::new("ldd").arg(BIN).output().expect("ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    // In debian:bookworm-slim already (libc6, libgcc-s1): nothing to install.
    let base = [
        "linux-vdso",
        "ld-linux",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "libpthread.so",
        "libdl.so",
        "librt.so",
    ];
    let packages = BTreeMap::from([
        ("libssl.so.3", "libssl3"),
        ("libcrypto.so.3", "libssl3"),
        ("libz.so.1", "zlib1g"),
    ]);
    let df = dockerfile();
    let installs: String = final_stage(&df)
        .iter()
        .filter(|(op, a)| op == "RUN" && a.contains("apt-get install"))
        .map(|(_, a)| a.clone())
        .collect();
    let mut linked = 0;
    for line in text.lines() {
        let lib = line.split_whitespace().next().unwrap_or_default();
        let name = Path::new(lib)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default();
        if name.is_empty() || base.iter().any(|b| name.starts_with(b)) {
            continue;
        }
        let package = packages.get(name).unwrap_or_else(|| {
            panic!("the binary links {name}: add its Debian package to the runtime stage of deploy/Dockerfile and to this table")
        });
        assert!(
            installs.split_whitespace().any(|w| w == *package),
            "the runtime stage must install {package} (for {name})"
        );
        linked += 1;
    }
    assert!(linked >= 2, "ldd saw the binary's libraries:\n{text}");
    assert!(
        installs.contains("ca-certificates"),
        "TLS to brokers and JWKS needs CA roots"
    );
}

// --- compose -------------------------------------------------------------------------------

/// `${NAME}`, `${NAME:-default}`, `${NAME:?message}` as compose interpolates them, with made-up
/// values for the variables an operator must export.
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("closing brace") + at;
        let inner = &rest[at + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        } else if inner.starts_with("SSF_HUB_LOG__KAFKA__KEY_ENCRYPTION_KEY") {
            // The operator's `openssl rand -base64 32`.
            out.push_str(crate::kafka::KEK);
        } else {
            out.push_str("operator-supplied-value-0123456789");
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn env_pairs(env: &Value) -> Vec<(String, String)> {
    match env {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), interpolate(&v))
            })
            .collect(),
        Value::Null => vec![],
        other => panic!("environment as a map, please: {other}"),
    }
}

/// The (source, target) of a compose short-syntax volume.
fn mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|m| {
                    let parts: Vec<&str> = s(m).split(':').collect();
                    (parts[0].to_owned(), parts[1].to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The service that mounts `file` (relative to deploy/), and where.
fn mounting<'a>(services: &'a BTreeMap<String, Value>, file: &str) -> (&'a str, String) {
    let found: Vec<_> = services
        .iter()
        .filter_map(|(name, svc)| {
            mounts(svc)
                .into_iter()
                .find(|(src, _)| src == &format!("./{file}"))
                .map(|(_, target)| (name.as_str(), target))
        })
        .collect();
    assert_eq!(found.len(), 1, "one service mounts {file}");
    found.into_iter().next().expect("one")
}

/// Cluster name → its endpoints as (host, port).
type Clusters = BTreeMap<String, Vec<(String, u16)>>;

/// An Envoy config, its listener's port, and its clusters' endpoints.
fn envoy(rel: &str) -> (Value, u16, Clusters) {
    let doc = yaml(rel);
    let listeners = doc["static_resources"]["listeners"]
        .as_array()
        .expect("listeners");
    assert_eq!(listeners.len(), 1);
    let port = listeners[0]["address"]["socket_address"]["port_value"]
        .as_u64()
        .expect("port") as u16;
    let mut clusters = BTreeMap::new();
    for c in doc["static_resources"]["clusters"]
        .as_array()
        .expect("clusters")
    {
        let mut eps = Vec::new();
        for group in c["load_assignment"]["endpoints"]
            .as_array()
            .expect("endpoints")
        {
            for ep in group["lb_endpoints"].as_array().expect("lb_endpoints") {
                let a = &ep["endpoint"]["address"]["socket_address"];
                eps.push((
                    s(&a["address"]).to_owned(),
                    a["port_value"].as_u64().expect("port") as u16,
                ));
            }
        }
        clusters.insert(s(&c["name"]).to_owned(), eps);
    }
    (doc, port, clusters)
}

/// Every HTTP filter of an Envoy config named `name`.
fn envoy_filter<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let filters = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"];
    filters
        .as_array()
        .expect("http_filters")
        .iter()
        .find(|f| f["name"] == name)
        .map(|f| &f["typed_config"])
        .unwrap_or_else(|| panic!("no {name} filter"))
}

/// What the live-hub test requests: the paths the compose file and Envoy configs name.
struct ComposePaths {
    lb_health: String,
    ext_authz_prefix: String,
    ext_authz_token_header: String,
}

fn compose_paths() -> ComposePaths {
    let (lb, _, _) = envoy("deploy/envoy/lb.yaml");
    let health = lb["static_resources"]["clusters"][0]["health_checks"][0]["http_health_check"]
        ["path"]
        .clone();
    let (sidecar, _, _) = envoy("deploy/envoy/envoy.yaml");
    let authz = envoy_filter(&sidecar, "envoy.filters.http.ext_authz");
    let http = &authz["http_service"];
    let headers = http["authorization_request"]["headers_to_add"]
        .as_array()
        .expect("headers_to_add");
    assert_eq!(headers.len(), 1, "one header: the hub credential");
    ComposePaths {
        lb_health: s(&health).to_owned(),
        ext_authz_prefix: s(&http["path_prefix"]).to_owned(),
        ext_authz_token_header: s(&headers[0]["key"]).to_owned(),
    }
}

#[test]
fn compose_runs_kraft_kafka_and_two_replicas_behind_one_envoy_address() {
    let doc = yaml("deploy/compose.yaml");
    let services: BTreeMap<String, Value> = doc["services"]
        .as_object()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let img = image();

    // Kafka in KRaft mode: broker and controller in one process, no ZooKeeper.
    let (kafka_name, kafka) = services
        .iter()
        .find(|(_, svc)| {
            svc["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("apache/kafka"))
        })
        .expect("an apache/kafka service");
    let kenv: BTreeMap<String, String> = env_pairs(&kafka["environment"]).into_iter().collect();
    let roles = &kenv["KAFKA_PROCESS_ROLES"];
    assert!(
        roles.contains("broker") && roles.contains("controller"),
        "KRaft: {roles}"
    );
    assert!(!kenv.keys().any(|k| k.contains("ZOOKEEPER")));
    let advertised = &kenv["KAFKA_ADVERTISED_LISTENERS"];
    assert!(
        kafka["healthcheck"]["test"].is_array(),
        "the hubs wait for a healthy broker"
    );

    // The hub replicas: built from deploy/Dockerfile, the production file mounted where CMD
    // reads it, their environment applied by the real binary.
    let hubs: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, svc)| svc["build"]["dockerfile"] == "deploy/Dockerfile")
        .collect();
    assert!(hubs.len() >= 2, "two hub replicas: {:?}", services.keys());
    let mut listen_ports = BTreeSet::new();
    for (name, hub) in &hubs {
        let context = repo("deploy").join(s(&hub["build"]["context"]));
        assert!(
            context.join("deploy/Dockerfile").is_file(),
            "{name}: build context"
        );
        let command: Vec<String> = serde_json::from_value(hub["command"].clone()).expect("command");
        assert_eq!(command, img.cmd, "{name} runs the image's command");
        let m = mounts(hub);
        assert!(
            m.contains(&("./config/production.toml".into(), img.config_path.clone())),
            "{name} mounts the production config at {}: {m:?}",
            img.config_path
        );
        assert!(
            m.iter().any(|(_, t)| *t == img.volume),
            "{name}: a volume on {}",
            img.volume
        );
        assert!(hub["depends_on"][kafka_name]["condition"] == "service_healthy");
        let token = s(&hub["environment"]["SSF_HUB_ADMIN_TOKEN"]);
        assert!(
            token.starts_with("${"),
            "{name}: the admin token comes from the operator"
        );
        let env = env_pairs(&hub["environment"]);
        assert!(
            env.iter().all(|(k, _)| k.starts_with("SSF_HUB_")),
            "{name}: {env:?}"
        );
        let dump = check_config(&env)
            .unwrap_or_else(|e| panic!("{name}'s environment over the production config: {e}"));
        listen_ports.insert(port_of(&dumped(&dump, "listen")));
        let url = dumped(&dump, "url");
        let brokers = url
            .strip_prefix("kafka://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("{name}: log.url {url}"));
        for broker in brokers.split(',') {
            let (host, port) = broker.split_once(':').expect("host:port");
            assert_eq!(host, kafka_name, "{name}: brokers are the kafka service");
            assert!(
                advertised.contains(&format!("{host}:{port}")),
                "{broker} is advertised"
            );
        }
    }
    assert_eq!(listen_ports.len(), 1);
    let hub_port = listen_ports.into_iter().next().expect("port");
    // No SSF_HUB_ variable outside the hub services: it would configure nothing.
    for (name, svc) in &services {
        if !hubs.iter().any(|(h, _)| *h == name) {
            assert!(
                !svc["environment"].to_string().contains("\"SSF_HUB_"),
                "{name}"
            );
        }
    }

    // One address: Envoy balancing over exactly the replicas, on their listen port.
    let (lb_name, lb_target) = mounting(&services, "envoy/lb.yaml");
    assert_eq!(
        lb_target, "/etc/envoy/envoy.yaml",
        "Envoy's default config path"
    );
    let (_, lb_port, lb_clusters) = envoy("deploy/envoy/lb.yaml");
    assert_eq!(lb_clusters.len(), 1);
    let endpoints: BTreeSet<(String, u16)> = lb_clusters.values().flatten().cloned().collect();
    let expected: BTreeSet<(String, u16)> =
        hubs.iter().map(|(n, _)| ((*n).clone(), hub_port)).collect();
    assert_eq!(endpoints, expected);
    let published: Vec<String> =
        serde_json::from_value(services[lb_name]["ports"].clone()).expect("ports");
    assert!(
        published
            .iter()
            .any(|p| p.ends_with(&format!(":{lb_port}"))),
        "the load balancer's listener is published: {published:?}"
    );

    // The ext_authz sidecar example asks the hub through that one address.
    let (edge_name, edge_target) = mounting(&services, "envoy/envoy.yaml");
    let edge_cmd = services[edge_name]["command"].to_string();
    assert!(
        edge_cmd.contains(&edge_target),
        "{edge_name} starts from the mounted example"
    );
    let (sidecar, _, clusters) = envoy("deploy/envoy/envoy.yaml");
    let authz = envoy_filter(&sidecar, "envoy.filters.http.ext_authz");
    let cluster = s(&authz["http_service"]["server_uri"]["cluster"]);
    assert_eq!(clusters[cluster], vec![(lb_name.to_owned(), lb_port)]);
    assert_eq!(
        s(&authz["http_service"]["server_uri"]["uri"]),
        format!("http://{lb_name}:{lb_port}")
    );
    for (cluster, eps) in &clusters {
        for (host, _) in eps {
            assert!(
                services.contains_key(host) || host.contains('.'),
                "cluster {cluster}: {host} is neither a compose service nor a DNS name"
            );
        }
    }

    // The check bites: a misspelt variable is refused by the binary, naming the key.
    let mut env = env_pairs(&hubs[0].1["environment"]);
    env.push(("SSF_HUB_LOG__KAFKA__CREATE_TOPIC".into(), "true".into()));
    let err = check_config(&env).expect_err("unknown key");
    assert!(err.contains("create_topic"), "{err}");
}

// --- Kubernetes ----------------------------------------------------------------------------

struct K8s {
    objects: Vec<Value>,
}

impl K8s {
    fn load() -> K8s {
        let kustomization = yaml("deploy/k8s/kustomization.yaml");
        let listed: BTreeSet<String> =
            serde_json::from_value(kustomization["resources"].clone()).expect("resources");
        let present: BTreeSet<String> = std::fs::read_dir(repo("deploy/k8s"))
            .expect("deploy/k8s")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
            .collect();
        assert_eq!(listed, present, "kustomization.yaml lists every manifest");
        let objects = listed
            .iter()
            .flat_map(|f| yaml_docs(&format!("deploy/k8s/{f}")))
            .collect();
        K8s { objects }
    }

    fn of(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn only(&self, kind: &str) -> &Value {
        let all = self.of(kind);
        assert_eq!(all.len(), 1, "one {kind}");
        all[0]
    }

    fn container(&self) -> &Value {
        let containers = self.only("Deployment")["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    /// A named or numbered container port, as a number.
    fn port(&self, port: &Value) -> u16 {
        match port {
            Value::Number(n) => n.as_u64().expect("port") as u16,
            Value::String(name) => self.container()["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no container port named {name}"))
                as u16,
            other => panic!("port {other}"),
        }
    }

    /// (path, port) of a probe.
    fn probe(&self, which: &str) -> (String, u16) {
        let get = &self.container()[which]["httpGet"];
        (s(&get["path"]).to_owned(), self.port(&get["port"]))
    }

    /// The container's environment as Kubernetes resolves it: secret references get made-up
    /// values (16+ characters, no quotes), `$(NAME)` expands earlier variables.
    fn env(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for var in self.container()["env"].as_array().expect("env") {
            let name = s(&var["name"]).to_owned();
            let secret = ["TOKEN", "PASSWORD", "KEY_ENCRYPTION_KEY"]
                .iter()
                .any(|w| name.contains(w));
            assert!(
                !secret || var["value"].is_null(),
                "{name}: secrets come from a Secret, never a literal in the manifest"
            );
            let value = if let Some(v) = var["value"].as_str() {
                let mut v = v.to_owned();
                for (earlier, value) in &out {
                    v = v.replace(&format!("$({earlier})"), value);
                }
                assert!(
                    !v.contains("$("),
                    "{name}: $(...) names an undefined variable: {v}"
                );
                v
            } else {
                let r = &var["valueFrom"]["secretKeyRef"];
                assert!(r.is_object(), "{name}: a value or a secret reference");
                assert!(r["name"].is_string() && r["key"].is_string());
                if name == "SSF_HUB_LOG__KAFKA__KEY_ENCRYPTION_KEY" {
                    crate::kafka::KEK.to_owned()
                } else {
                    format!("secret-{}-0123456789", s(&r["key"]))
                }
            };
            out.push((name, value));
        }
        out
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .expect("matchLabels")
        .iter()
        .all(|(k, v)| labels[k] == *v)
}

#[test]
fn kubernetes_has_deployment_service_configmap_and_pdb_wired_to_the_real_config() {
    let k = K8s::load();
    let img = image();
    let bin = bin_name();
    let c = production();
    let deployment = k.only("Deployment");
    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    let replicas = spec["replicas"].as_u64().expect("replicas");
    assert!(replicas >= 2, "several replicas");
    assert!(labels_match(&spec["selector"]["matchLabels"], labels));

    let pdb = k.only("PodDisruptionBudget");
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        labels
    ));
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    assert!(
        min >= 1 && min < replicas,
        "drains can proceed and one replica stays"
    );

    // The binary and its config file, from the ConfigMap holding the production config.
    let container = k.container();
    let command: Vec<String> =
        serde_json::from_value(container["command"].clone()).expect("command");
    assert_eq!(command, img.entrypoint, "the image's binary");
    assert_eq!(
        Path::new(&command[0]).file_name().and_then(|f| f.to_str()),
        Some(bin.as_str())
    );
    let args: Vec<String> = serde_json::from_value(container["args"].clone()).expect("args");
    assert_eq!(args, img.cmd);
    let config_map = k.only("ConfigMap");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mount_of = |volume: &str| -> String {
        let m = container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("volume {volume} is mounted"));
        s(&m["mountPath"]).to_owned()
    };
    let config_volume = volumes
        .iter()
        .find(|v| v["configMap"]["name"] == config_map["metadata"]["name"])
        .expect("the ConfigMap is a volume");
    let config_dir = mount_of(s(&config_volume["name"]));
    let key = img
        .config_path
        .strip_prefix(&format!("{config_dir}/"))
        .unwrap_or_else(|| panic!("{} is in the ConfigMap mount {config_dir}", img.config_path));
    assert_eq!(
        config_map["data"][key].as_str(),
        Some(read(PRODUCTION).as_str()),
        "deploy/k8s/configmap.yaml holds deploy/config/production.toml verbatim"
    );
    // The data directory: a writable volume where the image declares it.
    let data_volume = volumes
        .iter()
        .find(|v| mount_of(s(&v["name"])) == img.volume)
        .expect("a volume on the image's data directory");
    assert!(data_volume["emptyDir"].is_object(), "state lives in Kafka");
    assert!(c.data_dir.starts_with(&img.volume));

    // Security: the image's non-root user, nothing writable but the volumes.
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"].as_u64(), Some(img.uid));
    let csc = &container["securityContext"];
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert_eq!(csc["capabilities"]["drop"], json!(["ALL"]));
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    // The environment, applied by the real binary over the production config.
    let dump = check_config(&k.env())
        .unwrap_or_else(|e| panic!("the Deployment's environment over the production config: {e}"));
    let listen = port_of(&dumped(&dump, "listen"));
    let metrics = port_of(&dumped(&dump, "metrics_listen"));
    assert!(dumped(&dump, "url").starts_with("kafka://"));
    assert_eq!(k.port(&json!("http")), listen);
    assert_eq!(k.port(&json!("metrics")), metrics);
    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], metrics.to_string());

    // Probes on the API port: liveness /healthz, readiness /readyz, and a startup probe that
    // waits as long as the hub may take to read Kafka before it listens.
    assert_eq!(k.probe("livenessProbe"), ("/healthz".into(), listen));
    assert_eq!(k.probe("readinessProbe"), ("/readyz".into(), listen));
    assert_eq!(k.probe("startupProbe").1, listen);
    let startup = &container["startupProbe"];
    let budget_secs = startup["periodSeconds"].as_u64().expect("period")
        * startup["failureThreshold"].as_u64().expect("threshold");
    assert!(
        budget_secs * 1000 >= c.log.kafka.startup_timeout_ms,
        "startupProbe allows {budget_secs} s, log.kafka.startup_timeout_ms is {}",
        c.log.kafka.startup_timeout_ms
    );

    // Services: select the pods, target named container ports that exist.
    let services = k.of("Service");
    assert!(!services.is_empty());
    let mut targeted = BTreeSet::new();
    for svc in services {
        assert!(labels_match(&svc["spec"]["selector"], labels));
        for p in svc["spec"]["ports"].as_array().expect("ports") {
            targeted.insert(k.port(&p["targetPort"]));
        }
    }
    assert_eq!(targeted, BTreeSet::from([listen, metrics]));
}

/// The Deployment's Kafka client settings (SASL over TLS, as production brokers require) are
/// accepted by the librdkafka this binary carries: built without TLS, it refuses
/// `security.protocol = SASL_SSL` and SCRAM when the client is created.
#[test]
fn the_kubernetes_kafka_security_settings_are_accepted_by_librdkafka() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::BaseProducer;
    let env = K8s::load().env();
    let properties = &env
        .iter()
        .find(|(k, _)| k == "SSF_HUB_LOG__KAFKA__PROPERTIES")
        .expect("the Deployment sets log.kafka.properties")
        .1;
    // A TOML inline table, as the hub's environment layer reads it.
    use figment::providers::{Format, Toml};
    let table: BTreeMap<String, String> =
        figment::Figment::from(Toml::string(&format!("p = {properties}")))
            .extract_inner("p")
            .expect("a TOML table of strings");
    assert_eq!(
        table.get("security.protocol").map(String::as_str),
        Some("SASL_SSL")
    );
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", "127.0.0.1:1");
    for (k, v) in &table {
        client.set(k, v);
    }
    if let Err(e) = client.create::<BaseProducer>() {
        panic!("librdkafka refuses the production client settings: {e}");
    }
}

// --- the paths, against a running hub ------------------------------------------------------

/// Every path the deployment files send requests to, on a hub started from the production
/// config (memory storage instead of Kafka, loopback ports): probes, health checks, the
/// metrics scrape and the Envoy ext_authz call as Envoy makes it.
// Multi-threaded: the health check runs as a blocking child process against this hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_the_deployment_files_request_is_served_by_the_hub() {
    use base64::Engine as _;
    let prod = production();
    let metrics_port = free_port();
    let hub = TestHub::start(|dir, c| {
        // A data directory inside a world-writable mount, like an emptyDir or a fresh volume.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let admin = c.admin_token.clone();
        *c = prod.clone();
        c.listen = "127.0.0.1:0".parse().expect("addr");
        c.http.metrics_listen = Some(format!("127.0.0.1:{metrics_port}").parse().expect("addr"));
        c.data_dir = dir.join(prod.data_dir.file_name().expect("data_dir name"));
        c.log.url = "memory://".into();
        c.admin_token = admin;
    })
    .await;
    let get = |url: String| {
        let client = hub.client.clone();
        async move { client.get(url).send().await.expect("request").status() }
    };

    let k = K8s::load();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let (path, _) = k.probe(probe);
        assert_eq!(
            get(format!("{}{path}", hub.base)).await,
            200,
            "{probe} {path}"
        );
    }
    let annotations = &k.only("Deployment")["spec"]["template"]["metadata"]["annotations"];
    let scrape = s(&annotations["prometheus.io/path"]);
    let status = get(format!("http://127.0.0.1:{metrics_port}{scrape}")).await;
    assert_eq!(status, 200, "Prometheus scrapes {scrape} without a token");

    let paths = compose_paths();
    assert_eq!(get(format!("{}{}", hub.base, paths.lb_health)).await, 200);

    // The image's HEALTHCHECK, run as Docker runs it, against this hub's port.
    let df = dockerfile();
    let check = one(final_stage(&df), "HEALTHCHECK");
    let exec: Vec<String> = json_array(&check[check.find("CMD").expect("CMD") + 3..]);
    let listen_tcp = format!("/dev/tcp/127.0.0.1/{}", prod.listen.port());
    assert!(
        exec[2].contains(&listen_tcp),
        "HEALTHCHECK probes the listen port"
    );
    let run = |script: &str| {
        Command::new(&exec[0])
            .arg(&exec[1])
            .arg(script.replace(
                &listen_tcp,
                &format!("/dev/tcp/127.0.0.1/{}", hub.running.addr.port()),
            ))
            .status()
            .expect("run the health check")
            .success()
    };
    assert!(
        run(&exec[2]),
        "HEALTHCHECK passes on a healthy hub: {}",
        exec[2]
    );
    assert!(
        !run(&exec[2].replace("/healthz", "/no-such-path")),
        "and it checks the status, not just the connection"
    );

    // Envoy's ext_authz call: path_prefix + the original path, the hub credential in the header
    // the example adds, the verified claims in x-jwt-payload.
    let (_, token) = hub.gateway("edge").await;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"iss": ISS, "sub": "u-1"}).to_string());
    let ask = |token: Option<&str>| {
        let mut req = hub
            .client
            .get(format!("{}{}/orders/42", hub.base, paths.ext_authz_prefix))
            .header("x-jwt-payload", &claims);
        if let Some(t) = token {
            req = req.header(&paths.ext_authz_token_header, t);
        }
        async move { req.send().await.expect("ext_authz").status() }
    };
    assert_eq!(ask(Some(&token)).await, 200, "allowed: nothing revoked");
    assert_eq!(
        ask(None).await,
        401,
        "the credential header is the one the hub reads"
    );

    let conf = get(format!("{}/.well-known/ssf-configuration", hub.base)).await;
    assert_eq!(conf, 200);
    hub.stop().await;
}

/// A compose replica's environment over the production config starts a real Kafka-mode hub
/// (against the test broker, `SSF_TEST_KAFKA`) that reports ready. Only what cannot be the same
/// on a shared test machine is changed: broker address and topic prefix, loopback ports, the
/// data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_replica_starts_in_kafka_mode_and_reports_ready() {
    let doc = yaml("deploy/compose.yaml");
    let hub = doc["services"]
        .as_object()
        .expect("services")
        .values()
        .find(|svc| svc["build"]["dockerfile"] == "deploy/Dockerfile")
        .expect("a hub replica");
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = free_port();
    let mut env = env_pairs(&hub["environment"]);
    env.retain(|(k, _)| k != "SSF_HUB_LOG__URL");
    env.extend([
        (
            "SSF_HUB_LOG__URL".to_owned(),
            format!(
                "kafka://{}/{}",
                crate::kafka::broker(),
                crate::kafka::prefix()
            ),
        ),
        ("SSF_HUB_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "SSF_HUB_HTTP__METRICS_LISTEN".to_owned(),
            format!("127.0.0.1:{metrics}"),
        ),
        (
            "SSF_HUB_DATA_DIR".to_owned(),
            dir.path().join("data").display().to_string(),
        ),
        // Reaching the end of an empty partition arrives as a "global error" through rdkafka's
        // default client context, logged at ERROR (target rdkafka::client), which HubProcess
        // would take for a failed start: /readyz decides here.
        ("RUST_LOG".to_owned(), "info,rdkafka::client=off".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let process = HubProcess::start_env(&repo(PRODUCTION), dir.path(), &env);
    let client = reqwest::Client::new();
    let mut status = None;
    for _ in 0..300 {
        let r = client
            .get(format!("{}/readyz", process.base()))
            .send()
            .await;
        status = r.ok().map(|r| r.status());
        if status == Some(reqwest::StatusCode::OK) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        Some(reqwest::StatusCode::OK),
        "{}",
        process.log_text()
    );
    let scrape = client
        .get(format!("http://127.0.0.1:{metrics}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(scrape.status(), 200);
    process.kill9();
}
