"""Credits: holds before routing, capture on completion, release on failure or expiry."""

from .base import Admission, Closure, CreditBackend, OpenJob
from .postgres import PostgresCredits
from .redis import RedisCredits
from .service import CreditService

__all__ = ["Admission", "Closure", "CreditBackend", "CreditService", "OpenJob", "PostgresCredits", "RedisCredits"]
