//! Email deliveries over SMTP (`lettre`). The password comes from an environment
//! variable the configuration names; it is never logged.

use super::Failure;
use keyward_core::Secret;
use keyward_store::Delivery;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain text (a relay on loopback or a private network only).
    None,
    /// STARTTLS, required.
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

/// Outgoing email settings.
#[derive(Clone, Debug)]
pub struct SmtpSettings {
    /// Server host name.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Connection security.
    pub security: SmtpSecurity,
    /// The `From:` address.
    pub sender: String,
    /// User name and password, if the server wants them.
    pub credentials: Option<(String, Secret)>,
}

fn transport(
    s: &SmtpSettings,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, Failure> {
    let builder = match s.security {
        SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host),
        SmtpSecurity::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)
            .map_err(|e| fail(format!("SMTP TLS setup: {e}")))?,
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host)
            .map_err(|e| fail(format!("SMTP TLS setup: {e}")))?,
    };
    let mut builder = builder.port(s.port).timeout(Some(timeout));
    if let Some((user, password)) = &s.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(builder.build())
}

fn fail(reason: String) -> Failure {
    Failure {
        status: None,
        reason,
    }
}

/// The plain-text body of an event's email.
pub fn body(d: &Delivery) -> String {
    let p = &d.payload;
    let mut text = format!(
        "{}\n\n",
        p["summary"].as_str().unwrap_or(d.event_type.as_str())
    );
    if let Some(data) = p["data"].as_object() {
        for (k, v) in data {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text.push_str(&format!("{k}: {v}\n"));
        }
    }
    text.push_str(&format!("\nEvent id: {}\n", d.event_id));
    text
}

/// Sends one event to `to`.
pub async fn send(
    s: &SmtpSettings,
    to: &str,
    d: &Delivery,
    timeout: Duration,
) -> Result<(), Failure> {
    let from: Mailbox = s
        .sender
        .parse()
        .map_err(|e| fail(format!("sender address: {e}")))?;
    let to: Mailbox = to
        .parse()
        .map_err(|e| fail(format!("recipient address: {e}")))?;
    let subject = format!(
        "[keyward] {}",
        d.payload["summary"]
            .as_str()
            .unwrap_or(d.event_type.as_str())
    );
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .message_id(Some(format!("<{}.{}@keyward>", d.event_id, d.target_id)))
        .body(body(d))
        .map_err(|e| fail(format!("building the message: {e}")))?;
    deliver(s, message, timeout).await
}

/// Sends one message now, outside the outbox: for mail that carries a
/// single-use secret (a reset or invitation link), which must not be kept in
/// the delivery log. A failure is the caller's to report; the person asks again.
pub async fn send_now(
    s: &SmtpSettings,
    to: &str,
    subject: &str,
    text: String,
    timeout: Duration,
) -> Result<(), Failure> {
    let from: Mailbox = s
        .sender
        .parse()
        .map_err(|e| fail(format!("sender address: {e}")))?;
    let to: Mailbox = to
        .parse()
        .map_err(|e| fail(format!("recipient address: {e}")))?;
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(format!("[keyward] {subject}"))
        .body(text)
        .map_err(|e| fail(format!("building the message: {e}")))?;
    deliver(s, message, timeout).await
}

async fn deliver(s: &SmtpSettings, message: Message, timeout: Duration) -> Result<(), Failure> {
    transport(s, timeout)?
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| fail(format!("SMTP: {e}")))
}
