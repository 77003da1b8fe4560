//! Running `keyward serve` as a child process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

pub fn keyward() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyward"))
}

/// A `keyward serve` process with the simulated upstream on a port-0 listener.
pub struct ServeProcess {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// Every line the server wrote to stderr (its log), as it arrives.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ServeProcess {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_logging(data_dir, extra, "info")
    }

    /// Starts with `KEYWARD_LOG` set to `log_filter`.
    pub fn start_logging(data_dir: &Path, extra: &[&str], log_filter: &str) -> Self {
        Self::start_at("127.0.0.1:0", data_dir, extra, log_filter)
    }

    /// Starts listening on `listen` (a fixed port, when the public URL must
    /// name it before the server starts).
    pub fn start_at(listen: &str, data_dir: &Path, extra: &[&str], log_filter: &str) -> Self {
        Self::start_full(listen, "simulated", data_dir, extra, log_filter)
    }

    /// Starts in front of `upstream` (a base URL, or `simulated`).
    pub fn start_full(
        listen: &str,
        upstream: &str,
        data_dir: &Path,
        extra: &[&str],
        log_filter: &str,
    ) -> Self {
        let mut child = keyward()
            .args([
                "serve",
                "--listen",
                listen,
                "--metrics-listen",
                "off",
                "--upstream",
                upstream,
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("KEYWARD_LOG", log_filter)
            .env_remove("KEYWARD_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("keyward serve starts");
        // The server logs its bound address once the socket is listening.
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!(
                    "keyward serve exited before listening:\n{}",
                    seen.join("\n")
                );
            };
            if line.contains("keyward is serving") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .expect("addr field")
                    .to_owned();
                break addr;
            }
            seen.push(line);
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        let log = Arc::new(Mutex::new(seen));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            url: format!("http://{addr}"),
            data_dir: data_dir.to_owned(),
            log,
        }
    }

    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("initial-admin-key"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Runs a client subcommand against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        keyward()
            .args(args)
            .env("KEYWARD_URL", &self.url)
            .env("KEYWARD_ADMIN_KEY", self.admin_key())
            .output()
            .unwrap()
    }

    /// Runs a client subcommand that must succeed and print JSON.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "keyward {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "keyward serve exited with {exit}");
    }
}

impl ServeProcess {
    /// Kills the process with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chat completion over plain HTTP, returning (status, body).
pub fn chat(url: &str, key: &str, body: serde_json::Value) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}
