"""Sans-I/O protocol rules: no asyncio, no clock reads, no sockets or client libraries.
Every function takes the time it needs as an argument and returns decisions as values."""
