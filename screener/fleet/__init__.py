"""The fleet: shard assignment and the global ranking merge, pure (`shards`), and the shard
lease and shard rankings kept in Redis (`lease`).
"""
