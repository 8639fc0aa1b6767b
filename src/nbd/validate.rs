//! A request is validated whole, as a pure function of the request and the
//! export, before storage sees it: command, flags, range, size cap,
//! read-only. What comes out is an [`Op`] storage can run without checks.

use nbd_wire::consts::*;
use nbd_wire::limits::MAX_PAYLOAD;
use nbd_wire::{Command, Request};

/// The export as the validator sees it.
#[derive(Debug, Clone, Copy)]
pub struct ExportView {
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    pub base_allocation: bool,
}

/// A validated operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read { offset: u64, length: u32 },
    Write { offset: u64, length: u32, fua: bool },
    Flush,
    Trim { offset: u64, length: u32, fua: bool },
    Zero { offset: u64, length: u32, fua: bool, no_hole: bool, fast: bool },
    Cache { offset: u64, length: u32 },
    BlockStatus { offset: u64, length: u32, req_one: bool },
    Disconnect,
}

/// Why a request is refused: the errno for the reply, and whether the
/// connection must close afterwards because its payload cannot be skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub errno: u32,
    pub message: String,
    pub close: bool,
}

fn reject(errno: u32, message: impl Into<String>) -> Rejection {
    Rejection { errno, message: message.into(), close: false }
}

/// Flags each command may carry.
fn allowed_flags(cmd: Command, v: &ExportView) -> u16 {
    match cmd {
        Command::Read if v.structured => CMD_FLAG_DF,
        Command::Write | Command::Trim => CMD_FLAG_FUA,
        Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        Command::BlockStatus => CMD_FLAG_REQ_ONE,
        _ => 0,
    }
}

pub fn validate(req: &Request, v: &ExportView) -> Result<Op, Rejection> {
    let (offset, length) = (req.offset, req.length);
    if let Command::Unknown(c) = req.command {
        return Err(reject(EINVAL, format!("unknown command {c}")));
    }
    // A WRITE whose payload we will not read leaves the stream out of sync.
    let oversized_write = req.command == Command::Write && length > MAX_PAYLOAD;
    if oversized_write {
        return Err(Rejection {
            errno: EINVAL,
            message: format!("write of {length} bytes exceeds the {MAX_PAYLOAD}-byte maximum payload"),
            close: true,
        });
    }
    let extra = req.flags & !allowed_flags(req.command, v);
    if extra != 0 {
        return Err(reject(EINVAL, format!("flags 0x{extra:x} are not valid for {:?}", req.command)));
    }
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let in_range = offset.checked_add(length as u64).is_some_and(|end| end <= v.size);
    let range_err = |cmd: &str| reject(EINVAL, format!("{cmd} of {length} bytes at {offset} is outside the {}-byte export", v.size));
    let writable = |cmd: &str| {
        if v.read_only {
            Err(reject(EPERM, format!("{cmd} on a read-only export")))
        } else {
            Ok(())
        }
    };
    match req.command {
        Command::Read => {
            if length > MAX_PAYLOAD {
                return Err(reject(EINVAL, format!("read of {length} bytes exceeds the {MAX_PAYLOAD}-byte maximum payload")));
            }
            if !in_range {
                return Err(range_err("read"));
            }
            Ok(Op::Read { offset, length })
        }
        Command::Write => {
            writable("write")?;
            if !in_range {
                return Err(reject(ENOSPC, format!("write of {length} bytes at {offset} is past the end of the {}-byte export", v.size)));
            }
            Ok(Op::Write { offset, length, fua })
        }
        Command::Flush => {
            if offset != 0 || length != 0 {
                return Err(reject(EINVAL, "flush must have offset and length 0"));
            }
            Ok(Op::Flush)
        }
        Command::Trim => {
            writable("trim")?;
            if !in_range {
                return Err(range_err("trim"));
            }
            Ok(Op::Trim { offset, length, fua })
        }
        Command::WriteZeroes => {
            writable("write zeroes")?;
            if !in_range {
                return Err(range_err("write zeroes"));
            }
            Ok(Op::Zero { offset, length, fua, no_hole: req.flags & CMD_FLAG_NO_HOLE != 0, fast: req.flags & CMD_FLAG_FAST_ZERO != 0 })
        }
        Command::Cache => {
            if !in_range {
                return Err(range_err("cache"));
            }
            Ok(Op::Cache { offset, length })
        }
        Command::BlockStatus => {
            if !v.base_allocation {
                return Err(reject(EINVAL, "block status without a negotiated metadata context"));
            }
            if length == 0 || !in_range {
                return Err(range_err("block status"));
            }
            Ok(Op::BlockStatus { offset, length, req_one: req.flags & CMD_FLAG_REQ_ONE != 0 })
        }
        Command::Disc => Ok(Op::Disconnect),
        Command::Unknown(_) => Err(reject(EINVAL, "unknown command")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: ExportView = ExportView { size: 1 << 20, read_only: false, structured: true, base_allocation: true };
    const RO: ExportView = ExportView { size: 1 << 20, read_only: true, structured: false, base_allocation: false };

    fn req(command: Command, flags: u16, offset: u64, length: u32) -> Request {
        Request { flags, command, cookie: 1, offset, length }
    }

    #[test]
    fn test_validate_read_in_range_ok() {
        assert_eq!(validate(&req(Command::Read, 0, 4096, 4096), &RW), Ok(Op::Read { offset: 4096, length: 4096 }));
        assert_eq!(validate(&req(Command::Read, 0, 1 << 20, 0), &RW), Ok(Op::Read { offset: 1 << 20, length: 0 }));
    }

    #[test]
    fn test_validate_out_of_range_errnos() {
        assert_eq!(validate(&req(Command::Read, 0, (1 << 20) - 1, 2), &RW).unwrap_err().errno, EINVAL);
        assert_eq!(validate(&req(Command::Write, 0, 1 << 20, 1), &RW).unwrap_err().errno, ENOSPC);
        assert_eq!(validate(&req(Command::Trim, 0, u64::MAX, 2), &RW).unwrap_err().errno, EINVAL);
        assert_eq!(validate(&req(Command::Read, 0, 0, MAX_PAYLOAD + 1), &RW).unwrap_err().errno, EINVAL);
    }

    #[test]
    fn test_validate_oversized_write_closes() {
        let r = validate(&req(Command::Write, 0, 0, MAX_PAYLOAD + 1), &RW).unwrap_err();
        assert!(r.close);
    }

    #[test]
    fn test_validate_read_only_refuses_writes_with_eperm() {
        for c in [Command::Write, Command::Trim, Command::WriteZeroes] {
            assert_eq!(validate(&req(c, 0, 0, 512), &RO).unwrap_err().errno, EPERM);
        }
    }

    #[test]
    fn test_validate_flags_per_command() {
        assert!(validate(&req(Command::Read, CMD_FLAG_FUA, 0, 1), &RW).is_err());
        assert!(validate(&req(Command::Read, CMD_FLAG_DF, 0, 1), &RO).is_err());
        assert!(validate(&req(Command::Read, CMD_FLAG_DF, 0, 1), &RW).is_ok());
        assert!(validate(&req(Command::WriteZeroes, CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE, 0, 1), &RW).is_ok());
        assert!(validate(&req(Command::Write, 0x100, 0, 1), &RW).is_err());
    }

    #[test]
    fn test_validate_unknown_command_and_block_status_without_context() {
        assert_eq!(validate(&req(Command::Unknown(77), 0, 0, 0), &RW).unwrap_err().errno, EINVAL);
        assert_eq!(validate(&req(Command::BlockStatus, 0, 0, 1), &RO).unwrap_err().errno, EINVAL);
        assert!(validate(&req(Command::Flush, 0, 1, 0), &RW).is_err());
    }
}
