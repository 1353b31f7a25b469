"""Errors shared by every part, by what failed: the user's input, the network, or a device.

The CLI turns each into one line on stderr and an exit code: ConfigError 2, NetworkError 4, DeviceError 3.
"""


class CarbonwatchError(Exception):
    """Base of the errors below; the message says what failed and what to do."""

    exit_code = 1


class ConfigError(CarbonwatchError, ValueError):
    """Bad configuration, flag, label or input. The message names what is wrong; the CLI exits 2."""

    exit_code = 2


class DeviceError(CarbonwatchError):
    """A device or its driver cannot work in this process (e.g. an NVML library that no longer matches the
    loaded driver); the exporter exits 3 so its supervisor restarts it."""

    exit_code = 3


class NetworkError(CarbonwatchError):
    """A server we depend on (Prometheus, a Pushgateway, an intensity API) could not be reached or answered
    something unusable. The message names the URL, never a credential; the CLI exits 4."""

    exit_code = 4
