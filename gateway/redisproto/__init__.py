"""Redis over RESP2: the lean pipelined client the rate limiter and the cache share."""
