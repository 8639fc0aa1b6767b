//! Generic netlink messages for the kernel's NBD family, sans-IO: build
//! requests as bytes, parse replies and events from bytes. The socket lives
//! in `sys.rs`. Constants: include/uapi/linux/nbd-netlink.h, genetlink.h.

/// netlink message types and flags.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
/// The generic netlink controller's fixed family id and commands.
pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
pub const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
pub const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
pub const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;
/// The NBD family.
pub const NBD_FAMILY: &str = "nbd";
pub const NBD_MCAST_GROUP: &str = "nbd_mc_group";
pub const NBD_GENL_VERSION: u8 = 1;
pub const NBD_CMD_CONNECT: u8 = 1;
pub const NBD_CMD_RECONFIGURE: u8 = 3;
pub const NBD_CMD_LINK_DEAD: u8 = 4;
pub const NBD_ATTR_INDEX: u16 = 1;
pub const NBD_ATTR_SIZE_BYTES: u16 = 2;
pub const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
pub const NBD_ATTR_TIMEOUT: u16 = 4;
pub const NBD_ATTR_SERVER_FLAGS: u16 = 5;
pub const NBD_ATTR_SOCKETS: u16 = 7;
pub const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
pub const NBD_SOCK_ITEM: u16 = 1;
pub const NBD_SOCK_FD: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// An attribute value to encode.
pub enum Attr<'a> {
    U32(u16, u32),
    U64(u16, u64),
    Str(u16, &'a str),
    Nested(u16, Vec<Attr<'a>>),
}

fn put_attr(out: &mut Vec<u8>, a: &Attr) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    let typ = match a {
        Attr::U32(t, v) => {
            out.extend_from_slice(&v.to_ne_bytes());
            *t
        }
        Attr::U64(t, v) => {
            out.extend_from_slice(&v.to_ne_bytes());
            *t
        }
        Attr::Str(t, s) => {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
            *t
        }
        Attr::Nested(t, inner) => {
            for i in inner {
                put_attr(out, i);
            }
            *t | NLA_F_NESTED
        }
    };
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    out[start + 2..start + 4].copy_from_slice(&typ.to_ne_bytes());
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A generic netlink request: nlmsghdr, genlmsghdr, attributes.
pub fn request(family: u16, cmd: u8, version: u8, seq: u32, attrs: &[Attr]) -> Vec<u8> {
    let mut out = vec![0u8; NLMSG_HDRLEN];
    out.extend_from_slice(&[cmd, version, 0, 0]);
    for a in attrs {
        put_attr(&mut out, a);
    }
    let len = out.len() as u32;
    out[0..4].copy_from_slice(&len.to_ne_bytes());
    out[4..6].copy_from_slice(&family.to_ne_bytes());
    out[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    out
}

/// One message from a receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// An ACK (error 0) or an error (negative errno) for request `seq`.
    Ack {
        seq: u32,
        errno: i32,
    },
    /// A generic netlink message: its command and attribute bytes.
    Genl {
        family: u16,
        seq: u32,
        cmd: u8,
        attrs: &'a [u8],
    },
    Done,
}

fn ne16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn ne32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Split a receive buffer into messages; malformed tails are dropped.
pub fn messages(buf: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(typ), Some(seq)) = (ne32(buf, at), ne16(buf, at + 4), ne32(buf, at + 8)) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        match typ {
            NLMSG_ERROR => {
                if let Some(e) = ne32(body, 0) {
                    out.push(Message::Ack { seq, errno: e as i32 });
                }
            }
            NLMSG_DONE => out.push(Message::Done),
            family if body.len() >= GENL_HDRLEN => out.push(Message::Genl { family, seq, cmd: body[0], attrs: &body[GENL_HDRLEN..] }),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    out
}

/// Iterate `(type, payload)` over an attribute block.
pub fn attrs(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(typ)) = (ne16(buf, at), ne16(buf, at + 2)) {
        let len = len as usize;
        if len < 4 || at + len > buf.len() {
            break;
        }
        out.push((typ & !NLA_F_NESTED, &buf[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    out
}

pub fn attr_u32(buf: &[u8], typ: u16) -> Option<u32> {
    attrs(buf).into_iter().find(|(t, _)| *t == typ).and_then(|(_, p)| ne32(p, 0))
}

/// From a CTRL_CMD_GETFAMILY reply: the family id and the id of the
/// multicast group named `group`.
pub fn family_reply(attr_block: &[u8], group: &str) -> (Option<u16>, Option<u32>) {
    let mut id = None;
    let mut mcast = None;
    for (t, p) in attrs(attr_block) {
        match t {
            CTRL_ATTR_FAMILY_ID => id = ne16(p, 0),
            CTRL_ATTR_MCAST_GROUPS => {
                for (_, g) in attrs(p) {
                    let inner = attrs(g);
                    let name = inner.iter().find(|(t, _)| *t == CTRL_ATTR_MCAST_GRP_NAME).map(|(_, v)| *v);
                    let gid = inner.iter().find(|(t, _)| *t == CTRL_ATTR_MCAST_GRP_ID).and_then(|(_, v)| ne32(v, 0));
                    if name.map(|n| n.strip_suffix(&[0]).unwrap_or(n)) == Some(group.as_bytes()) {
                        mcast = gid;
                    }
                }
            }
            _ => {}
        }
    }
    (id, mcast)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_request_layout_and_nested_sockets() {
        let m = request(
            0x1c,
            NBD_CMD_CONNECT,
            1,
            7,
            &[
                Attr::U32(NBD_ATTR_INDEX, 0),
                Attr::U64(NBD_ATTR_SIZE_BYTES, 1 << 30),
                Attr::Nested(NBD_ATTR_SOCKETS, vec![Attr::Nested(NBD_SOCK_ITEM, vec![Attr::U32(NBD_SOCK_FD, 5)])]),
            ],
        );
        assert_eq!(ne32(&m, 0).unwrap() as usize, m.len());
        assert_eq!(m.len() % 4, 0);
        assert_eq!(m[16], NBD_CMD_CONNECT);
        let a = attrs(&m[20..]);
        assert_eq!(a.len(), 3);
        assert_eq!(attr_u32(&m[20..], NBD_ATTR_INDEX), Some(0));
        let socks = attrs(a[2].1);
        assert_eq!(socks[0].0, NBD_SOCK_ITEM);
        assert_eq!(attr_u32(socks[0].1, NBD_SOCK_FD), Some(5));
    }

    #[test]
    fn test_parse_family_reply_with_groups() {
        // Build what the controller sends: family id, name, mcast groups.
        let mut block = Vec::new();
        put_attr(&mut block, &Attr::U32(CTRL_ATTR_FAMILY_ID, 0x22)); // u16 in a 4-byte slot, low bytes first
        put_attr(&mut block, &Attr::Str(CTRL_ATTR_FAMILY_NAME, "nbd"));
        put_attr(
            &mut block,
            &Attr::Nested(
                CTRL_ATTR_MCAST_GROUPS,
                vec![Attr::Nested(1, vec![Attr::Str(CTRL_ATTR_MCAST_GRP_NAME, NBD_MCAST_GROUP), Attr::U32(CTRL_ATTR_MCAST_GRP_ID, 9)])],
            ),
        );
        let (id, group) = family_reply(&block, NBD_MCAST_GROUP);
        assert_eq!(id, Some(0x22));
        assert_eq!(group, Some(9));
    }

    #[test]
    fn test_messages_split_acks_and_errors() {
        let mut buf = Vec::new();
        for (seq, err) in [(1u32, 0i32), (2, -22)] {
            let mut m = vec![0u8; 16];
            m.extend_from_slice(&err.to_ne_bytes());
            m.extend_from_slice(&[0u8; 16]);
            let len = m.len() as u32;
            m[0..4].copy_from_slice(&len.to_ne_bytes());
            m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m[8..12].copy_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&m);
        }
        assert_eq!(messages(&buf), vec![Message::Ack { seq: 1, errno: 0 }, Message::Ack { seq: 2, errno: -22 }]);
        assert!(messages(&buf[..10]).is_empty());
    }
}
