"""``chimney run``: unmodified Python programs on the stack (docs/unchanged-apps.md).

``shim/`` is what loads inside the program (standard library only); ``broker`` answers its control requests
and ``relay`` joins each of its sockets to a stack connection, both on the runtime's loop.
"""
