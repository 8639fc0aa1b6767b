//! The one error type of pxeroot-init's stages: what was being done, and
//! the cause underneath it (an errno, a parse error), said on one line as
//! "what: cause" on the console. Built with [`Context`] where a cause is
//! wrapped, [`InitError::new`] where pxeroot-init itself finds the fault.

use std::fmt;

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed step, with its context.
#[derive(Debug)]
pub(crate) struct InitError {
    what: String,
    cause: Option<Cause>,
}

impl InitError {
    /// A failure that has no underlying error (the message says it all).
    pub(crate) fn new(what: impl Into<String>) -> InitError {
        InitError { what: what.into(), cause: None }
    }

    /// The same failure, said inside `what` ("what: this").
    pub(crate) fn within(self, what: impl fmt::Display) -> InitError {
        InitError { what: format!("{what}: {}", self.what), cause: self.cause }
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        let mut cause = self.cause.as_deref().map(|c| c as &(dyn std::error::Error + 'static));
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl From<std::io::Error> for InitError {
    fn from(e: std::io::Error) -> InitError {
        // Without context, an io error reads as its own text.
        InitError { what: e.to_string(), cause: None }
    }
}

/// Context for a failed result: `.context("opening /dev/nbd0")`.
pub(crate) trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T, InitError>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, InitError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T, InitError> {
        self.map_err(|e| InitError { what: what.to_string(), cause: Some(Box::new(e)) })
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, InitError> {
        self.map_err(|e| InitError { what: what(), cause: Some(Box::new(e)) })
    }
}

impl<T> Context<T> for Result<T, InitError> {
    fn context(self, what: impl fmt::Display) -> Result<T, InitError> {
        self.map_err(|e| e.within(what))
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, InitError> {
        self.map_err(|e| e.within(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_context_reads_outside_in() {
        let e: Result<(), _> = Err(std::io::Error::from_raw_os_error(libc::ENOENT));
        let e = e.context("opening /dev/nbd0").context("attach /dev/nbd0 failed").unwrap_err();
        assert_eq!(e.to_string(), "attach /dev/nbd0 failed: opening /dev/nbd0: No such file or directory (os error 2)");
        assert_eq!(InitError::new("no partition table").to_string(), "no partition table");
        let bare = InitError::from(std::io::Error::from_raw_os_error(libc::EBUSY));
        assert_eq!(bare.within("mount /proc").to_string(), "mount /proc: Device or resource busy (os error 16)");
    }
}
