"""Fakes of the hardware carbonwatch reads: `nvml_stub` (a stub of the NVML C library under the real pynvml),
`fake_nvml` (that stub as a drop-in pynvml for a whole exporter, started by `exporter.py`) and `powercap`
(faithful powercap sysfs trees for RAPL). Everything else in the tests is real."""
