//! Human output: one block per finding, redacted unless asked otherwise.

use std::io::{self, Write};

use super::ReportOptions;
use crate::Finding;

struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Writes the findings for a person to read.
pub fn write(out: &mut dyn Write, findings: &[Finding], options: ReportOptions) -> io::Result<()> {
    let paint = Paint { on: options.color };
    for f in findings {
        let check = if f.validated.is_some() {
            " (checksum valid)"
        } else {
            ""
        };
        writeln!(
            out,
            "{} {}{}",
            paint.wrap("1;31", &f.rule_name),
            paint.wrap("2", &format!("[{}]", f.rule_id)),
            check
        )?;
        let location = if f.line == 0 {
            format!("{} (byte {})", f.path, f.column)
        } else {
            format!("{}:{}:{}", f.path, f.line, f.column)
        };
        writeln!(out, "  {}", paint.wrap("36", &location))?;
        let secret = if options.show_secrets {
            String::from_utf8_lossy(f.secret.expose()).into_owned()
        } else {
            f.secret.redacted()
        };
        writeln!(
            out,
            "  secret: {}  sha256: {}",
            paint.wrap("33", &secret),
            &f.secret_sha256[..16]
        )?;
        if let Some(c) = &f.commit {
            let short = &c.id[..c.id.len().min(12)];
            writeln!(
                out,
                "  commit: {short} by {} <{}> on {}",
                c.author, c.email, c.date
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}
