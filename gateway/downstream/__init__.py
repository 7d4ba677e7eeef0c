"""The client side of the gateway: HTTP/1.1 connections parsed with llhttp (httptools).

aiohttp's server objects (`BaseRequest`, `StreamResponse`, `CIMultiDict` headers, the payload
`StreamReader`) cost a small proxied request more CPU than the proxying itself
(docs/performance.md); the gateway keeps raw header bytes from parse to upstream and writes
response heads itself.
"""
