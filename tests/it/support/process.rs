//! The real `ssf-hub` binary as a child process, for tests that kill it or drive its CLI.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ssf-hub");

/// A running `ssf-hub serve`; killed with SIGKILL when dropped.
pub struct HubProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every line the hub wrote to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HubProcess {
    /// Starts `ssf-hub serve --config <config>` in `cwd` and waits for its listening line.
    pub fn start(config: &Path, cwd: &Path) -> HubProcess {
        HubProcess::start_logging(config, cwd, "info")
    }

    /// As [`HubProcess::start`], with `RUST_LOG` set to `filter`.
    pub fn start_logging(config: &Path, cwd: &Path, filter: &str) -> HubProcess {
        HubProcess::start_env(config, cwd, &[("RUST_LOG", filter)])
    }

    /// As [`HubProcess::start`], with these environment variables set.
    pub fn start_env(config: &Path, cwd: &Path, env: &[(&str, &str)]) -> HubProcess {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .current_dir(cwd)
            .env_remove("SSF_HUB_ADMIN_TOKEN")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ssf-hub");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line.clone());
                if !sent {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                    {
                        let _ = tx.send(Ok(addr));
                        sent = true;
                        continue;
                    }
                    if line.contains("ERROR") || line.starts_with("ssf-hub:") {
                        let _ = tx.send(Err(line));
                        sent = true;
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(addr)) => return HubProcess { child, addr, log },
                Ok(Err(line)) => panic!("ssf-hub failed to start: {line}"),
                Err(_) if Instant::now() > deadline => panic!("ssf-hub did not start in 60 s"),
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("ssf-hub exited early: {status}");
                    }
                }
            }
        }
    }

    /// The hub's stderr so far, one string.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of this hub's HTTP API.
    pub fn api(&self) -> super::Api {
        super::Api::at(self.base())
    }

    /// SIGKILL: no shutdown hooks, no flush, exactly like a crash.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args` in `cwd`; returns (exit success, stdout, stderr).
pub fn run_cli(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("SSF_HUB_ADMIN_TOKEN")
        .output()
        .expect("run ssf-hub");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config file for a [`HubProcess`] in `dir`: data in `dir/data`, the test admin token, the
/// `idp` source trusting `key`, and `delivery` (TOML lines for `[delivery]`, may be empty).
pub fn write_config(
    dir: &Path,
    key: &ssf_hub::sign::SetSigner,
    delivery: &str,
) -> std::path::PathBuf {
    use super::{write_jwks, ADMIN, AUD, ISS};
    let jwks = write_jwks(dir, "idp.jwks.json", &[key]);
    let config = dir.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nadmin_token = \"{ADMIN}\"\n\n\
             [delivery]\n{delivery}\n\n\
             [[sources]]\nid = \"idp\"\nissuer = \"{ISS}\"\njwks_file = \"{}\"\naudiences = [\"{AUD}\"]\n",
            jwks.display()
        ),
    )
    .expect("write config");
    config
}
