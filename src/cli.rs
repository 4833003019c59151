//! The `ssf-hub` command line: `serve`, and the operator tools `keygen`, `send` and `tail` that
//! talk to a hub only over its HTTP API, as any other client would.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::set::EventKind;
use crate::sign::{SetSigner, SignAlg};

#[derive(Debug, Parser)]
#[command(
    name = "ssf-hub",
    version,
    about = "OpenID Shared Signals (SSF/CAEP/RISC) event hub"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub (embedded log, loopback listener unless configured otherwise).
    Serve {
        /// TOML configuration file, layered over the built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration (defaults + file + SSF_HUB_* environment) and exit.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Generate a signing key: PREFIX.key.pem (private, mode 0600) and PREFIX.jwks.json (public).
    Keygen {
        /// ES256 or RS256.
        #[arg(long, default_value = "ES256")]
        alg: String,
        /// Output path prefix.
        #[arg(long, default_value = "transmitter")]
        out: PathBuf,
        /// Key id; defaults to the RFC 7638 thumbprint.
        #[arg(long)]
        kid: Option<String>,
    },
    /// Build, sign and push one SET to a URL (RFC 8935), printing the HTTP result.
    Send(SendArgs),
    /// Print normalized events from a running hub as JSON lines.
    Tail(TailArgs),
    /// Manage the receivers (gateways, sidecars, SIEMs) of a running hub.
    Receivers {
        #[command(subcommand)]
        action: ReceiversAction,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the sources of a running hub (`GET /admin/sources`: stream id and status,
    /// verification state, last event time, events by type, errors by kind) and its connectors
    /// (`GET /admin/connectors`).
    Sources {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Manage the signing keys of a running hub.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReceiversAction {
    /// Register a receiver; prints its id and bearer credential (shown only this once).
    Add {
        #[arg(long)]
        name: String,
        /// The `aud` of the receiver's streams and SETs.
        #[arg(long)]
        audience: String,
        #[command(flatten)]
        grant: GrantArgs,
    },
    /// Change a receiver's scopes, bindings or OAuth client; options given replace, the
    /// credential stays.
    Update {
        id: String,
        #[command(flatten)]
        grant: GrantArgs,
        /// Remove every binding.
        #[arg(long, conflicts_with_all = ["bind_subjects", "bind_email_domains", "bind_issuers"])]
        unbind: bool,
    },
    /// List receivers.
    List,
    /// Revoke a receiver's credential.
    Revoke { id: String },
}

/// What a receiver's credential may do and see.
#[derive(Debug, Clone, clap::Args)]
pub struct GrantArgs {
    /// What the credential may do: `ssf.manage`, `ssf.read` (streams) or `revocations.read`
    /// (the revocation views and decisions, for gateways and sidecars). Repeatable or
    /// comma-separated; for a new receiver the default is `ssf.manage,ssf.read`.
    #[arg(long = "scope", value_delimiter = ',')]
    pub scopes: Vec<String>,
    /// Bind the credential to subjects matching this RFC 9493 identifier (JSON); the
    /// revocation views show it only bound subjects. Repeatable.
    #[arg(long = "bind-subject")]
    pub bind_subjects: Vec<String>,
    /// Bind the credential to email subjects in this domain. Repeatable.
    #[arg(long = "bind-email-domain")]
    pub bind_email_domains: Vec<String>,
    /// Bind the credential to `iss_sub` subjects of this issuer. Repeatable.
    #[arg(long = "bind-issuer")]
    pub bind_issuers: Vec<String>,
    /// The OAuth `client_id` whose access tokens act as this receiver.
    #[arg(long)]
    pub oauth_client_id: Option<String>,
}

impl GrantArgs {
    /// Adds the options given to an admin API body.
    fn write_into(&self, body: &mut Value) -> Result<(), String> {
        if !self.scopes.is_empty() {
            body["scopes"] = json!(self.scopes);
        }
        let mut bound = Vec::new();
        for s in &self.bind_subjects {
            let subject: Value =
                serde_json::from_str(s).map_err(|e| format!("--bind-subject is not JSON: {e}"))?;
            bound.push(json!({ "subject": subject }));
        }
        bound.extend(
            self.bind_email_domains
                .iter()
                .map(|d| json!({ "email_domain": d })),
        );
        bound.extend(self.bind_issuers.iter().map(|i| json!({ "issuer": i })));
        if !bound.is_empty() {
            body["bound_to"] = Value::Array(bound);
        }
        if let Some(c) = &self.oauth_client_id {
            body["oauth_client_id"] = json!(c);
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Publish a new signing key now; the hub signs with it after signing.activation_delay_secs.
    Rotate {
        /// ES256 or RS256; the hub's default algorithm when omitted.
        #[arg(long)]
        alg: Option<String>,
    },
}

/// How operator commands reach a running hub.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Base URL of the hub.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Admin token; by default read from <data-dir>/admin-token.
    #[arg(
        long,
        global = true,
        env = "SSF_HUB_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// The hub's data directory, to find the generated admin token.
    #[arg(long, global = true, default_value = "ssf-hub-data")]
    pub data_dir: PathBuf,
}

impl AdminArgs {
    fn token(&self) -> Result<String, String> {
        match &self.token {
            Some(t) => Ok(t.clone()),
            None => {
                let path = self.data_dir.join("admin-token");
                Ok(std::fs::read_to_string(&path)
                    .map_err(|e| format!("no --token and cannot read {}: {e}", path.display()))?
                    .trim()
                    .to_owned())
            }
        }
    }

    /// One admin API call; returns the JSON answer (or `null` for an empty one).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = client
            .request(method.clone(), &url)
            .bearer_auth(self.token()?);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "{method} {url} answered HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes)
            ));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Where to POST, e.g. http://127.0.0.1:8080/ingest/demo.
    #[arg(long)]
    pub url: String,
    /// PEM private key (from `ssf-hub keygen`).
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long, default_value = "ES256")]
    pub alg: String,
    /// Key id; defaults to the key's RFC 7638 thumbprint, as `keygen` publishes it.
    #[arg(long)]
    pub kid: Option<String>,
    /// SET `iss`.
    #[arg(long)]
    pub iss: String,
    /// SET `aud`.
    #[arg(long)]
    pub aud: String,
    /// Event type: a full URI, or a short name such as `session-revoked` or `risc/account-disabled`.
    #[arg(long, default_value = "session-revoked")]
    pub event: String,
    /// Subject identifier as JSON (RFC 9493), e.g. '{"format":"email","email":"a@b.test"}'.
    #[arg(long, conflicts_with = "email")]
    pub subject: Option<String>,
    /// Shorthand for an email subject.
    #[arg(long)]
    pub email: Option<String>,
    /// Event payload claims as a JSON object; `event_timestamp` defaults to now.
    #[arg(long, default_value = "{}")]
    pub claims: String,
    /// `txn` claim.
    #[arg(long)]
    pub txn: Option<String>,
    /// `jti` claim; a random UUID by default.
    #[arg(long)]
    pub jti: Option<String>,
    /// Authorization header value for the receiving endpoint, e.g. 'Bearer abc'.
    #[arg(long, env = "SSF_SEND_AUTHORIZATION")]
    pub authorization: Option<String>,
    /// Print the signed SET instead of sending it.
    #[arg(long)]
    pub print: bool,
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Start after this log position (0 = from the beginning).
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Keep waiting for new events.
    #[arg(long, short)]
    pub follow: bool,
    /// Only events of these types (short names or URIs); repeatable.
    #[arg(long = "event")]
    pub events: Vec<String>,
    /// Only events from this source id.
    #[arg(long)]
    pub source: Option<String>,
    /// Only events about this canonical subject key (the `subject_key` of a record).
    #[arg(long)]
    pub subject_key: Option<String>,
    /// Print revocation deltas (GET /revocations) instead of events.
    #[arg(long)]
    pub revocations: bool,
}

/// Runs a parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    crate::telemetry::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssf-hub: cannot start the runtime: {e}");
            return 1;
        }
    };
    let result: Result<(), String> = rt.block_on(async {
        match cli.command {
            Command::Serve { config } => {
                let config =
                    crate::config::Config::load(config.as_deref()).map_err(|e| e.to_string())?;
                crate::app::serve(config).await.map_err(|e| e.to_string())
            }
            Command::CheckConfig { config } => {
                let config =
                    crate::config::Config::load(config.as_deref()).map_err(|e| e.to_string())?;
                // What `serve` would also refuse before reaching the brokers.
                if matches!(config.log_url(), Ok(crate::config::LogUrl::Kafka { .. })) {
                    config.kafka_secrets().map_err(|e| e.to_string())?;
                }
                println!("{config:#?}");
                Ok(())
            }
            Command::Keygen { alg, out, kid } => keygen(&alg, &out, kid),
            Command::Send(args) => send(args).await,
            Command::Tail(args) => tail(args).await,
            Command::Receivers { action, admin } => {
                let out = match action {
                    ReceiversAction::Add {
                        name,
                        audience,
                        grant,
                    } => {
                        let mut body = json!({"name": name, "audience": audience});
                        grant.write_into(&mut body)?;
                        admin
                            .call(reqwest::Method::POST, "/admin/receivers", Some(body))
                            .await?
                    }
                    ReceiversAction::Update { id, grant, unbind } => {
                        let mut body = json!({});
                        grant.write_into(&mut body)?;
                        if unbind {
                            body["bound_to"] = json!([]);
                        }
                        admin
                            .call(
                                reqwest::Method::PATCH,
                                &format!("/admin/receivers/{id}"),
                                Some(body),
                            )
                            .await?
                    }
                    ReceiversAction::List => {
                        admin
                            .call(reqwest::Method::GET, "/admin/receivers", None)
                            .await?
                    }
                    ReceiversAction::Revoke { id } => {
                        admin
                            .call(
                                reqwest::Method::DELETE,
                                &format!("/admin/receivers/{id}"),
                                None,
                            )
                            .await?
                    }
                };
                if !out.is_null() {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
                    );
                }
                Ok(())
            }
            Command::Sources { admin } => {
                let mut out = admin
                    .call(reqwest::Method::GET, "/admin/sources", None)
                    .await?;
                let connectors = admin
                    .call(reqwest::Method::GET, "/admin/connectors", None)
                    .await?;
                out["connectors"] = connectors["connectors"].clone();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
                );
                Ok(())
            }
            Command::Keys {
                action: KeysAction::Rotate { alg },
                admin,
            } => {
                let body = alg.map(|a| json!({ "alg": a }));
                let out = admin
                    .call(reqwest::Method::POST, "/admin/keys/rotate", body)
                    .await?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ssf-hub: {e}");
            1
        }
    }
}

fn keygen(alg: &str, out: &std::path::Path, kid: Option<String>) -> Result<(), String> {
    let alg = SignAlg::parse(alg).map_err(|e| e.to_string())?;
    let (signer, pem) = SetSigner::generate(alg).map_err(|e| e.to_string())?;
    let signer = match kid {
        Some(kid) => SetSigner::from_pem(&pem, alg, Some(kid)).map_err(|e| e.to_string())?,
        None => signer,
    };
    let key_path = with_suffix(out, ".key.pem");
    let jwks_path = with_suffix(out, ".jwks.json");
    crate::sign::write_private(&key_path, &pem)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let jwks = serde_json::to_string_pretty(&signer.jwks()).map_err(|e| e.to_string())?;
    std::fs::write(&jwks_path, jwks + "\n").map_err(|e| format!("{}: {e}", jwks_path.display()))?;
    println!(
        "wrote {} (private) and {} (public, kid {})",
        key_path.display(),
        jwks_path.display(),
        signer.kid()
    );
    Ok(())
}

fn with_suffix(prefix: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Resolves `session-revoked`, `risc/account-disabled` or a full URI to a URI.
fn event_uri(name: &str) -> Result<String, String> {
    if name.contains("://") {
        // Unknown URIs are allowed on purpose: testing how a receiver treats them is a use.
        return Ok(name.to_owned());
    }
    EventKind::parse_name(name)
        .map(EventKind::uri)
        .ok_or_else(|| format!("unknown event type {name:?}"))
}

/// Builds the claims of a SET from `send` arguments.
pub fn build_claims(args: &SendArgs, now: u64) -> Result<Map<String, Value>, String> {
    let subject: Value = match (&args.subject, &args.email) {
        (Some(s), _) => serde_json::from_str(s).map_err(|e| format!("--subject: {e}"))?,
        (None, Some(email)) => json!({ "format": "email", "email": email }),
        (None, None) => return Err("give the subject with --subject or --email".into()),
    };
    let mut payload: Map<String, Value> = serde_json::from_str(&args.claims)
        .map_err(|e| format!("--claims must be a JSON object: {e}"))?;
    let uri = event_uri(&args.event)?;
    let is_ssf = EventKind::from_uri(&uri).is_some_and(|k| !k.has_common_claims());
    if !is_ssf {
        payload.entry("event_timestamp").or_insert(json!(now));
    }
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(args.iss));
    claims.insert("aud".into(), json!(args.aud));
    claims.insert(
        "jti".into(),
        json!(args
            .jti
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())),
    );
    claims.insert("iat".into(), json!(now));
    if let Some(txn) = &args.txn {
        claims.insert("txn".into(), json!(txn));
    }
    claims.insert("sub_id".into(), subject);
    claims.insert("events".into(), json!({ uri: payload }));
    Ok(claims)
}

async fn send(args: SendArgs) -> Result<(), String> {
    let alg = SignAlg::parse(&args.alg).map_err(|e| e.to_string())?;
    let pem = std::fs::read(&args.key).map_err(|e| format!("{}: {e}", args.key.display()))?;
    let signer = SetSigner::from_pem(&pem, alg, args.kid.clone()).map_err(|e| e.to_string())?;
    let claims = build_claims(&args, crate::unix_now())?;
    let set = signer.sign(&claims).map_err(|e| e.to_string())?;
    if args.print {
        println!("{set}");
        return Ok(());
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client
        .post(&args.url)
        .header("content-type", crate::set::SET_MEDIA_TYPE)
        .header("accept", "application/json")
        .body(set);
    if let Some(auth) = &args.authorization {
        req = req.header("authorization", auth);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("POST {}: {e}", args.url))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    println!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if !body.is_empty() {
        println!("{body}");
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "the receiver refused the SET (HTTP {})",
            status.as_u16()
        ))
    }
}

async fn tail(args: TailArgs) -> Result<(), String> {
    let token = args.admin.token()?;
    let wanted: Vec<String> = args
        .events
        .iter()
        .map(|e| event_uri(e))
        .collect::<Result<_, _>>()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let base = args.admin.url.trim_end_matches('/');
    let (path, items) = if args.revocations {
        ("revocations", "deltas")
    } else {
        ("events", "events")
    };
    let mut since = args.since;
    loop {
        let resp = client
            .get(format!("{base}/{path}"))
            .query(&[("since", since.to_string()), ("limit", "500".into())])
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| format!("GET {base}/{path}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!(
                "GET {base}/{path} answered HTTP {}",
                resp.status().as_u16()
            ));
        }
        let page: Value = serde_json::from_slice(&resp.bytes().await.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let list = page[items].as_array().cloned().unwrap_or_default();
        for item in &list {
            // Events carry their type and source at the top; deltas in their cause.
            let field = |name: &str| item[name].as_str().or_else(|| item["cause"][name].as_str());
            let type_ok = wanted.is_empty()
                || field("event_type").is_some_and(|t| wanted.iter().any(|w| w == t));
            let source_ok = args
                .source
                .as_deref()
                .is_none_or(|s| field("source") == Some(s));
            let subject_ok = args
                .subject_key
                .as_deref()
                .is_none_or(|k| item["subject_key"].as_str() == Some(k));
            if type_ok && source_ok && subject_ok {
                println!("{item}");
            }
        }
        let next = page["next"].as_u64().unwrap_or(since);
        let moved = next != since;
        since = next;
        if !moved {
            if !args.follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
