"""The venue: everything MEXC-specific, decoded at the boundary into typed records.

`values` (the numbers it sends), `frames` (WebSocket requests and the frame decoder), `rest`
(the REST envelope, the contract filter, klines, tickers), `client` (the one paced REST client)
and `websocket` (the socket the connection actors open). The venue's names (symbol pattern,
interval names, safe venue text) are in `screener.core.names`, since config validates against
them. Raw venue dicts stop here.
"""
