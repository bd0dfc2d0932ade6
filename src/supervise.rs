//! What happens when something that must not stop, stops.
//!
//! A panic is caught where it can be kept to one event (sinks, the file sink's
//! writes) and described with [`panic_text`]. Where it cannot, or where a sync
//! failed and the data's fate is unknown, the process stops ([`stop`],
//! [`stop_after_failed_sync`]): what was answered 200 is in the spool, and the next
//! start delivers it.

use std::any::Any;
use std::io;

/// Process exit status when the disk fails a sync: nothing is answered 200 after it.
pub const EXIT_FSYNC_FAILED: i32 = 74;

/// What a panic said, for logs and dead-letter reasons.
pub fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Stops the process after a failed fdatasync (of the spool, or of anything whose
/// sync lets the spool forget events): the data's fate is unknown, and a retried
/// sync can report success for writes the kernel dropped.
pub fn stop_after_failed_sync(what: &str, e: &io::Error) -> ! {
    stop(&format!("{what} fdatasync failed: {e}"))
}

/// Stops the process: a thread the delivery contract depends on cannot go on.
pub fn stop(message: &str) -> ! {
    tracing::error!("{message}; stopping so that nothing unsynced is acknowledged");
    eprintln!("hookrelay: fatal: {message}");
    std::process::exit(EXIT_FSYNC_FAILED);
}
