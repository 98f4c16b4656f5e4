"""screener: MEXC perpetual-futures 1-minute candles -> rolling windows -> Redis and HTTP."""

__version__ = "0.1.0"
