//! A progress bar on stderr, fed by an atomic counter the library updates.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Every bar of the process, stacked: `backup` runs several sources in
/// parallel, one bar each, and bars drawn on their own would overwrite
/// each other's line.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)))
}

/// A running progress bar; finished on drop.
pub struct Progress {
    counter: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts a bar when stderr is a terminal and not `quiet`; otherwise
    /// only the counter exists.
    pub fn start(message: &str, total: Option<u64>, quiet: bool) -> Progress {
        let counter = Arc::new(AtomicU64::new(0));
        let total_cell = Arc::new(AtomicU64::new(total.unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t).with_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{msg} {spinner} {bytes} {binary_bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            let bar = bars().add(bar);
            bar.set_message(message.to_string());
            let (counter, stop, total_cell) = (counter.clone(), stop.clone(), total_cell.clone());
            std::thread::spawn(move || {
                let mut known = total.is_some();
                while !stop.load(Ordering::Relaxed) {
                    let t = total_cell.load(Ordering::Relaxed);
                    if !known && t > 0 {
                        known = true;
                        bar.set_length(t);
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                    }
                    bar.set_position(counter.load(Ordering::Relaxed));
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.finish_and_clear();
                bars().remove(&bar);
            })
        });
        Progress {
            counter,
            total: total_cell,
            stop,
            thread,
        }
    }

    /// A cell the library may set to the total once it is known.
    pub fn total(&self) -> Arc<AtomicU64> {
        self.total.clone()
    }

    /// The counter to hand to the library.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.counter.clone()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
