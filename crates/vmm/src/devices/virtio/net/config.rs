//! `--net tap=NAME[,mac=52:54:00:xx:xx:xx]`: one virtio-net device on a TAP interface.

use crate::net::tap::IFNAME_MAX;

/// Configuration of one NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// TAP interface name.
    pub tap: String,
    /// Guest MAC address.
    pub mac: [u8; 6],
}

/// Parses `aa:bb:cc:dd:ee:ff`; refuses multicast addresses.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!(
            "mac '{s}' is not six hex bytes like 52:54:00:12:34:56"
        ));
    }
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(format!(
                "mac '{s}' is not six hex bytes like 52:54:00:12:34:56"
            ));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("mac '{s}': '{p}' is not hex"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("mac '{s}' is a multicast address"));
    }
    Ok(mac)
}

impl NetConfig {
    /// Parses the value of `--net`. Without `mac=`, a random locally administered address
    /// under QEMU's 52:54:00 prefix is chosen.
    pub fn parse(s: &str) -> Result<NetConfig, String> {
        let mut tap = None;
        let mut mac = None;
        for kv in s.split(',') {
            match kv.split_once('=') {
                Some(("tap", v)) => {
                    if v.is_empty() || v.len() > IFNAME_MAX || v.contains('/') {
                        return Err(format!("tap '{v}': 1 to {IFNAME_MAX} characters"));
                    }
                    tap = Some(v.to_string());
                }
                Some(("mac", v)) => mac = Some(parse_mac(v)?),
                _ => return Err(format!("unknown option '{kv}' (use tap=NAME,mac=MAC)")),
            }
        }
        let tap = tap.ok_or("tap=NAME is required")?;
        let mac = match mac {
            Some(m) => m,
            None => {
                let mut r = [0u8; 3];
                crate::devices::virtio::rng::fill_random(&mut r).map_err(|e| e.to_string())?;
                [0x52, 0x54, 0x00, r[0], r[1], r[2]]
            }
        };
        Ok(NetConfig { tap, mac })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tap_and_mac() {
        let c = NetConfig::parse("tap=tap0,mac=52:54:00:ab:cd:ef").unwrap();
        assert_eq!(c.tap, "tap0");
        assert_eq!(c.mac, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        let c = NetConfig::parse("tap=t1").unwrap();
        assert_eq!(&c.mac[..3], &[0x52, 0x54, 0]);
    }

    #[test]
    fn refuses_bad_options() {
        for bad in [
            "",
            "mac=52:54:00:00:00:01",
            "tap=",
            "tap=a/b",
            "tap=t,mac=52:54:00:00:00",
            "tap=t,mac=53:54:00:00:00:01",
            "tap=t,mac=52:54:00:00:00:zz",
            "tap=t,speed=10G",
        ] {
            assert!(NetConfig::parse(bad).is_err(), "{bad}");
        }
    }
}
