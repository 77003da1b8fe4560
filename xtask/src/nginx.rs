//! Debian's nginx as the reference for "just forwarding": a plain reverse proxy
//! with keep-alive connections to the same simulated upstream.

use crate::procs::Service;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The nginx binary, from `PATH` or `/usr/sbin` (where Debian puts it).
pub fn find() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file());
    match found {
        Some(p) => Ok(p),
        None => bail!(
            "nginx was not found (looked in PATH and /usr/sbin). The gateway benchmark compares keyward \
             with nginx as a plain reverse proxy; install Debian's nginx with:\n\n    sudo apt-get install -y nginx\n\n\
             (the benchmark runs its own nginx from a generated config on a loopback port; \
             the system service need not be running)"
        ),
    }
}

/// The version line `nginx -v` prints.
pub fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_else(|_| "nginx (unknown version)".into())
}

/// Starts nginx in the foreground, listening on `listen` and proxying everything to
/// `upstreams` (round robin), with its config, pid file, logs and temp dirs under `dir`, each
/// worker holding up to `connections` connections (a proxied request takes two).
pub fn start(
    bin: &Path,
    dir: &Path,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
    connections: usize,
) -> anyhow::Result<Service> {
    let d = dir.display();
    let servers: String = upstreams.iter().map(|u| format!("server {u}; ")).collect();
    // Each connection is a file; nginx may raise its limit up to the hard one.
    let files = (connections + 64).min(hard_file_limit());
    // `proxy_buffering off` forwards each upstream read at once, as keyward forwards
    // SSE chunk by chunk; the high `keepalive_requests` keep nginx (default 1000)
    // from closing connections in the middle of a run.
    let conf = format!(
        r#"daemon off;
worker_processes auto;
worker_rlimit_nofile {files};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream simulator {{
        {servers}
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://simulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).with_context(|| format!("writing {}", conf_path.display()))?;
    let log = dir.join("nginx.out");
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.join("error.log"));
    let mut svc = Service::spawn("nginx", cmd, &log)?;
    svc.wait_listening(listen, &dir.join("error.log"))?;
    svc.include_children();
    Ok(svc)
}

/// This process's hard limit on open files (`/proc/self/limits`), which a
/// child may raise its soft limit to; 4096 when unreadable.
pub fn hard_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(4_096)
}
