//! The ACPI PM1a event and control blocks the FADT points at: sleep state S5 (SLP_TYP 5 with
//! SLP_EN) powers the VM off, and the power button is a fixed feature that raises the SCI.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::exit::ExitSignal;

/// Bytes the device spans: PM1a_EVT (status, enable) at +0, PM1a_CNT at +4.
pub const LEN: u64 = 6;
/// PM1 status/enable: power button.
pub const PWRBTN: u16 = 1 << 8;
/// PM1 control: SCI enabled (ACPI mode; the FADT has no SMI command port).
pub const SCI_EN: u16 = 1;
/// PM1 control: sleep enable.
pub const SLP_EN: u16 = 1 << 13;
/// The sleep type `_S5_` names.
pub const SLP_TYP_S5: u16 = 5;

/// The PM1a register block.
pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
    sci: EventFd,
    exit: ExitSignal,
}

impl AcpiPm {
    /// A block that raises `sci` and ends the VM through `exit` on S5.
    pub fn new(sci: EventFd, exit: ExitSignal) -> Self {
        AcpiPm {
            status: 0,
            enable: 0,
            control: SCI_EN,
            sci,
            exit,
        }
    }

    /// Presses the power button: sets PWRBTN_STS and raises the SCI if the guest enabled it.
    pub fn press_power_button(&mut self) {
        self.status |= PWRBTN;
        if self.enable & PWRBTN != 0 {
            let _ = self.sci.write(1);
        }
    }

    fn reg(&self, offset: u64) -> u16 {
        match offset {
            0 => self.status,
            2 => self.enable,
            4 => self.control,
            _ => 0,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.reg(offset & !1).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = *v.get(((offset & 1) as usize) + i).unwrap_or(&0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut v = [0u8; 2];
        let n = data.len().min(2);
        v[..n].copy_from_slice(&data[..n]);
        let v = u16::from_le_bytes(v);
        match offset {
            0 => self.status &= !v, // write 1 to clear
            2 => self.enable = v,
            4 => {
                self.control = (v & !SLP_EN) | SCI_EN;
                if v & SLP_EN != 0 && (v >> 10) & 7 == SLP_TYP_S5 {
                    self.exit.request(0, "guest powered off (ACPI S5)");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_the_power_button_raises_sci_when_enabled() {
        let exit = ExitSignal::new().unwrap();
        let sci = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut pm = AcpiPm::new(sci.try_clone().unwrap(), exit.clone());
        let mut b = [0u8; 2];
        pm.read(4, &mut b);
        assert_eq!(u16::from_le_bytes(b) & SCI_EN, SCI_EN);
        pm.press_power_button();
        assert!(
            sci.read().is_err(),
            "no SCI while the guest has not enabled the button"
        );
        pm.write(2, &PWRBTN.to_le_bytes());
        pm.press_power_button();
        assert_eq!(sci.read().unwrap(), 1);
        pm.read(0, &mut b);
        assert_eq!(u16::from_le_bytes(b), PWRBTN);
        pm.write(0, &PWRBTN.to_le_bytes());
        pm.read(0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0);
        pm.write(4, &((3 << 10) | SLP_EN).to_le_bytes());
        assert!(exit.status().is_none(), "S3 is not power-off");
        pm.write(4, &((SLP_TYP_S5 << 10) | SLP_EN).to_le_bytes());
        assert_eq!(exit.status().unwrap().code, 0);
    }
}
