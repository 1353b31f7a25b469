"""What a request must pass before it is served: bcrypt basic auth and the toolkit's rate limit."""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections.abc import Callable, Mapping

# bcrypt of a random string: an unknown user costs the same time as a wrong password (no user enumeration).
_DUMMY_HASH = b"$2b$10$6aIzKmStl.dk2YsIqxKcJeD5eFreoAp6F/XXk0Ys/qBaPmFLH6fZ."


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes. A bcrypt check costs tens of milliseconds, so
    results are cached by a digest of (user, hash, password); checks run one at a time."""

    MAX_CACHE = 1024

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self.users = dict(users)
        self._cache: dict[bytes, bool] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BasicAuth(users={sorted(self.users)!r})"

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def check(self, header: str | None) -> bool:
        if not self.users:
            return True
        if not header:
            return False
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user_b, sep, password = decoded.partition(b":")
        if not sep:
            return False
        user = user_b.decode("utf-8", "replace")
        hashed = self.users.get(user)
        known = hashed is not None
        hashed = hashed or _DUMMY_HASH
        key = hashlib.sha256(b"\0".join((user_b, hashed, password))).digest()
        ok = self._cache.get(key)
        if ok is None:
            import bcrypt

            with self._lock:
                try:
                    ok = bool(bcrypt.checkpw(password, hashed)) and known
                except ValueError:  # longer than 72 bytes, or a hash bcrypt refuses
                    ok = False
                if len(self._cache) >= self.MAX_CACHE:
                    self._cache.clear()
                self._cache[key] = ok
        return ok and known


class RateLimiter:
    """Token bucket: `burst` requests at once, then one per `interval` seconds (the toolkit's rate_limit)."""

    def __init__(self, interval: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) / self.interval)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


