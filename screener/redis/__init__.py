"""Redis: the client and its pools (`client`), a batch encoded once and sent in one round
trip (`batch`), the publisher's own socket link (`socket`) and the writer thread
(`writer_thread`). `import redis` in these modules is redis-py (absolute imports).
"""
