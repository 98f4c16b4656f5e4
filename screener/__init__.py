"""screener: MEXC perpetual-futures 1-minute candles -> rolling windows -> Redis and HTTP."""

from importlib import metadata

try:
    __version__ = metadata.version("screener")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
