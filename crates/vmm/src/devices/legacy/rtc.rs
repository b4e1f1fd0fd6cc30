//! The CMOS RTC (MC146818) at ports 0x70 (index; bit 7 is the NMI mask) and 0x71 (data):
//! the wall clock a PC guest reads at boot, and 128 bytes of CMOS memory.
//!
//! The clock registers show the host's UTC time plus an offset: a guest that sets the clock
//! (SET bit in register B, writes, SET cleared) moves the offset, never the host clock. BCD or
//! binary and 12- or 24-hour modes follow register B, as the chip does. No periodic, alarm or
//! update interrupts (IRQ 8) are raised; UIP always reads 0, so a reader never waits.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// First port of the device (index); data follows at +1.
pub const BASE: u64 = 0x70;

const SECONDS: usize = 0x00;
const MINUTES: usize = 0x02;
const HOURS: usize = 0x04;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const CENTURY: usize = 0x32;
/// Register B: SET (updates stopped while the guest writes the clock).
const B_SET: u8 = 0x80;
/// Register B: data mode binary (else BCD).
const B_BINARY: u8 = 0x04;
/// Register B: 24-hour mode.
const B_24H: u8 = 0x02;
/// Register D: valid RAM and time.
const D_VRT: u8 = 0x80;

/// The RTC and its CMOS memory.
pub struct Rtc {
    index: usize,
    cmos: [u8; 128],
    /// Seconds added to the host's clock.
    offset: i64,
    /// The host clock, seconds since 1970 (a fixed one in tests).
    now: fn() -> i64,
}

impl Default for Rtc {
    fn default() -> Self {
        Rtc::with_clock(host_seconds)
    }
}

fn host_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Rtc {
    /// An RTC on the host's clock, in 24-hour BCD mode as firmware leaves it.
    pub fn new() -> Self {
        Rtc::default()
    }

    /// An RTC on a given clock (seconds since 1970, UTC).
    fn with_clock(now: fn() -> i64) -> Self {
        let mut cmos = [0u8; 128];
        cmos[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        cmos[REG_B] = B_24H;
        cmos[REG_D] = D_VRT;
        Rtc {
            index: 0,
            cmos,
            offset: 0,
            now,
        }
    }

    fn encode(&self, v: u8) -> u8 {
        if self.cmos[REG_B] & B_BINARY != 0 {
            v
        } else {
            (v / 10) << 4 | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.cmos[REG_B] & B_BINARY != 0 {
            v
        } else {
            (v >> 4) * 10 + (v & 0x0f)
        }
    }

    /// Writes the guest-visible time into the clock registers.
    fn latch(&mut self) {
        let t = (self.now)() + self.offset;
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let hour = (secs / 3600) as u8;
        let hours = if self.cmos[REG_B] & B_24H != 0 {
            self.encode(hour)
        } else {
            let h12 = if hour % 12 == 0 { 12 } else { hour % 12 };
            self.encode(h12) | if hour >= 12 { 0x80 } else { 0 }
        };
        self.cmos[SECONDS] = self.encode((secs % 60) as u8);
        self.cmos[MINUTES] = self.encode((secs / 60 % 60) as u8);
        self.cmos[HOURS] = hours;
        // 1970-01-01 was a Thursday; the register counts Sunday as 1.
        self.cmos[WEEKDAY] = self.encode(((days + 4).rem_euclid(7) + 1) as u8);
        self.cmos[DAY] = self.encode(d as u8);
        self.cmos[MONTH] = self.encode(m as u8);
        self.cmos[YEAR] = self.encode(y.rem_euclid(100) as u8);
        self.cmos[CENTURY] = self.encode(y.div_euclid(100) as u8);
    }

    /// The time the guest wrote into the clock registers, in seconds since 1970.
    fn written(&self) -> i64 {
        let raw_hour = self.cmos[HOURS];
        let hour = if self.cmos[REG_B] & B_24H != 0 {
            self.decode(raw_hour)
        } else {
            let h = self.decode(raw_hour & 0x7f) % 12;
            h + if raw_hour & 0x80 != 0 { 12 } else { 0 }
        };
        let year = i64::from(self.decode(self.cmos[CENTURY])) * 100
            + i64::from(self.decode(self.cmos[YEAR]));
        let days = days_from_civil(
            year,
            i64::from(self.decode(self.cmos[MONTH]).clamp(1, 12)),
            i64::from(self.decode(self.cmos[DAY]).clamp(1, 31)),
        );
        days * 86_400
            + i64::from(hour) * 3600
            + i64::from(self.decode(self.cmos[MINUTES])) * 60
            + i64::from(self.decode(self.cmos[SECONDS]))
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset != 1 || data.is_empty() {
            return;
        }
        let i = self.index;
        if i <= YEAR || i == CENTURY {
            if self.cmos[REG_B] & B_SET == 0 {
                self.latch();
            }
        } else if i == REG_C {
            // No interrupt flags are ever raised.
            self.cmos[REG_C] = 0;
        }
        data[0] = self.cmos[i];
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else {
            return;
        };
        match offset {
            // Bit 7 masks NMIs on real hardware; the index is the low seven bits.
            0 => self.index = usize::from(v & 0x7f),
            1 => match self.index {
                REG_A => self.cmos[REG_A] = v & 0x7f, // UIP is read-only
                REG_B => {
                    let was_set = self.cmos[REG_B] & B_SET != 0;
                    if v & B_SET != 0 && !was_set {
                        // Stop the clock where it is: the guest now writes the registers.
                        self.latch();
                    }
                    self.cmos[REG_B] = v;
                    if was_set && v & B_SET == 0 {
                        self.offset = self.written() - (self.now)();
                    }
                }
                REG_C | REG_D => {} // read-only
                i => self.cmos[i] = v,
            },
            _ => {}
        }
    }
}

/// Year, month (1-12) and day (1-31) of day `z` since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-25 23:59:58 UTC, a Wednesday.
    fn fixed() -> i64 {
        1_795_651_198
    }

    fn read(r: &mut Rtc, i: u8) -> u8 {
        r.write(0, &[i]);
        let mut b = [0u8];
        r.read(1, &mut b);
        b[0]
    }

    fn write(r: &mut Rtc, i: u8, v: u8) {
        r.write(0, &[i]);
        r.write(1, &[v]);
    }

    #[test]
    fn the_clock_reads_the_host_time_in_bcd_and_binary() {
        let mut r = Rtc::with_clock(fixed);
        let got: Vec<u8> = [0x32, 0x09, 0x08, 0x07, 0x06, 0x04, 0x02, 0x00]
            .iter()
            .map(|&i| read(&mut r, i))
            .collect();
        assert_eq!(got, [0x20, 0x26, 0x11, 0x25, 0x04, 0x23, 0x59, 0x58]);
        assert_eq!(read(&mut r, 0x0d), D_VRT);
        assert_eq!(read(&mut r, 0x0a) & 0x80, 0, "UIP never set");
        write(&mut r, 0x0b, B_24H | B_BINARY);
        assert_eq!(read(&mut r, 0x09), 26);
        assert_eq!(read(&mut r, 0x04), 23);
        // 12-hour mode: 11 PM.
        write(&mut r, 0x0b, B_BINARY);
        assert_eq!(read(&mut r, 0x04), 0x80 | 11);
    }

    #[test]
    fn a_guest_that_sets_the_clock_moves_only_its_own_offset() {
        let mut r = Rtc::with_clock(fixed);
        write(&mut r, 0x0b, B_SET | B_24H);
        for (i, v) in [(0x09, 0x30), (0x08, 0x01), (0x07, 0x02), (0x04, 0x03)] {
            write(&mut r, i, v);
        }
        write(&mut r, 0x0b, B_24H);
        assert_eq!(read(&mut r, 0x09), 0x30);
        assert_eq!(read(&mut r, 0x08), 0x01);
        assert_eq!(read(&mut r, 0x07), 0x02);
        assert_eq!(read(&mut r, 0x04), 0x03);
        assert_eq!(
            r.offset,
            days_from_civil(2030, 1, 2) * 86_400 + 3 * 3600 + 59 * 60 + 58 - fixed()
        );
    }

    #[test]
    fn cmos_memory_keeps_what_is_written_and_the_index_drops_the_nmi_bit() {
        let mut r = Rtc::new();
        write(&mut r, 0x80 | 0x40, 0x5a);
        assert_eq!(read(&mut r, 0x40), 0x5a);
        write(&mut r, 0x0d, 0);
        assert_eq!(read(&mut r, 0x0d), D_VRT, "register D is read-only");
        let mut b = [0xffu8];
        r.read(0, &mut b);
        assert_eq!(b[0], 0);
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1, 0, 59, 365, 11_016, 20_417, 47_482] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }
}
