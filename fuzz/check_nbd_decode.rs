// Shared by the fuzz target and tests/fuzz_seeds.rs (included, not a module).
use nbd_wire::handshake::{parse_client_flags, ClientOption, OptionHeader};
use nbd_wire::Request;
use pxeroot::nbd::validate::{validate, ExportView, Op};

/// Properties: nothing panics; whatever decodes re-encodes to the same
/// value; a validated request lies inside the export and a read-only export
/// never yields a write.
pub fn check_nbd_decode(data: &[u8]) {
    let _ = parse_client_flags(data);
    if let Ok(Some((h, used))) = OptionHeader::parse(data) {
        let body = &data[used..];
        let body = &body[..body.len().min(h.length as usize)];
        if let Ok(opt) = ClientOption::parse(h.option, body) {
            let mut again = Vec::new();
            opt.encode(&mut again);
            let (h2, n) = OptionHeader::parse(&again).unwrap().unwrap();
            assert_eq!(ClientOption::parse(h2.option, &again[n..]).unwrap(), opt);
        }
    }
    if let Ok(Some((req, _))) = Request::parse(data) {
        assert_eq!(Request::parse(&req.encode()).unwrap().unwrap().0, req);
        let size = data.len() as u64 * 4096;
        for (read_only, structured) in [(false, false), (true, true)] {
            let view = ExportView { size, read_only, structured, base_allocation: structured };
            if let Ok(op) = validate(&req, &view) {
                let range = match op {
                    Op::Read { offset, length } | Op::Cache { offset, length } => Some((offset, length)),
                    Op::Write { offset, length, .. } | Op::Trim { offset, length, .. } => Some((offset, length)),
                    Op::Zero { offset, length, .. } | Op::BlockStatus { offset, length, .. } => Some((offset, length)),
                    Op::Flush | Op::Disconnect => None,
                };
                if let Some((o, l)) = range {
                    assert!(o + l as u64 <= size);
                }
                if read_only {
                    assert!(!matches!(op, Op::Write { .. } | Op::Trim { .. } | Op::Zero { .. }));
                }
            }
        }
    }
}
