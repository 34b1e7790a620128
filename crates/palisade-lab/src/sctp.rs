//! Just enough SCTP to probe reachability without kernel SCTP sockets
//! (this kernel has none): an INIT, answered by an INIT-ACK, over raw
//! sockets. Conntrack tracks the pair like a real association's start, so
//! policy sees exactly what a real SCTP client would send.

/// IP protocol number of SCTP.
pub const PROTO: i32 = 132;

const CHUNK_INIT: u8 = 1;
const CHUNK_INIT_ACK: u8 = 2;
const PARAM_STATE_COOKIE: u16 = 7;

/// CRC32c (Castagnoli), as SCTP checksums it (RFC 9260 appendix A).
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn finish(mut packet: Vec<u8>) -> Vec<u8> {
    let sum = crc32c(&packet);
    // The checksum travels in little-endian byte order (as Linux writes it).
    packet[8..12].copy_from_slice(&sum.to_le_bytes());
    packet
}

fn header(src: u16, dst: u16, vtag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&src.to_be_bytes());
    p.extend_from_slice(&dst.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

/// An INIT chunk with our initiate tag; verification tag 0 as required.
pub fn init(src_port: u16, dst_port: u16, tag: u32) -> Vec<u8> {
    let mut p = header(src_port, dst_port, 0);
    p.extend_from_slice(&[CHUNK_INIT, 0]);
    p.extend_from_slice(&20u16.to_be_bytes());
    p.extend_from_slice(&tag.to_be_bytes()); // initiate tag
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    finish(p)
}

/// The INIT-ACK answering an INIT (tagged with the peer's initiate tag).
pub fn init_ack(src_port: u16, dst_port: u16, peer_tag: u32, our_tag: u32) -> Vec<u8> {
    let mut p = header(src_port, dst_port, peer_tag);
    p.extend_from_slice(&[CHUNK_INIT_ACK, 0]);
    p.extend_from_slice(&28u16.to_be_bytes());
    p.extend_from_slice(&our_tag.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&our_tag.to_be_bytes());
    p.extend_from_slice(&PARAM_STATE_COOKIE.to_be_bytes());
    p.extend_from_slice(&8u16.to_be_bytes());
    p.extend_from_slice(&our_tag.to_be_bytes());
    finish(p)
}

/// What a received SCTP packet says, if it is an INIT or an INIT-ACK with a
/// valid checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    Init { src_port: u16, dst_port: u16, tag: u32 },
    InitAck { src_port: u16, dst_port: u16, vtag: u32 },
}

pub fn parse(p: &[u8]) -> Option<Packet> {
    if p.len() < 16 {
        return None;
    }
    let mut zeroed = p.to_vec();
    zeroed[8..12].fill(0);
    if crc32c(&zeroed).to_le_bytes() != p[8..12] {
        return None;
    }
    let src_port = u16::from_be_bytes([p[0], p[1]]);
    let dst_port = u16::from_be_bytes([p[2], p[3]]);
    let vtag = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    match p[12] {
        CHUNK_INIT if p.len() >= 20 => {
            Some(Packet::Init { src_port, dst_port, tag: u32::from_be_bytes([p[16], p[17], p[18], p[19]]) })
        }
        CHUNK_INIT_ACK => Some(Packet::InitAck { src_port, dst_port, vtag }),
        _ => None,
    }
}

/// Strips the IPv4 header raw IPv4 sockets deliver (IPv6 raw sockets do not).
pub fn strip_ipv4_header(p: &[u8]) -> Option<&[u8]> {
    let ihl = (*p.first()? & 0x0f) as usize * 4;
    p.get(ihl..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn init_and_ack_round_trip() {
        let i = init(40000, 80, 0xdead_beef);
        assert_eq!(parse(&i), Some(Packet::Init { src_port: 40000, dst_port: 80, tag: 0xdead_beef }));
        let a = init_ack(80, 40000, 0xdead_beef, 7);
        assert_eq!(parse(&a), Some(Packet::InitAck { src_port: 80, dst_port: 40000, vtag: 0xdead_beef }));
        let mut bad = a.clone();
        bad[20] ^= 1;
        assert_eq!(parse(&bad), None, "a corrupted packet fails its checksum");
    }
}
