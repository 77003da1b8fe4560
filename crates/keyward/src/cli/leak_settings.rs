//! Leak-response settings of `keyward serve`: GitHub's public keys and SMTP.
//! The SMTP password is read from the environment variable the settings name.

use anyhow::{bail, Context};
use keyward_core::Secret;
use keyward_gateway::config::LeakSettings;
use keyward_gateway::github::GithubKeys;
use keyward_gateway::notify::email::{SmtpSecurity, SmtpSettings};
use std::path::Path;

/// The merged flag/env/file values.
pub struct LeakArgs<'a> {
    pub github_public_keys: Option<&'a Path>,
    pub github_public_keys_url: Option<String>,
    pub smtp_server: Option<String>,
    pub smtp_port: Option<u16>,
    pub smtp_security: Option<&'a str>,
    pub smtp_sender: Option<String>,
    pub smtp_username: Option<String>,
    pub smtp_password_env: Option<&'a str>,
}

pub fn from_args(a: LeakArgs<'_>) -> anyhow::Result<LeakSettings> {
    let mut s = LeakSettings::default();
    if let Some(path) = a.github_public_keys {
        s.github_keys = GithubKeys::load_file(path)
            .with_context(|| format!("GitHub public keys {}", path.display()))?;
        if s.github_keys.is_empty() {
            bail!(
                "GitHub public keys {}: the document has no keys",
                path.display()
            );
        }
    }
    s.github_keys_url = a.github_public_keys_url;
    if let Some(host) = a.smtp_server {
        let security = match a.smtp_security.unwrap_or("starttls") {
            "starttls" => SmtpSecurity::StartTls,
            "tls" => SmtpSecurity::Tls,
            "none" => SmtpSecurity::None,
            other => bail!("invalid SMTP security {other:?}: use starttls, tls or none"),
        };
        let sender = a
            .smtp_sender
            .context("--smtp-sender is required with --smtp-server")?;
        let credentials = match (a.smtp_username, a.smtp_password_env) {
            (Some(user), Some(var)) => {
                let password = std::env::var(var)
                    .with_context(|| format!("the SMTP password variable {var} is not set"))?;
                Some((user, Secret::new(password)))
            }
            (Some(_), None) => bail!("--smtp-username needs --smtp-password-env (the name of the variable holding the password)"),
            _ => None,
        };
        s.notify.smtp = Some(SmtpSettings {
            host,
            port: a.smtp_port.unwrap_or(match security {
                SmtpSecurity::Tls => 465,
                _ => 587,
            }),
            security,
            sender,
            credentials,
        });
    }
    Ok(s)
}
