"""The run registrations moved to carbonwatch.node.registration (they read /proc and the node's spool
directory); these names stay importable from here for the run client."""

from carbonwatch.node.registration import (
    HEARTBEAT,
    RUN_ID_RE,
    Registration,
    RegistrationReader,
    end,
    process_start_time,
    register,
    spool_dir,
    unregister,
    validate_run_id,
)

__all__ = ["HEARTBEAT", "RUN_ID_RE", "Registration", "RegistrationReader", "end", "process_start_time", "register",
           "spool_dir", "unregister", "validate_run_id"]
