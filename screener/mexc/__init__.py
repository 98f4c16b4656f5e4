"""The venue: everything MEXC-specific, decoded at the boundary into typed records.

`names` (symbol pattern, interval names, safe venue text), `values` (the numbers it sends),
`frames` (WebSocket requests and the frame decoder), `rest` (the REST envelope, the contract
filter, klines, tickers), `client` (the one paced REST client) and `websocket` (the socket
the connection actors open). Raw venue dicts stop here.
"""
