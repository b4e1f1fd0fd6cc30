//! PC legacy devices: 16550 serial, i8042 (reset line), CMOS RTC, ACPI PM1a, the debug-exit
//! port.

pub mod acpi_pm;
pub mod debug_exit;
pub mod i8042;
pub mod rtc;
pub mod serial;
