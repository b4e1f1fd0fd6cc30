//! A small AML (ACPI Machine Language) encoder: the subset a DSDT with a PCI host bridge and a
//! sleep package needs (ACPI 6.5, chapter 20 "ACPI Machine Language Specification").
//!
//! Every builder returns the encoded bytes; containers take their children already encoded.

const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const NAME_OP: u8 = 0x08;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const STRING_PREFIX: u8 = 0x0d;
const QWORD_PREFIX: u8 = 0x0e;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const DUAL_NAME_PREFIX: u8 = 0x2e;
const MULTI_NAME_PREFIX: u8 = 0x2f;
const ROOT_CHAR: u8 = b'\\';
const EXT_OP_PREFIX: u8 = 0x5b;
const DEVICE_OP: u8 = 0x82;
const ONES_OP: u8 = 0xff;

/// Encodes a PkgLength for a body of `body` bytes; the length counts its own bytes.
pub fn pkg_length(body: usize) -> Vec<u8> {
    if body + 1 < 0x40 {
        return vec![(body + 1) as u8];
    }
    // Lead byte: bits 7-6 = count of following bytes, bits 3-0 = low nibble; then bytes.
    for extra in 1..=3usize {
        let total = body + 1 + extra;
        if total < 1 << (4 + 8 * extra) {
            let mut out = vec![((extra as u8) << 6) | (total & 0xf) as u8];
            out.extend((0..extra).map(|i| (total >> (4 + 8 * i)) as u8));
            return out;
        }
    }
    panic!("AML package of {body} bytes exceeds the 28-bit PkgLength");
}

/// Encodes a name path such as `_SB_.PCI0`, `\_S5` or `PCI0`: a leading `\` roots it; each
/// segment is padded with `_` to four characters.
pub fn name_string(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let rel = match path.strip_prefix('\\') {
        Some(rest) => {
            out.push(ROOT_CHAR);
            rest
        }
        None => path,
    };
    let segs: Vec<[u8; 4]> = rel
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| {
            assert!(
                s.len() <= 4
                    && s.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "bad AML name segment {s:?}"
            );
            let mut seg = [b'_'; 4];
            seg[..s.len()].copy_from_slice(s.as_bytes());
            seg
        })
        .collect();
    match segs.len() {
        0 => out.push(0), // NullName
        1 => {}
        2 => out.push(DUAL_NAME_PREFIX),
        n => {
            out.push(MULTI_NAME_PREFIX);
            out.push(n as u8);
        }
    }
    for s in segs {
        out.extend_from_slice(&s);
    }
    out
}

/// Encodes an integer in the shortest form (Zero, One, Ones, or a prefixed constant).
pub fn integer(v: u64) -> Vec<u8> {
    match v {
        0 => vec![ZERO_OP],
        1 => vec![ONE_OP],
        u64::MAX => vec![ONES_OP],
        v if v <= 0xff => vec![BYTE_PREFIX, v as u8],
        v if v <= 0xffff => {
            let mut o = vec![WORD_PREFIX];
            o.extend_from_slice(&(v as u16).to_le_bytes());
            o
        }
        v if v <= 0xffff_ffff => {
            let mut o = vec![DWORD_PREFIX];
            o.extend_from_slice(&(v as u32).to_le_bytes());
            o
        }
        v => {
            let mut o = vec![QWORD_PREFIX];
            o.extend_from_slice(&v.to_le_bytes());
            o
        }
    }
}

/// Encodes an ASCII string constant.
pub fn string(s: &str) -> Vec<u8> {
    assert!(s.is_ascii() && !s.contains('\0'), "bad AML string {s:?}");
    let mut o = vec![STRING_PREFIX];
    o.extend_from_slice(s.as_bytes());
    o.push(0);
    o
}

/// The 32-bit compressed EISA ID of `id` (e.g. `PNP0A08`): three letters of five bits each,
/// then four hex digits, stored as a little-endian DWORD of those bytes in order.
pub fn eisa_id_value(id: &str) -> u32 {
    let b = id.as_bytes();
    assert!(
        b.len() == 7
            && b[..3].iter().all(u8::is_ascii_uppercase)
            && b[3..].iter().all(u8::is_ascii_hexdigit),
        "bad EISA ID {id:?}"
    );
    let l = |c: u8| (c - 0x40) as u32;
    let h = |c: u8| (c as char).to_digit(16).unwrap_or(0);
    let b0 = (l(b[0]) << 2) | (l(b[1]) >> 3);
    let b1 = ((l(b[1]) & 7) << 5) | l(b[2]);
    let b2 = (h(b[3]) << 4) | h(b[4]);
    let b3 = (h(b[5]) << 4) | h(b[6]);
    b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
}

/// Encodes an EISA ID as the integer object `EisaId("...")` compiles to.
pub fn eisa_id(id: &str) -> Vec<u8> {
    integer(eisa_id_value(id) as u64)
}

/// `Name(path, object)`.
pub fn name(path: &str, object: &[u8]) -> Vec<u8> {
    let mut o = vec![NAME_OP];
    o.extend(name_string(path));
    o.extend_from_slice(object);
    o
}

fn with_pkg(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut o = prefix.to_vec();
    o.extend(pkg_length(body.len()));
    o.extend_from_slice(body);
    o
}

/// `Scope(path) { children }`.
pub fn scope(path: &str, children: &[Vec<u8>]) -> Vec<u8> {
    let mut body = name_string(path);
    body.extend(children.concat());
    with_pkg(&[SCOPE_OP], &body)
}

/// `Device(path) { children }`.
pub fn device(path: &str, children: &[Vec<u8>]) -> Vec<u8> {
    let mut body = name_string(path);
    body.extend(children.concat());
    with_pkg(&[EXT_OP_PREFIX, DEVICE_OP], &body)
}

/// `Package() { elements }` (at most 255 elements).
pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    assert!(
        elements.len() <= 255,
        "AML package of {} elements",
        elements.len()
    );
    let mut body = vec![elements.len() as u8];
    body.extend(elements.concat());
    with_pkg(&[PACKAGE_OP], &body)
}

/// `Buffer() { bytes }`.
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    let mut body = integer(bytes.len() as u64);
    body.extend_from_slice(bytes);
    with_pkg(&[BUFFER_OP], &body)
}

/// Resource descriptors for `ResourceTemplate()` (ACPI 6.5, 6.4 "Resource Data Types").
pub mod res {
    /// Address space descriptor resource types.
    #[derive(Debug, Clone, Copy)]
    #[repr(u8)]
    pub enum Space {
        /// Memory range.
        Memory = 0,
        /// I/O range.
        Io = 1,
        /// Bus number range.
        BusNumber = 2,
    }

    /// General flags of a producer with fixed minimum and maximum, positive decode.
    const PRODUCER_FIXED: u8 = 0b1100;
    /// Memory type-specific flags: read-write, non-cacheable.
    pub const MEM_RW_NONCACHEABLE: u8 = 0b0001;
    /// I/O type-specific flags: the range decodes ISA and non-ISA addresses.
    pub const IO_ENTIRE_RANGE: u8 = 0b11;

    /// `IO(Decode16, min, max, align, len)`: a small I/O port descriptor.
    pub fn io(min: u16, max: u16, align: u8, len: u8) -> Vec<u8> {
        let mut o = vec![0x47, 0x01];
        o.extend_from_slice(&min.to_le_bytes());
        o.extend_from_slice(&max.to_le_bytes());
        o.extend_from_slice(&[align, len]);
        o
    }

    fn large(tag: u8, space: Space, type_flags: u8, fields: &[u8]) -> Vec<u8> {
        let len = (3 + fields.len()) as u16;
        let mut o = vec![tag];
        o.extend_from_slice(&len.to_le_bytes());
        o.extend_from_slice(&[space as u8, PRODUCER_FIXED, type_flags]);
        o.extend_from_slice(fields);
        o
    }

    /// Word address space descriptor (`WordBusNumber`, `WordIO`): producer, fixed range
    /// `min..=max`, no translation.
    pub fn word(space: Space, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
        let len = max.wrapping_sub(min).wrapping_add(1);
        let f: Vec<u8> = [0u16, min, max, 0, len]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        large(0x88, space, type_flags, &f)
    }

    /// DWord address space descriptor (`DWordMemory`): producer, fixed range `min..=max`.
    pub fn dword(space: Space, type_flags: u8, min: u32, max: u32) -> Vec<u8> {
        let len = max.wrapping_sub(min).wrapping_add(1);
        let f: Vec<u8> = [0u32, min, max, 0, len]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        large(0x87, space, type_flags, &f)
    }

    /// QWord address space descriptor (`QWordMemory`): producer, fixed range `min..=max`.
    pub fn qword(space: Space, type_flags: u8, min: u64, max: u64) -> Vec<u8> {
        let len = max.wrapping_sub(min).wrapping_add(1);
        let f: Vec<u8> = [0u64, min, max, 0, len]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        // QWord descriptors carry no resource source: general flags, then five QWORDs.
        large(0x8a, space, type_flags, &f)
    }

    /// `ResourceTemplate() { descriptors }`: the descriptors and an end tag (checksum 0, which
    /// means "treat as valid").
    pub fn template(descriptors: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = descriptors.concat();
        bytes.extend_from_slice(&[0x79, 0x00]);
        super::buffer(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_uses_one_to_four_bytes() {
        assert_eq!(pkg_length(0), vec![1]);
        assert_eq!(pkg_length(62), vec![63]);
        // 63 + 2 = 65 = 0x41: lead 0x40 | 1, then 0x04.
        assert_eq!(pkg_length(63), vec![0x41, 0x04]);
        assert_eq!(pkg_length(0xffd), vec![0x4f, 0xff]);
        let l = pkg_length(0x1000);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0] >> 6, 2);
        let total = (l[0] & 0xf) as usize | (l[1] as usize) << 4 | (l[2] as usize) << 12;
        assert_eq!(total, 0x1000 + 3);
    }

    #[test]
    fn names_integers_and_eisa_ids_encode_like_the_spec_examples() {
        assert_eq!(name_string("_SB"), b"_SB_".to_vec());
        assert_eq!(name_string("\\_SB_.PCI0"), b"\\\x2e_SB_PCI0".to_vec());
        assert_eq!(name_string("\\A.B.C"), b"\\\x2f\x03A___B___C___".to_vec());
        assert_eq!(integer(0), vec![0]);
        assert_eq!(integer(1), vec![1]);
        assert_eq!(integer(5), vec![0x0a, 5]);
        assert_eq!(integer(0x1234), vec![0x0b, 0x34, 0x12]);
        assert_eq!(integer(0x1_0000), vec![0x0c, 0, 0, 1, 0]);
        assert_eq!(integer(1 << 32)[0], 0x0e);
        assert_eq!(eisa_id_value("PNP0A03"), 0x030a_d041);
        assert_eq!(eisa_id_value("PNP0A08"), 0x080a_d041);
        assert_eq!(string("ab"), vec![0x0d, b'a', b'b', 0]);
    }

    #[test]
    fn containers_wrap_their_children_with_lengths() {
        let p = package(&[integer(5), integer(0)]);
        assert_eq!(p, vec![0x12, 0x05, 0x02, 0x0a, 0x05, 0x00]);
        let d = device("PCI0", &[name("_UID", &integer(0))]);
        assert_eq!(
            d,
            vec![0x5b, 0x82, 0x0b, b'P', b'C', b'I', b'0', 0x08, b'_', b'U', b'I', b'D', 0x00]
        );
        let io = res::io(0xcf8, 0xcf8, 1, 8);
        assert_eq!(io, vec![0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]);
        let w = res::word(res::Space::BusNumber, 0, 0, 0xff);
        assert_eq!(w.len(), 16);
        assert_eq!(&w[..6], &[0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00]);
        assert_eq!(&w[14..16], &[0x00, 0x01]);
        assert_eq!(res::dword(res::Space::Memory, 1, 0, 0xfff).len(), 26);
        assert_eq!(res::qword(res::Space::Memory, 1, 0, 0xfff).len(), 46);
        let t = res::template(&[io]);
        assert_eq!(t[..4], [0x11, 0x0d, 0x0a, 0x0a]);
        assert_eq!(t[t.len() - 2..], [0x79, 0x00]);
    }
}
