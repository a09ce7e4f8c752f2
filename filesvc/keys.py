"""API keys and their scopes: who a presented key is, in constant time."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from filesvc.config import ADMIN, Settings, check_scopes


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key (by fingerprint, never the key itself) and its scopes."""

    key_id: str | None
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes


#: The caller when no keys are configured.
OPEN: Final = Principal(key_id=None, scopes=frozenset({ADMIN}))


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeyRing:
    """The configured keys as digests; :meth:`lookup` takes the same time for any input."""

    def __init__(self, api_keys: dict[str, list[str]]) -> None:
        for scopes in api_keys.values():
            check_scopes(scopes)
        self._entries = [(key_digest(key), frozenset(scopes)) for key, scopes in api_keys.items()]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(settings.api_keys)

    @property
    def is_open(self) -> bool:
        return not self._entries

    def lookup(self, presented: str) -> Principal | None:
        digest = key_digest(presented)
        found: Principal | None = None
        for stored, scopes in self._entries:
            # Every key is compared, whatever matched before: no early exit.
            if hmac.compare_digest(stored, digest) and found is None:
                found = Principal(key_id=stored.hex()[:12], scopes=scopes)
        return found
