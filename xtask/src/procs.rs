//! Child processes the benchmark starts, and the CPU time they use.

use anyhow::{bail, Context};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Service {
    name: &'static str,
    child: Child,
    /// Every process whose CPU time counts as this service's (nginx's workers).
    pids: Vec<u32>,
}

impl Service {
    /// Starts `cmd`; stdout and stderr go to `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(out.try_clone()?)
            .stderr(out)
            .stdin(std::process::Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let pid = child.id();
        Ok(Self {
            name,
            child,
            pids: vec![pid],
        })
    }

    /// The main process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `addr` accepts connections, failing if the process exits first.
    pub fn wait_listening(&mut self, addr: SocketAddr, log: &Path) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                bail!(
                    "{} exited ({status}) before listening on {addr}:\n{log}",
                    self.name
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not listen on {addr} within 30 s", self.name)
    }

    /// Also counts the direct children of the main process (nginx's workers).
    pub fn include_children(&mut self) {
        let me = self.pid();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                == Some(me)
            {
                self.pids.push(pid);
            }
        }
    }

    /// The service's processes (the main one, and its children when included).
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// CPU time (user + system) used so far by the service's processes.
    pub fn cpu(&self) -> Duration {
        self.pids.iter().map(|&p| cpu_of(p)).sum()
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `grace`, then kills.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Waits (up to 30 s) for an HTTP answer to `GET /healthz` from `addr`.
pub fn wait_answering(addr: SocketAddr) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("waiting for an answer from {addr}"))?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!(
            "{addr} answered /healthz with {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(())
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// CPU time of this process (the load generator).
pub fn own_cpu() -> Duration {
    cpu_of(std::process::id())
}

/// Fields of `/proc/<pid>/stat` after the command name: state, ppid, ….
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of a process (all its threads), from `/proc/<pid>/stat`.
fn cpu_of(pid: u32) -> Duration {
    let Some(f) = stat_fields(pid) else {
        return Duration::ZERO;
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 (from 0) after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}
