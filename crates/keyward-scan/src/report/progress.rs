//! A progress line on standard error for long scans.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::ScanStats;

/// A spinner showing inputs and bytes scanned. It appears only once the scan
/// has run for a second, so quick scans (pre-commit hooks) stay silent.
#[derive(Debug)]
pub struct Progress {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Progress {
    /// Starts showing progress of `stats` on standard error.
    pub fn start(stats: Arc<ScanStats>) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if stopped.recv_timeout(Duration::from_secs(1)) != Err(mpsc::RecvTimeoutError::Timeout)
            {
                return;
            }
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
            );
            loop {
                let inputs = stats.inputs.load(Ordering::Relaxed);
                let mb = stats.bytes.load(Ordering::Relaxed) as f64 / 1e6;
                bar.set_message(format!("{inputs} inputs, {mb:.0} MB scanned"));
                bar.tick();
                if stopped.recv_timeout(Duration::from_millis(100))
                    != Err(mpsc::RecvTimeoutError::Timeout)
                {
                    break;
                }
            }
            bar.finish_and_clear();
        });
        Self { stop, thread }
    }

    /// Stops and erases the progress line.
    pub fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}
