"""The wire: every frame and message of the ZeroMQ protocol (see PROTOCOL.md), and the client.

- `frames`: protocol constants, operations, command bytes, array blocks, bounded receiving.
- `messages`: the typed requests and answers of the API (msgspec Structs), HTTP and ZeroMQ.
- `envelope`: client request / reply envelopes (version, correlation id, request id).
- `backend`: broker <-> worker jobs, results and control messages; published vectors.
- `client`: the shipped client (an I/O-free core under sync and asyncio shells).
"""
