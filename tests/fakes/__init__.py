"""Fakes of the hardware carbonwatch reads: `fake_nvml` (a pynvml-compatible GPU simulator) and
`powercap` (faithful powercap sysfs trees for RAPL). Everything else in the tests is real."""
