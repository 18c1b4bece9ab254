//! Guest text on its way into the gateway log: a per-handler budget of log
//! lines, and escaping so that a guest can neither forge a line nor send
//! its own terminal escapes.
//!
//! The budget is a token bucket per (tenant, handler), shared by all its
//! requests and versions, and by the gateway's own lines about its traps:
//! `limits.log_lines_per_second` lines are earned per second, and as many
//! can be saved up for a burst. So in any window of T seconds a handler
//! writes at most `rate × (T + 1)` lines, however many requests it runs at
//! once. Lines over the budget are dropped, counted in
//! `wasmgate_guest_log_lines_dropped_total`, and summarised in one line at
//! most every [`SUMMARY_INTERVAL`]. The summary rides on the handler's next
//! log line (written or dropped) or the end of its next request, whichever
//! comes first once the interval has passed since the first drop it
//! reports; a handler that never runs again keeps its last summary (the
//! counter always has the total). No timer thread is needed for that.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// Shortest time one summary of dropped lines covers, so a flooding
/// handler adds at most one summary line per interval.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// One line in bucket units. Tokens are kept in billionths of a line so
/// that a nanosecond earns exactly `rate` units: integer arithmetic, no
/// rounding drift however often the bucket is refilled.
const LINE: u128 = 1_000_000_000;

/// Appended to text cut by [`escape`], so a reader knows it was cut.
const CUT_MARK: &str = "…";

/// The bucket's state; small, so one lock per line is cheap.
#[derive(Debug)]
struct Bucket {
    /// Lines earned per second, and the most that can be saved up.
    rate: u32,
    /// Saved-up tokens in units of [`LINE`]; at most `rate` lines.
    tokens: u128,
    /// Up to when `tokens` has been earned.
    refilled: Instant,
    /// Lines dropped since the last summary.
    dropped: u64,
    /// When the first of those was dropped: where the next summary starts.
    first_drop: Option<Instant>,
}

impl Bucket {
    fn capacity(&self) -> u128 {
        u128::from(self.rate) * LINE
    }

    /// Earns the tokens due since the last refill. A `now` earlier than
    /// that (callers read the clock before taking the lock) earns nothing.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_nanos();
        let earned = elapsed.saturating_mul(u128::from(self.rate));
        self.tokens = self.tokens.saturating_add(earned).min(self.capacity());
        self.refilled = self.refilled.max(now);
    }

    /// Takes one line's token, or counts the line as dropped.
    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= LINE {
            self.tokens -= LINE;
            return true;
        }
        self.dropped = self.dropped.saturating_add(1);
        self.first_drop.get_or_insert(now);
        false
    }

    /// The drops to report, once [`SUMMARY_INTERVAL`] has passed since the
    /// first of them; reporting starts a new period.
    fn summary(&mut self, now: Instant) -> Option<Summary> {
        let over = now.saturating_duration_since(self.first_drop?);
        if over < SUMMARY_INTERVAL {
            return None;
        }
        self.first_drop = None;
        Some(Summary {
            dropped: std::mem::take(&mut self.dropped),
            over,
        })
    }
}

/// Lines dropped over a period, due to be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Summary {
    /// How many.
    dropped: u64,
    /// From the first of them until the summary was due.
    over: Duration,
}

/// The log-line budget of one (tenant, handler).
#[derive(Debug)]
pub struct LogLimiter {
    /// The tenant, for the summary line.
    tenant: String,
    /// The handler, for the summary line.
    handler: String,
    /// The budget and the drops not yet summarised.
    bucket: Mutex<Bucket>,
    /// Whether the bucket holds drops not yet summarised, as of its last
    /// change: the end of every request reads this, not the lock and the
    /// clock ([`LogLimiter::flush_if_due`]).
    unreported: AtomicBool,
    /// Every dropped line, as it is dropped, so the metric is always exact.
    dropped: IntCounter,
}

impl LogLimiter {
    /// A full bucket earning `lines_per_second` lines a second from `now`;
    /// each dropped line increments `dropped`.
    pub fn new(
        tenant: &str,
        handler: &str,
        lines_per_second: u32,
        dropped: IntCounter,
        now: Instant,
    ) -> Self {
        let rate = lines_per_second;
        Self {
            tenant: tenant.to_owned(),
            handler: handler.to_owned(),
            bucket: Mutex::new(Bucket {
                rate,
                tokens: u128::from(rate) * LINE,
                refilled: now,
                dropped: 0,
                first_drop: None,
            }),
            unreported: AtomicBool::new(false),
            dropped,
        }
    }

    /// Changes the rate (a handler's limits come from its tenant's, known
    /// only when it is configured). Savings above the new burst are lost.
    pub fn set_rate(&self, lines_per_second: u32) {
        let mut bucket = self.lock();
        bucket.rate = lines_per_second;
        bucket.tokens = bucket.tokens.min(bucket.capacity());
    }

    /// Whether one more line may be written at `now`. A dropped line is
    /// counted; a summary of earlier drops that is due is written first.
    pub fn permit(&self, now: Instant) -> bool {
        let (permitted, summary) = {
            let mut bucket = self.lock();
            let permitted = bucket.take(now);
            (permitted, self.summary(&mut bucket, now))
        };
        if !permitted {
            self.dropped.inc();
        }
        if let Some(summary) = summary {
            self.write_summary(summary);
        }
        permitted
    }

    /// Writes the summary of earlier drops if one is due at `now`: called
    /// at the end of each request, so a handler that stopped logging still
    /// gets its summary.
    pub fn flush(&self, now: Instant) {
        let summary = self.summary(&mut self.lock(), now);
        if let Some(summary) = summary {
            self.write_summary(summary);
        }
    }

    /// [`LogLimiter::flush`] now, if any drop is not yet summarised: a
    /// handler that never drops a line costs one atomic read per request.
    pub fn flush_if_due(&self) {
        if self.unreported.load(Ordering::Relaxed) {
            self.flush(Instant::now());
        }
    }

    /// The bucket's summary if one is due, keeping `unreported` in step.
    fn summary(&self, bucket: &mut Bucket, now: Instant) -> Option<Summary> {
        let summary = bucket.summary(now);
        self.unreported
            .store(bucket.first_drop.is_some(), Ordering::Relaxed);
        summary
    }

    fn write_summary(&self, summary: Summary) {
        let (tenant, handler) = (self.tenant.as_str(), self.handler.as_str());
        tracing::warn!(
            %tenant,
            %handler,
            dropped = summary.dropped,
            "dropped {} log lines of {tenant}/{handler} in the last {:.1}s (limits.log_lines_per_second)",
            summary.dropped,
            summary.over.as_secs_f64(),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // The bucket is consistent after every statement that changes it,
        // so a panic elsewhere while it was held leaves nothing to repair.
        self.bucket.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `c` is shown as an escape: control characters (C0, DEL, C1),
/// the Unicode line and paragraph separators (some log viewers break lines
/// there), and the backslash itself, so an escape in the output always
/// means the guest sent that character, never that it typed the escape.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\\' | '\u{2028}' | '\u{2029}')
}

/// `text` as one log line of at most `max` bytes: the characters of
/// [`needs_escape`] as `\n`, `\r`, `\t`, `\\` or `\u{1b}`, everything else
/// as it is. Text that does not fit is cut on a character boundary and
/// ends with `…`, still within `max` bytes. Text that needs neither is
/// returned as it is, without copying.
pub(crate) fn escape(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max && !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max));
    // The length of `out` that still leaves room for the cut mark.
    let mut room_for_mark = 0;
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        match c {
            '\n' => piece.push_str("\\n"),
            '\r' => piece.push_str("\\r"),
            '\t' => piece.push_str("\\t"),
            '\\' => piece.push_str("\\\\"),
            c if needs_escape(c) => {
                // Writing to a String cannot fail.
                let _ = write!(piece, "\\u{{{:x}}}", u32::from(c));
            }
            c => piece.push(c),
        }
        if out.len() + piece.len() > max {
            out.truncate(room_for_mark);
            if out.len() + CUT_MARK.len() <= max {
                out.push_str(CUT_MARK);
            }
            return Cow::Owned(out);
        }
        out.push_str(&piece);
        if out.len() + CUT_MARK.len() <= max {
            room_for_mark = out.len();
        }
    }
    Cow::Owned(out)
}

/// Everything written to the log while `f` runs, at level INFO and up,
/// without colours, as the gateway writes it to a file (for tests).
#[cfg(test)]
pub(crate) fn captured_log(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer({
            let capture = capture.clone();
            move || capture.clone()
        })
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = capture.0.lock().expect("not poisoned").clone();
    String::from_utf8(bytes).expect("the log is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, now: Instant) -> LogLimiter {
        let dropped = IntCounter::new("dropped", "dropped lines").expect("valid metric");
        LogLimiter::new("t", "h", rate, dropped, now)
    }

    /// How many of `n` lines at `now` are let through.
    fn permitted(limiter: &LogLimiter, n: u32, now: Instant) -> u32 {
        (0..n).map(|_| u32::from(limiter.permit(now))).sum()
    }

    fn pending(limiter: &LogLimiter) -> (u64, Option<Instant>) {
        let bucket = limiter.lock();
        (bucket.dropped, bucket.first_drop)
    }

    #[test]
    fn a_full_bucket_lets_a_burst_of_rate_lines_through_then_drops() {
        let t0 = Instant::now();
        let l = limiter(10, t0);
        assert_eq!(permitted(&l, 1000, t0), 10);
        assert_eq!(l.dropped.get(), 990);
    }

    #[test]
    fn lines_are_earned_at_the_rate_and_saved_up_to_the_burst() {
        let t0 = Instant::now();
        let l = limiter(10, t0);
        assert_eq!(permitted(&l, 10, t0), 10);
        // One line per 100 ms, exactly: not a moment before.
        assert!(!l.permit(t0 + Duration::from_nanos(99_999_999)));
        assert!(l.permit(t0 + Duration::from_millis(100)));
        assert!(!l.permit(t0 + Duration::from_millis(100)));
        // 2.5 s later: 25 lines earned, but only 10 are kept.
        let later = t0 + Duration::from_millis(2_600);
        assert_eq!(permitted(&l, 100, later), 10);
        // After the burst, lines come at the rate: about 50 in 5 s, so with
        // the burst at most rate × (T + 1) lines in T seconds.
        let mut through = 0;
        for ms in (0..=5_000).step_by(7) {
            through += permitted(&l, 3, later + Duration::from_millis(ms));
        }
        assert!(through <= 10 * 6, "{through}");
        assert!(through >= 10 * 5 - 1, "{through}");
    }

    #[test]
    fn a_clock_read_before_an_earlier_refill_earns_nothing() {
        let t0 = Instant::now();
        let l = limiter(1, t0);
        assert!(l.permit(t0 + Duration::from_secs(1)));
        // A caller that read the clock before the one above took the lock.
        assert!(!l.permit(t0));
        assert!(!l.permit(t0 + Duration::from_secs(1)));
        assert!(l.permit(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn rate_zero_drops_everything_and_extremes_do_not_overflow() {
        let t0 = Instant::now();
        let silent = limiter(0, t0);
        let years = t0 + Duration::from_secs(100 * 365 * 86_400);
        assert_eq!(permitted(&silent, 5, years), 0);
        assert_eq!(silent.dropped.get(), 5);

        let huge = limiter(u32::MAX, t0);
        assert_eq!(permitted(&huge, 1000, years), 1000);
        assert_eq!(huge.dropped.get(), 0);
    }

    #[test]
    fn set_rate_changes_the_rate_and_caps_savings_at_the_new_burst() {
        let t0 = Instant::now();
        let l = limiter(100, t0);
        l.set_rate(3);
        assert_eq!(permitted(&l, 100, t0), 3);
        l.set_rate(50);
        // Earned at the new rate from the last refill.
        assert_eq!(permitted(&l, 100, t0 + Duration::from_millis(100)), 5);
    }

    #[test]
    fn drops_are_summarised_at_most_once_per_interval_and_the_count_is_exact() {
        let t0 = Instant::now();
        let l = limiter(1, t0);
        assert!(l.permit(t0));
        // Nothing dropped: a request's end looks at no lock or clock.
        assert!(!l.unreported.load(Ordering::Relaxed));
        assert_eq!(permitted(&l, 4, t0 + Duration::from_millis(10)), 0);
        assert_eq!(pending(&l), (4, Some(t0 + Duration::from_millis(10))));
        assert!(l.unreported.load(Ordering::Relaxed));
        // Not yet a second since the first drop: nothing is reported.
        l.flush(t0 + Duration::from_millis(1_009));
        assert_eq!(pending(&l).0, 4);
        // The next line (permitted: a token was earned) reports the four.
        assert!(l.permit(t0 + Duration::from_millis(1_010)));
        assert_eq!(pending(&l), (0, None));
        assert!(!l.unreported.load(Ordering::Relaxed));
        // A new period starts at the next drop, and a request's end
        // reports it once it is a second old.
        assert!(!l.permit(t0 + Duration::from_millis(1_500)));
        l.flush(t0 + Duration::from_millis(2_499));
        assert_eq!(pending(&l).0, 1);
        assert!(l.unreported.load(Ordering::Relaxed));
        l.flush(t0 + Duration::from_millis(2_500));
        assert_eq!(pending(&l), (0, None));
        assert!(!l.unreported.load(Ordering::Relaxed));
        assert_eq!(l.dropped.get(), 5);
    }

    #[test]
    fn summary_reports_what_was_dropped_over_which_period() {
        let t0 = Instant::now();
        let mut bucket = Bucket {
            rate: 0,
            tokens: 0,
            refilled: t0,
            dropped: 0,
            first_drop: None,
        };
        assert!(!bucket.take(t0 + Duration::from_millis(200)));
        assert!(!bucket.take(t0 + Duration::from_millis(900)));
        assert_eq!(bucket.summary(t0 + Duration::from_millis(1_100)), None);
        assert_eq!(
            bucket.summary(t0 + Duration::from_millis(1_700)),
            Some(Summary {
                dropped: 2,
                over: Duration::from_millis(1_500)
            })
        );
        assert_eq!(bucket.summary(t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn control_characters_and_backslashes_are_escaped() {
        let cases = [
            ("a\nb", r"a\nb"),
            ("a\r\nb", r"a\r\nb"),
            ("tab\there", r"tab\there"),
            ("\x1b[31mred\x1b[0m", r"\u{1b}[31mred\u{1b}[0m"),
            ("nul\0bel\x07del\x7f", r"nul\u{0}bel\u{7}del\u{7f}"),
            // C1 controls: NEL and the 8-bit CSI.
            ("nel\u{85}csi\u{9b}2J", r"nel\u{85}csi\u{9b}2J"),
            ("line\u{2028}para\u{2029}", r"line\u{2028}para\u{2029}"),
            (r"C:\path\n", r"C:\\path\\n"),
        ];
        for (raw, shown) in cases {
            assert_eq!(escape(raw, 4096), shown, "{raw:?}");
        }
    }

    #[test]
    fn printable_text_is_kept_as_it_is_without_copying() {
        for text in [
            "plain text",
            "héllo wörld 日本語 🦀",
            "quotes \" and ' kept",
            "",
        ] {
            assert!(matches!(escape(text, 4096), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn escaped_text_is_bounded_and_cut_on_a_character_boundary() {
        // Each ESC becomes six bytes: without a bound, 4 KiB would be 24.
        let escapes = "\x1b".repeat(4096);
        let shown = escape(&escapes, 4096);
        assert!(shown.len() <= 4096, "{}", shown.len());
        assert!(shown.ends_with(CUT_MARK));
        assert!(shown.trim_end_matches(CUT_MARK).len() >= 4096 - 6 - CUT_MARK.len());
        assert!(!shown.contains('\x1b'));

        assert_eq!(escape("hello", 5), "hello");
        assert_eq!(escape("hello world", 8), "hello…");
        // 'é' is two bytes and is never split.
        assert_eq!(escape("héllo", 5), "h…");
        assert_eq!(escape("ééé", 4), "…");
        // An escape is never split either.
        assert_eq!(escape("ab\ncd", 6), r"ab\ncd");
        assert_eq!(escape("ab\ncd", 5), "ab…");
        // Too small even for the mark: just cut.
        assert_eq!(escape("hello", 2), "");
        for max in 0..40 {
            let text = "x\u{1b}é\n🦀".repeat(5);
            let shown = escape(&text, max);
            assert!(shown.len() <= max, "max {max}: {shown:?}");
        }
    }
}
