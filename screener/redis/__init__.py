"""Redis: the control path through redis-py's public API (`client`: direct or the master the
Sentinels name), and the publisher's one way to write: a batch encoded once (`batch`), the
link that sends it in one round trip on the event loop (`connect` opens it, `link` writes and
reads the replies with hiredis), Redis's status from the writes (`status`) and the
publisher's pure core (`lanes`). `import redis` in these modules is redis-py (absolute
imports).
"""
