"""The control plane of a running stack: a Unix socket every long-running command serves, and what the
admin verbs (``chimney netstat``, ``show``, ``set``, ``why``, ``history``, ``offload``, ``upload``) ask it.

``protocol`` is the wire format (newline-delimited JSON, versioned), ``server`` the socket, ``plane`` the
commands over one stack, ``views`` the rows they show, ``client`` finding a stack and asking it.
docs/admin.md lists every command and field.
"""
